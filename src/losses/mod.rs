//! Ranking losses (SLADE's L_rank, DESIGN.md §2.2): contrastive, multi-similarity and, as a
//! baseline, triplet margin. Values, gradients, distances and reductions equal
//! pytorch-metric-learning 2.9.0's defaults. Every loss is built from tch operations on the
//! caller's tensor, so it joins the caller's autograd graph on any device.
//!
//! Each loss has a `*_from_distances` / `*_from_similarity` form taking the pairwise matrix,
//! so a training step computes it once for a miner and the losses.

pub mod contrastive;
pub mod distance;
pub mod multi_similarity;
pub mod pairs;
pub mod triplet;

pub use contrastive::{contrastive, contrastive_from_distances, ContrastiveParams};
pub use multi_similarity::{
    multi_similarity, multi_similarity_from_similarity, multi_similarity_with_miner,
    MultiSimilarityParams,
};
pub use pairs::{PairMasks, PairSource, PairWeights, Pairs, TripletSource, Triplets};
pub use triplet::{triplet_margin, triplet_margin_from_distances};

use crate::bail;
use crate::error::Result;
use crate::validate;
use tch::{Device, Tensor};

/// Checks the embeddings of a loss (2-D, floating, finite, non-empty); returns N.
pub(crate) fn check_embeddings(embeddings: &Tensor) -> Result<usize> {
    Ok(validate::embeddings(embeddings, "embeddings")?.0)
}

/// Checks `labels` against `embeddings`; returns them on the embeddings' device.
pub(crate) fn check_labels(labels: &Tensor, embeddings: &Tensor) -> Result<Tensor> {
    validate::label_tensor(labels, embeddings.size()[0] as usize, "labels", "embeddings")?;
    Ok(labels.f_to_device(embeddings.device())?)
}

/// A pair source after its checks; labels are on the embeddings' device.
pub(crate) enum CheckedPairs<'a> {
    Labels(Tensor),
    Pairs(&'a Pairs),
    Masks(&'a PairMasks),
}

/// Checks the inputs of a pair loss.
pub(crate) fn check_inputs<'a>(
    embeddings: &Tensor,
    source: PairSource<'a>,
) -> Result<CheckedPairs<'a>> {
    let batch = check_embeddings(embeddings)?;
    let device = embeddings.device();
    Ok(match source {
        PairSource::Labels(labels) => CheckedPairs::Labels(check_labels(labels, embeddings)?),
        PairSource::Pairs(pairs) => {
            check_index_batch("pairs", pairs.batch(), pairs.a1().device(), batch, device)?;
            CheckedPairs::Pairs(pairs)
        }
        PairSource::Masks(masks) => {
            masks.check(batch, device)?;
            CheckedPairs::Masks(masks)
        }
    })
}

/// Checks that index tensors made for a batch of `index_batch` samples on `index_device` fit
/// embeddings of `batch` rows on `device`.
pub(crate) fn check_index_batch(
    what: &str,
    index_batch: usize,
    index_device: Device,
    batch: usize,
    device: Device,
) -> Result<()> {
    if index_batch != batch {
        bail!(
            Shape,
            "the {what} refer to a batch of {index_batch} samples but embeddings has {batch} rows"
        );
    }
    if index_device != device {
        bail!(Device, "the {what} are on {index_device:?} but embeddings is on {device:?}");
    }
    Ok(())
}

/// Checks that a loss parameter is a finite number.
pub(crate) fn check_finite_param(value: f64, name: &str) -> Result<()> {
    if !value.is_finite() {
        bail!(Value, "{name} must be a finite number, got {value}");
    }
    Ok(())
}
