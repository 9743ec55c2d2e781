//! Bindings of `crate::mining`.

use super::basis::{basis_of, ConfigArg, StateArg};
use super::error::guard;
use crate::bail;
use crate::mining::{self, Threshold};
use pyo3::prelude::*;
use pyo3_tch::PyTensor;

/// A miner's pairs as PML's tuple `(a1, p, a2, n)`.
type PairTuple = (PyTensor, PyTensor, PyTensor, PyTensor);

#[pyfunction]
#[pyo3(signature = (embeddings, labels, *, epsilon=0.1))]
fn multi_similarity_miner(
    py: Python<'_>,
    embeddings: PyTensor,
    labels: PyTensor,
    epsilon: f64,
) -> PyResult<PairTuple> {
    let pairs = py.allow_threads(move || {
        guard(move || mining::multi_similarity_miner(&embeddings, &labels, epsilon))
    })?;
    let (a1, p, a2, n) = pairs.into_tuple();
    Ok((PyTensor(a1), PyTensor(p), PyTensor(a2), PyTensor(n)))
}

/// `t1=` / `t2=`: "auto" or a number.
#[derive(FromPyObject)]
enum ThresholdArg {
    Name(String),
    Value(f64),
}

impl ThresholdArg {
    fn threshold(self, name: &str) -> crate::Result<Threshold> {
        match self {
            ThresholdArg::Value(v) => Ok(Threshold::Fixed(v)),
            ThresholdArg::Name(s) if s == "auto" => Ok(Threshold::Auto),
            ThresholdArg::Name(s) => {
                bail!(Config, "{name} must be \"auto\" or a number, got {s:?}")
            }
        }
    }
}

#[pyfunction]
#[pyo3(signature = (state, config, emb_u, pseudo_u, t1, t2, require_pseudo_agreement))]
#[allow(clippy::too_many_arguments)]
fn basis_pairs(
    py: Python<'_>,
    state: StateArg,
    config: ConfigArg,
    emb_u: PyTensor,
    pseudo_u: Option<PyTensor>,
    t1: ThresholdArg,
    t2: ThresholdArg,
    require_pseudo_agreement: bool,
) -> PyResult<PairTuple> {
    let (t1, t2) = (t1.threshold("t1")?, t2.threshold("t2")?);
    let (a1, p, a2, n) = py.allow_threads(move || {
        guard(move || {
            let basis = basis_of(state, config)?;
            mining::basis_pairs(
                &basis,
                &emb_u,
                pseudo_u.as_deref(),
                t1,
                t2,
                require_pseudo_agreement,
            )
        })
    })?;
    Ok((PyTensor(a1), PyTensor(p), PyTensor(a2), PyTensor(n)))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(basis_pairs, m)?)?;
    m.add_function(wrap_pyfunction!(multi_similarity_miner, m)?)?;
    Ok(())
}
