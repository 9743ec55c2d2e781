//! Bindings of `crate::mining`.

use super::basis::{basis_of, ConfigArg, StateArg};
use super::error::guard;
use crate::mining::{self, Side, ThresholdRule};
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

/// `t1=` / `t2=`: a number or a rule name, read by the core's one parser.
#[derive(FromPyObject)]
pub(crate) enum ThresholdArg {
    Value(f64),
    Name(String),
}

impl ThresholdArg {
    fn rule(self, name: &str) -> crate::Result<ThresholdRule> {
        match self {
            ThresholdArg::Value(v) => ThresholdRule::value_as(v, name),
            ThresholdArg::Name(text) => ThresholdRule::parse_as(&text, name),
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
    let (t1, t2) = (t1.rule("t1")?, t2.rule("t2")?);
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

/// The value of threshold `rule` on `side` ("t1" or "t2") given the running means, as the
/// miner and the student resolve it (None where its statistic is undefined).
#[pyfunction]
#[pyo3(signature = (rule, side, mu_pos=None, mu_neg=None))]
fn threshold_value(
    rule: ThresholdArg,
    side: &str,
    mu_pos: Option<f64>,
    mu_neg: Option<f64>,
) -> PyResult<Option<f64>> {
    let side = match side {
        "t1" => Side::T1,
        "t2" => Side::T2,
        other => {
            let message = format!("side must be \"t1\" or \"t2\", got {other:?}");
            return Err(crate::SladeError::Value(message).into());
        }
    };
    Ok(rule.rule(side.name())?.resolve(side, mu_pos, mu_neg))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(basis_pairs, m)?)?;
    m.add_function(wrap_pyfunction!(threshold_value, m)?)?;
    m.add_function(wrap_pyfunction!(multi_similarity_miner, m)?)?;
    Ok(())
}
