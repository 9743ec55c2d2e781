//! A small ConvNet for grayscale 28x28 / 105x105 images: four blocks of
//! conv3x3 (64 channels, padding 1) - BatchNorm - ReLU - maxpool 2x2, then global average
//! pooling to a 64-d feature. Names: `blocks.{i}.conv.weight`, `blocks.{i}.bn.*`.

use super::layers::{global_avg_pool, BatchNorm2d, Builder, Conv2d, ConvInit};
use super::pool::max_pool_2x2;
use crate::error::Result;
use tch::Tensor;

pub const CHANNELS: i64 = 64;
pub const BLOCKS: usize = 4;
/// The smallest input side: four 2x2 poolings must leave at least one pixel.
pub const MIN_SIDE: i64 = 16;

#[derive(Debug)]
struct Block {
    conv: Conv2d,
    bn: BatchNorm2d,
}

#[derive(Debug)]
pub struct ConvNet {
    blocks: Vec<Block>,
}

impl ConvNet {
    pub fn new(b: &mut Builder, in_channels: i64) -> Result<Self> {
        let mut blocks = Vec::with_capacity(BLOCKS);
        let mut channels = in_channels;
        for i in 0..BLOCKS {
            let prefix = format!("blocks.{i}");
            let conv = Conv2d::new(
                b,
                &format!("{prefix}.conv"),
                channels,
                CHANNELS,
                3,
                1,
                1,
                false,
                ConvInit::KaimingNormalFanOut,
            )?;
            let bn = BatchNorm2d::new(b, &format!("{prefix}.bn"), CHANNELS)?;
            blocks.push(Block { conv, bn });
            channels = CHANNELS;
        }
        Ok(ConvNet { blocks })
    }

    /// Each block pools before its ReLU: max-pooling and ReLU commute (ReLU is monotone),
    /// so values and gradients are those of conv-BN-ReLU-pool, with the ReLU on a quarter
    /// of the elements. Without autograd the pooling runs [`max_pool_2x2`]'s kernel.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut h = x.shallow_clone();
        for block in &self.blocks {
            h = block.bn.forward_t(&block.conv.forward(&h)?, train)?;
            h = max_pool_2x2(&h)?.f_relu_()?;
        }
        global_avg_pool(&h)
    }
}
