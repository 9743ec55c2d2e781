//! Bindings of the training objectives on given embeddings (`slade.StudentLoss`,
//! `slade.TeacherLoss`, `slade.SwavLoss`): the code of the trainers' steps, on the
//! embeddings of any model. The embeddings and the objective's state cross as the very
//! tensors, so the loss is part of the caller's autograd graph and the running statistics
//! are updated in the module's buffers.

use super::basis::{state_of, StateArg};
use super::error::guard;
use super::settings::parse_settings;
use crate::train::ranking::RankingConfig;
use crate::train::student::{StudentEmbeddings, StudentObjective, StudentObjectiveConfig};
use crate::train::swav::{swav_loss_on, SwavConfig};
use crate::train::teacher::Teacher;
use crate::train::Metrics;
use pyo3::prelude::*;
use pyo3_tch::PyTensor;

/// The student objective (`crate::train::student::StudentObjective::loss`) on the
/// embeddings, over the basis state `basis` (None for "pseudo_only").
#[pyfunction]
#[pyo3(signature = (settings, basis, emb_labeled, labels, emb_unlabeled, pseudo_labels, true_labels, training, warming_up))]
#[allow(clippy::too_many_arguments)]
fn student_objective(
    py: Python<'_>,
    settings: &Bound<'_, PyAny>,
    basis: Option<StateArg>,
    emb_labeled: PyTensor,
    labels: PyTensor,
    emb_unlabeled: PyTensor,
    pseudo_labels: PyTensor,
    true_labels: Option<PyTensor>,
    training: bool,
    warming_up: bool,
) -> PyResult<(PyTensor, Metrics)> {
    let config: StudentObjectiveConfig = parse_settings(settings, "")?;
    let (loss, metrics) = py.allow_threads(move || {
        guard(move || {
            let objective = StudentObjective::from_parts(config, basis.map(state_of))?;
            let embeddings = StudentEmbeddings {
                labeled: &emb_labeled,
                labels: &labels,
                unlabeled: &emb_unlabeled,
                pseudo_labels: &pseudo_labels,
                true_labels: true_labels.as_deref(),
            };
            objective.loss(&embeddings, training, warming_up)
        })
    })?;
    Ok((PyTensor(loss), metrics))
}

/// The teacher's ranking objective (`crate::train::teacher::Teacher::loss_on`).
#[pyfunction]
fn teacher_objective(
    py: Python<'_>,
    settings: &Bound<'_, PyAny>,
    embeddings: PyTensor,
    labels: PyTensor,
) -> PyResult<(PyTensor, Metrics)> {
    let config: RankingConfig = parse_settings(settings, "")?;
    let (loss, metrics) = py.allow_threads(move || {
        guard(move || Teacher::new(config)?.loss_on(&embeddings, &labels))
    })?;
    Ok((PyTensor(loss), metrics))
}

/// The SwAV objective (`crate::train::swav::swav_loss_on`) on the crops' embeddings.
#[pyfunction]
fn swav_objective(
    py: Python<'_>,
    settings: &Bound<'_, PyAny>,
    prototypes: PyTensor,
    embeddings: Vec<PyTensor>,
    frozen: bool,
) -> PyResult<PyTensor> {
    let config: SwavConfig = parse_settings(settings, "")?;
    let loss = py.allow_threads(move || {
        guard(move || {
            let embeddings: Vec<_> = embeddings.into_iter().map(|t| t.0).collect();
            swav_loss_on(&config, &prototypes, &embeddings, frozen)
        })
    })?;
    Ok(PyTensor(loss))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(student_objective, m)?)?;
    m.add_function(wrap_pyfunction!(teacher_objective, m)?)?;
    m.add_function(wrap_pyfunction!(swav_objective, m)?)?;
    Ok(())
}
