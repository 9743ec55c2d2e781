//! Retrieval evaluation: exact k-NN (`knn`) and the metrics built on it (`metrics`).

pub(crate) mod fused_tile;
pub mod knn;
pub mod metrics;
pub mod tile_gemm;
mod topk;

pub use knn::{knn, neighbours, Engine, Neighbours, Wanted};
pub use metrics::{retrieval_metrics, MetricOptions, Metrics};
pub use tile_gemm::TileGemm;
