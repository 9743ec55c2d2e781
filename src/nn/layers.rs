//! The layers the backbones are made of, with torch's parameter names and semantics:
//! `Conv2d` (`weight`, optional `bias`), `BatchNorm2d` (`weight`, `bias`, `running_mean`,
//! `running_var`, `num_batches_tracked`) and `Linear` (`weight`, `bias`).

use super::store::{randn, uniform, ParamStore};
use crate::error::Result;
use rand_chacha::ChaCha8Rng;
use std::cell::Cell;
use tch::{Kind, Tensor};

thread_local! {
    /// The kind this thread's convolutions compute in ([`computing_in`]); None: the kinds
    /// their inputs come in (float32, or float16 under CUDA autocast).
    static COMPUTE_KIND: Cell<Option<Kind>> = const { Cell::new(None) };
}

/// Runs `f` with the convolutions computing in `kind` on this thread (bfloat16 for
/// `precision = "bf16"`; None leaves their inputs' kinds alone): their inputs and weights are cast to it, so their outputs and the
/// activations after them (BatchNorm, pooling, ReLU) are in it, while the parameters, their
/// gradients and BatchNorm's statistics stay float32. This is what torch's CPU autocast does
/// for convolutions (tch exposes CUDA's autocast only); the embedding head stays float32
/// (see `Model::forward_t`).
pub fn computing_in<T>(kind: Option<Kind>, f: impl FnOnce() -> T) -> T {
    /// Puts the previous kind back, also when `f` unwinds.
    struct Restore(Option<Kind>);
    impl Drop for Restore {
        fn drop(&mut self) {
            COMPUTE_KIND.with(|k| k.set(self.0));
        }
    }
    let _restore = Restore(COMPUTE_KIND.with(|k| k.replace(kind)));
    f()
}

/// `t` in this thread's compute kind: itself (no copy) when none is set or it already is.
fn in_compute_kind(t: &Tensor) -> Result<Tensor> {
    Ok(match COMPUTE_KIND.with(Cell::get) {
        Some(kind) if t.kind() != kind => t.f_to_kind(kind)?,
        _ => t.shallow_clone(),
    })
}

/// Registers a module's variables under a dotted prefix, drawing initial values from a
/// seeded generator.
pub struct Builder<'a> {
    pub store: &'a mut ParamStore,
    pub rng: &'a mut ChaCha8Rng,
    /// Optimizer group of the parameters registered through this builder.
    pub group: String,
}

impl Builder<'_> {
    pub fn name(prefix: &str, leaf: &str) -> String {
        if prefix.is_empty() {
            leaf.to_string()
        } else {
            format!("{prefix}.{leaf}")
        }
    }

    pub fn parameter(&mut self, prefix: &str, leaf: &str, init: Tensor) -> Result<Tensor> {
        let group = self.group.clone();
        self.store.parameter(&Self::name(prefix, leaf), init, &group)
    }

    pub fn buffer(&mut self, prefix: &str, leaf: &str, init: Tensor) -> Result<Tensor> {
        let group = self.group.clone();
        self.store.buffer(&Self::name(prefix, leaf), init, &group)
    }
}

/// How a convolution's weight is drawn.
#[derive(Clone, Copy, Debug)]
pub enum ConvInit {
    /// torchvision's ResNet: kaiming_normal_(mode="fan_out", nonlinearity="relu").
    KaimingNormalFanOut,
    /// torch's default for nn.Conv2d: kaiming_uniform_(a=sqrt(5)), i.e. U(±1/sqrt(fan_in)).
    TorchDefault,
}

/// A 2-D convolution, square kernel, no dilation, one group.
#[derive(Debug)]
pub struct Conv2d {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    stride: i64,
    padding: i64,
}

impl Conv2d {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        b: &mut Builder,
        prefix: &str,
        in_channels: i64,
        out_channels: i64,
        kernel: i64,
        stride: i64,
        padding: i64,
        bias: bool,
        init: ConvInit,
    ) -> Result<Self> {
        let shape = [out_channels, in_channels, kernel, kernel];
        let fan_in = (in_channels * kernel * kernel) as f64;
        let w = match init {
            ConvInit::KaimingNormalFanOut => {
                let fan_out = (out_channels * kernel * kernel) as f64;
                randn(b.rng, &shape, (2.0 / fan_out).sqrt())?
            }
            ConvInit::TorchDefault => uniform(b.rng, &shape, 1.0 / fan_in.sqrt())?,
        };
        let weight = b.parameter(prefix, "weight", w)?;
        let bias = if bias {
            let init = uniform(b.rng, &[out_channels], 1.0 / fan_in.sqrt())?;
            Some(b.parameter(prefix, "bias", init)?)
        } else {
            None
        };
        Ok(Conv2d { weight, bias, stride, padding })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let bias = self.bias.as_ref().map(in_compute_kind).transpose()?;
        Ok(in_compute_kind(x)?.f_conv2d(
            &in_compute_kind(&self.weight)?,
            bias.as_ref(),
            [self.stride, self.stride],
            [self.padding, self.padding],
            [1, 1],
            1,
        )?)
    }
}

