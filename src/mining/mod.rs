//! Miners: which pairs of a batch the ranking losses use. Each returns the
//! pytorch-metric-learning pair form `(a1, p, a2, n)`: positive pairs (a1[i], p[i]) and
//! negative pairs (a2[i], n[i]), int64 index tensors on the embeddings' device.

pub mod basis_pairs;

pub use basis_pairs::{basis_pairs, Threshold};

/// Positive and negative pairs: `(a1, p, a2, n)`.
pub type PairIndices = (tch::Tensor, tch::Tensor, tch::Tensor, tch::Tensor);
