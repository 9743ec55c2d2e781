//! Bindings of `crate::basis`. The state lives in Python (a torch.nn.Module's parameters and
//! buffers) and is passed to every call as the very tensors, so updates of the running
//! statistics are made in place and gradients reach the module's parameters.

use super::error::guard;
use crate::bail;
use crate::basis::{BasisConfig, BasisState, FeatureBasis, STATE_NAMES};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use pyo3_tch::PyTensor;

/// The state tensors, in `crate::basis::STATE_NAMES` order.
#[derive(FromPyObject)]
pub(crate) struct StateArg(
    PyTensor,
    Option<PyTensor>,
    PyTensor,
    PyTensor,
    PyTensor,
    PyTensor,
    PyTensor,
    PyTensor,
);

/// (momentum, sd_margin, sd_weight, regularizer, sd_statistics).
#[derive(FromPyObject)]
pub(crate) struct ConfigArg(f64, f64, f64, String, String);

impl ConfigArg {
    fn config(&self) -> crate::Result<BasisConfig> {
        let config = BasisConfig {
            momentum: self.0,
            sd_margin: self.1,
            sd_weight: self.2,
            regularizer: self.3.parse()?,
            sd_statistics: self.4.parse()?,
        };
        config.validate()?;
        Ok(config)
    }
}

/// A core basis over the Python module's tensors.
pub(crate) fn basis_of(state: StateArg, config: ConfigArg) -> crate::Result<FeatureBasis> {
    let StateArg(weight, pseudo_head, mu_pos, var_pos, mu_neg, var_neg, updates_pos, updates_neg) =
        state;
    FeatureBasis::from_parts(
        config.config()?,
        BasisState {
            weight: weight.0,
            pseudo_head: pseudo_head.map(|h| h.0),
            mu_pos: mu_pos.0,
            var_pos: var_pos.0,
            mu_neg: mu_neg.0,
            var_neg: var_neg.0,
            updates_pos: updates_pos.0,
            updates_neg: updates_neg.0,
        },
    )
}

#[pyfunction]
#[pyo3(signature = (num_basis, dim, num_pseudo_classes, config))]
fn basis_init<'py>(
    py: Python<'py>,
    num_basis: i64,
    dim: i64,
    num_pseudo_classes: Option<i64>,
    config: ConfigArg,
) -> PyResult<Bound<'py, PyDict>> {
    let config = config.config()?;
    let num_basis = super::count(num_basis, "num_basis")?;
    let dim = super::count(dim, "dim")?;
    let classes = num_pseudo_classes.map(|k| super::count(k, "num_pseudo_classes")).transpose()?;
    let basis =
        guard(move || FeatureBasis::new(num_basis, dim, classes, config, tch::Device::Cpu))?;
    let s = basis.state;
    let dict = PyDict::new(py);
    let tensors = [
        Some(s.weight),
        s.pseudo_head,
        Some(s.mu_pos),
        Some(s.var_pos),
        Some(s.mu_neg),
        Some(s.var_neg),
        Some(s.updates_pos),
        Some(s.updates_neg),
    ];
    for (name, tensor) in STATE_NAMES.iter().zip(tensors) {
        dict.set_item(name, tensor.map(PyTensor))?;
    }
    Ok(dict)
}

#[pyfunction]
fn basis_representation(
    py: Python<'_>,
    state: StateArg,
    config: ConfigArg,
    emb: PyTensor,
) -> PyResult<PyTensor> {
    let r =
        py.allow_threads(move || guard(move || basis_of(state, config)?.representation(&emb)))?;
    Ok(PyTensor(r))
}

#[pyfunction]
fn basis_similarity(
    py: Python<'_>,
    state: StateArg,
    config: ConfigArg,
    emb: PyTensor,
) -> PyResult<PyTensor> {
    let s = py.allow_threads(move || guard(move || basis_of(state, config)?.similarity(&emb)))?;
    Ok(PyTensor(s))
}

#[pyfunction]
#[pyo3(signature = (state, config, emb_l, labels_l, emb_u, pseudo_u, training))]
#[allow(clippy::too_many_arguments)]
fn basis_loss<'py>(
    py: Python<'py>,
    state: StateArg,
    config: ConfigArg,
    emb_l: Option<PyTensor>,
    labels_l: Option<PyTensor>,
    emb_u: Option<PyTensor>,
    pseudo_u: Option<PyTensor>,
    training: bool,
) -> PyResult<(PyTensor, Bound<'py, PyDict>)> {
    let loss = py.allow_threads(move || {
        guard(move || {
            let basis = basis_of(state, config)?;
            let labeled = match (&emb_l, &labels_l) {
                (Some(e), Some(l)) => Some((&e.0, &l.0)),
                (None, None) => None,
                (Some(_), None) => bail!(Value, "emb_l was given without labels_l"),
                (None, Some(_)) => bail!(Value, "labels_l was given without emb_l"),
            };
            let unlabeled = match (&emb_u, &pseudo_u) {
                (Some(e), Some(l)) => Some((&e.0, &l.0)),
                (None, None) => None,
                (Some(_), None) => bail!(Value, "emb_u was given without pseudo_u"),
                (None, Some(_)) => bail!(Value, "pseudo_u was given without emb_u"),
            };
            basis.loss(labeled, unlabeled, training)
        })
    })?;
    let parts = PyDict::new(py);
    for (name, value) in loss.parts {
        parts.set_item(name, PyTensor(value))?;
    }
    Ok((PyTensor(loss.total), parts))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(basis_init, m)?)?;
    m.add_function(wrap_pyfunction!(basis_representation, m)?)?;
    m.add_function(wrap_pyfunction!(basis_similarity, m)?)?;
    m.add_function(wrap_pyfunction!(basis_loss, m)?)?;
    Ok(())
}