/// Batch normalisation over (N, H, W) per channel, momentum 0.1, eps 1e-5, as nn.BatchNorm2d.
#[derive(Debug)]
pub struct BatchNorm2d {
    pub weight: Tensor,
    pub bias: Tensor,
    pub running_mean: Tensor,
    pub running_var: Tensor,
    pub num_batches_tracked: Tensor,
}

impl BatchNorm2d {
    pub const MOMENTUM: f64 = 0.1;
    pub const EPS: f64 = 1e-5;

    pub fn new(b: &mut Builder, prefix: &str, channels: i64) -> Result<Self> {
        let opts = (Kind::Float, tch::Device::Cpu);
        Ok(BatchNorm2d {
            weight: b.parameter(prefix, "weight", Tensor::f_ones([channels], opts)?)?,
            bias: b.parameter(prefix, "bias", Tensor::f_zeros([channels], opts)?)?,
            running_mean: b.buffer(prefix, "running_mean", Tensor::f_zeros([channels], opts)?)?,
            running_var: b.buffer(prefix, "running_var", Tensor::f_ones([channels], opts)?)?,
            num_batches_tracked: b.buffer(
                prefix,
                "num_batches_tracked",
                Tensor::f_zeros([], (Kind::Int64, tch::Device::Cpu))?,
            )?,
        })
    }

    /// Training mode normalises with the batch statistics and updates the running ones in
    /// place; evaluation mode normalises with the running statistics.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if train {
            let _ = tch::no_grad(|| self.num_batches_tracked.shallow_clone().f_add_scalar_(1))?;
        }
        Ok(Tensor::f_batch_norm(
            x,
            Some(&self.weight),
            Some(&self.bias),
            Some(&self.running_mean),
            Some(&self.running_var),
            train,
            Self::MOMENTUM,
            Self::EPS,
            true,
        )?)
    }
}

/// A fully connected layer y = x W^T + b, with torch's default initialisation.
#[derive(Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Tensor,
}

impl Linear {
    pub fn new(b: &mut Builder, prefix: &str, in_features: i64, out_features: i64) -> Result<Self> {
        let bound = 1.0 / (in_features as f64).sqrt();
        let weight_init = uniform(b.rng, &[out_features, in_features], bound)?;
        let weight = b.parameter(prefix, "weight", weight_init)?;
        let bias_init = uniform(b.rng, &[out_features], bound)?;
        let bias = b.parameter(prefix, "bias", bias_init)?;
        Ok(Linear { weight, bias })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.f_linear(&self.weight, Some(&self.bias))?)
    }
}

/// Row-wise L2 normalisation x / max(||x||, 1e-12), as torch.nn.functional.normalize.
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x.f_norm_scalaropt_dim(2, [1i64].as_slice(), true)?.f_clamp_min(1e-12)?;
    Ok(x.f_div(&norm.f_expand_as(x)?)?)
}

/// Adaptive average pooling to 1x1 followed by flattening: (N, C, H, W) -> (N, C).
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    Ok(x.f_adaptive_avg_pool2d([1, 1])?.f_flatten(1, -1)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn convolutions_compute_in_the_kind_asked_for_and_it_is_put_back() {
        let mut store = ParamStore::new(tch::Device::Cpu);
        let mut rng = rand::SeedableRng::seed_from_u64(0);
        let mut b = Builder { store: &mut store, rng: &mut rng, group: "backbone".into() };
        let conv =
            Conv2d::new(&mut b, "conv", 2, 3, 3, 1, 1, true, ConvInit::TorchDefault).unwrap();
        let linear = Linear::new(&mut b, "fc", 4, 5).unwrap();
        let x = Tensor::randn([2, 2, 4, 4], (Kind::Float, tch::Device::Cpu));
        let v = Tensor::randn([2, 4], (Kind::Float, tch::Device::Cpu));
        let (half_conv, linear_out) = computing_in(Some(Kind::BFloat16), || {
            (conv.forward(&x).unwrap(), linear.forward(&v).unwrap())
        });
        assert_eq!((half_conv.kind(), linear_out.kind()), (Kind::BFloat16, Kind::Float));
        assert_eq!(conv.weight.kind(), Kind::Float);
        let full = conv.forward(&x).unwrap();
        assert_eq!(full.kind(), Kind::Float);
        let gap = (half_conv.to_kind(Kind::Float) - &full).abs().max().double_value(&[]);
        assert!(gap > 0.0 && gap < 0.05, "{gap}");
        let unwound =
            std::panic::catch_unwind(|| computing_in(Some(Kind::BFloat16), || panic!("inside")));
        assert!(unwound.is_err());
        assert_eq!(conv.forward(&x).unwrap().kind(), Kind::Float);
    }
}
