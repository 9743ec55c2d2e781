//! Miners: which pairs of a batch the ranking losses (`crate::losses`) use. Each returns the
//! pytorch-metric-learning pair form `(a1, p, a2, n)`: positive pairs (a1[i], p[i]) and
//! negative pairs (a2[i], n[i]), int64 index tensors on the embeddings' device. The
//! multi-similarity miner also has a form that works on a precomputed similarity matrix and
//! returns `PairMasks`, so a training step computes the matrix once for miner and loss.

pub mod basis_pairs;
pub mod multi_similarity;

pub use crate::losses::{PairMasks, Pairs};
pub use basis_pairs::{basis_pair_masks, basis_pairs, Side, ThresholdRule};
pub use multi_similarity::{multi_similarity_masks, multi_similarity_miner};

/// Positive and negative pairs: `(a1, p, a2, n)`.
pub type PairIndices = (tch::Tensor, tch::Tensor, tch::Tensor, tch::Tensor);
