//! slade: SLADE semi-supervised deep metric learning (Duan et al., CVPR 2021) on LibTorch.
//!
//! The core is plain Rust on `tch` and knows nothing of Python; `py` (behind the `python`
//! feature) is the PyO3 layer that converts arguments, releases the GIL and maps errors.

pub mod basis;
pub mod cluster;
pub mod error;
pub mod losses;
pub mod mining;
pub mod nn;
pub mod retrieval;
pub mod settings;
pub mod threads;
pub mod train;
pub mod validate;

#[cfg(feature = "python")]
mod py;

pub use error::{Result, SladeError};
