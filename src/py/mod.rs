//! The PyO3 layer: argument conversion, GIL release and error mapping only. Every entry point
//! releases the GIL around the core call and runs it under `guard`.

mod basis;
mod cluster;
mod error;
mod losses;
mod mining;
mod nn;
mod objectives;
mod retrieval;
mod settings;
mod train;

use crate::bail;
use pyo3::prelude::*;

/// A non-negative integer argument as usize, or a clear error naming it.
pub(crate) fn count(value: i64, name: &str) -> crate::Result<usize> {
    if value < 0 {
        bail!(Value, "{name} must be a non-negative integer, got {value}");
    }
    Ok(value as usize)
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    basis::register(m)?;
    cluster::register(m)?;
    mining::register(m)?;
    retrieval::register(m)?;
    nn::register(m)?;
    objectives::register(m)?;
    train::register(m)?;
    losses::register(m)?;
    settings::register(m)?;
    Ok(())
}
