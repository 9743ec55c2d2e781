//! ResNet-18 and ResNet-50 (He et al. 2016; torchvision's v1.5 layout, stride on the 3x3
//! convolution of a bottleneck) with torchvision's parameter and buffer names, without the
//! classifier `fc`: the forward pass ends with global average pooling.

use super::layers::{global_avg_pool, BatchNorm2d, Builder, Conv2d, ConvInit};
use super::pool::max_pool;
use crate::error::Result;
use tch::Tensor;

/// Residual block type and depth per stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Depth {
    R18,
    R50,
}

impl Depth {
    fn layers(self) -> [usize; 4] {
        match self {
            Depth::R18 => [2, 2, 2, 2],
            Depth::R50 => [3, 4, 6, 3],
        }
    }

    fn expansion(self) -> i64 {
        match self {
            Depth::R18 => 1,
            Depth::R50 => 4,
        }
    }

    /// Width of the pooled feature.
    pub fn feature_dim(self) -> i64 {
        512 * self.expansion()
    }
}

fn conv(b: &mut Builder, prefix: &str, cin: i64, cout: i64, k: i64, s: i64) -> Result<Conv2d> {
    Conv2d::new(b, prefix, cin, cout, k, s, k / 2, false, ConvInit::KaimingNormalFanOut)
}

/// conv1x1 (stride s) + BatchNorm on the shortcut: `downsample.0`, `downsample.1`.
#[derive(Debug)]
struct Downsample {
    conv: Conv2d,
    bn: BatchNorm2d,
}

/// BasicBlock (two 3x3 convolutions) or Bottleneck (1x1, 3x3, 1x1 with expansion 4).
#[derive(Debug)]
struct Block {
    convs: Vec<(Conv2d, BatchNorm2d)>,
    downsample: Option<Downsample>,
}

impl Block {
    fn new(
        b: &mut Builder,
        prefix: &str,
        depth: Depth,
        inplanes: i64,
        planes: i64,
        stride: i64,
    ) -> Result<Self> {
        let out = planes * depth.expansion();
        // (input channels, output channels, kernel, stride) of conv1, conv2 [, conv3].
        let shapes: Vec<(i64, i64, i64, i64)> = match depth {
            Depth::R18 => vec![(inplanes, planes, 3, stride), (planes, planes, 3, 1)],
            Depth::R50 => {
                vec![(inplanes, planes, 1, 1), (planes, planes, 3, stride), (planes, out, 1, 1)]
            }
        };
        let mut convs = Vec::with_capacity(shapes.len());
        for (i, (cin, cout, k, s)) in shapes.into_iter().enumerate() {
            let c = conv(b, &format!("{prefix}.conv{}", i + 1), cin, cout, k, s)?;
            let bn = BatchNorm2d::new(b, &format!("{prefix}.bn{}", i + 1), cout)?;
            convs.push((c, bn));
        }
        let downsample = if stride != 1 || inplanes != out {
            Some(Downsample {
                conv: conv(b, &format!("{prefix}.downsample.0"), inplanes, out, 1, stride)?,
                bn: BatchNorm2d::new(b, &format!("{prefix}.downsample.1"), out)?,
            })
        } else {
            None
        };
        Ok(Block { convs, downsample })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut h = x.shallow_clone();
        let last = self.convs.len() - 1;
        for (i, (conv, bn)) in self.convs.iter().enumerate() {
            h = bn.forward_t(&conv.forward(&h)?, train)?;
            if i != last {
                h = h.f_relu_()?;
            }
        }
        let identity = match &self.downsample {
            Some(d) => d.bn.forward_t(&d.conv.forward(x)?, train)?,
            None => x.shallow_clone(),
        };
        // In place, as torchvision: out += identity; relu(out).
        let _ = h.f_add_(&identity)?;
        Ok(h.f_relu_()?)
    }
}

#[derive(Debug)]
pub struct ResNet {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    layers: Vec<Vec<Block>>,
}

impl ResNet {
    pub fn new(b: &mut Builder, depth: Depth, in_channels: i64) -> Result<Self> {
        let conv1 = conv(b, "conv1", in_channels, 64, 7, 2)?;
        let bn1 = BatchNorm2d::new(b, "bn1", 64)?;
        let mut inplanes = 64;
        let mut layers = Vec::with_capacity(4);
        for (stage, &blocks) in depth.layers().iter().enumerate() {
            let planes = 64 << stage;
            let mut layer = Vec::with_capacity(blocks);
            for i in 0..blocks {
                let stride = if stage > 0 && i == 0 { 2 } else { 1 };
                let prefix = format!("layer{}.{i}", stage + 1);
                layer.push(Block::new(b, &prefix, depth, inplanes, planes, stride)?);
                inplanes = planes * depth.expansion();
            }
            layers.push(layer);
        }
        Ok(ResNet { conv1, bn1, layers })
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        // Pooling before the ReLU: they commute (ReLU is monotone), so values and gradients
        // are torchvision's relu-then-maxpool ones, with the ReLU on a quarter of the elements.
        let h = self.bn1.forward_t(&self.conv1.forward(x)?, train)?;
        let mut h = max_pool(&h, 3, 2, 1)?.f_relu_()?;
        for layer in &self.layers {
            for block in layer {
                h = block.forward_t(&h, train)?;
            }
        }
        global_avg_pool(&h)
    }
}
