//! Bindings of `crate::basis`. The state lives in Python (a torch.nn.Module's parameters and
//! buffers) and is passed to every call as the very tensors, so updates of the running
//! statistics are made in place and gradients reach the module's parameters.

use super::error::guard;
use super::settings::parse_settings;
use crate::bail;
use crate::basis::{BasisConfig, BasisState, FeatureBasis, STATE_NAMES};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use pyo3_tch::PyTensor;

/// The state tensors by name: a dict with the keys `crate::basis::STATE_NAMES`.
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
pub(crate) struct StateArg {
    weight: PyTensor,
    pseudo_head: Option<PyTensor>,
    mu_pos: PyTensor,
    var_pos: PyTensor,
    mu_neg: PyTensor,
    var_neg: PyTensor,
    updates_pos: PyTensor,
    updates_neg: PyTensor,
}

/// The basis settings: a dict of `BasisConfig`'s fields, checked by the core.
pub(crate) struct ConfigArg(BasisConfig);

impl<'py> FromPyObject<'py> for ConfigArg {
    fn extract_bound(settings: &Bound<'py, PyAny>) -> PyResult<Self> {
        Ok(ConfigArg(parse_settings(settings, "")?))
    }
}

/// The Python module's tensors as a core basis state (the very tensors).
pub(crate) fn state_of(state: StateArg) -> BasisState {
    BasisState {
        weight: state.weight.0,
        pseudo_head: state.pseudo_head.map(|h| h.0),
        mu_pos: state.mu_pos.0,
        var_pos: state.var_pos.0,
        mu_neg: state.mu_neg.0,
        var_neg: state.var_neg.0,
        updates_pos: state.updates_pos.0,
        updates_neg: state.updates_neg.0,
    }
}

/// A core basis over the Python module's tensors.
pub(crate) fn basis_of(state: StateArg, config: ConfigArg) -> crate::Result<FeatureBasis> {
    FeatureBasis::from_parts(config.0, state_of(state))
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
    let config = config.0;
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
