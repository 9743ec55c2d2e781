//! Bindings of `crate::losses`. The embeddings cross as the caller's very tensor, so the
//! returned loss is part of the caller's autograd graph.

use super::error::guard;
use crate::losses::{
    self, ContrastiveParams, MultiSimilarityParams, PairSource, Pairs, TripletSource, Triplets,
};
use crate::validate;
use pyo3::prelude::*;
use pyo3_tch::PyTensor;
use tch::Tensor;

/// The batch size of `embeddings` and a miner's index tuple as plain tensors.
fn index_tuple(embeddings: &Tensor, tuple: &[PyTensor]) -> crate::Result<(usize, Vec<Tensor>)> {
    let (batch, _) = validate::matrix(embeddings, "embeddings")?;
    Ok((batch, tuple.iter().map(|t| t.0.shallow_clone()).collect()))
}

/// The pair source of a pair loss: explicit pairs when given, else the labels.
fn pair_loss(
    embeddings: &Tensor,
    labels: Option<&Tensor>,
    pairs: Option<&[PyTensor]>,
    loss: impl FnOnce(PairSource<'_>) -> crate::Result<Tensor>,
) -> crate::Result<Tensor> {
    match (pairs, labels) {
        (Some(pairs), labels) => {
            let (batch, tensors) = index_tuple(embeddings, pairs)?;
            if let Some(labels) = labels {
                validate::label_tensor(labels, batch, "labels", "embeddings")?;
            }
            let pairs = Pairs::from_tuple(&tensors, batch, embeddings.device(), "pairs")?;
            loss(PairSource::Pairs(&pairs))
        }
        (None, Some(labels)) => loss(PairSource::Labels(labels)),
        (None, None) => crate::bail!(Value, "give labels, or pairs from a miner (or both)"),
    }
}

#[pyfunction]
#[pyo3(signature = (embeddings, labels=None, *, pos_margin=0.0, neg_margin=1.0, pairs=None))]
fn contrastive_loss(
    py: Python<'_>,
    embeddings: PyTensor,
    labels: Option<PyTensor>,
    pos_margin: f64,
    neg_margin: f64,
    pairs: Option<Vec<PyTensor>>,
) -> PyResult<PyTensor> {
    let params = ContrastiveParams { pos_margin, neg_margin };
    let loss = py.allow_threads(move || {
        guard(move || {
            pair_loss(&embeddings, labels.as_deref(), pairs.as_deref(), |source| {
                losses::contrastive(&embeddings, source, &params)
            })
        })
    })?;
    Ok(PyTensor(loss))
}

#[pyfunction]
#[pyo3(signature = (embeddings, labels=None, *, alpha=2.0, beta=50.0, base=0.5, pairs=None))]
fn multi_similarity_loss(
    py: Python<'_>,
    embeddings: PyTensor,
    labels: Option<PyTensor>,
    alpha: f64,
    beta: f64,
    base: f64,
    pairs: Option<Vec<PyTensor>>,
) -> PyResult<PyTensor> {
    let params = MultiSimilarityParams { alpha, beta, base };
    let loss = py.allow_threads(move || {
        guard(move || {
            pair_loss(&embeddings, labels.as_deref(), pairs.as_deref(), |source| {
                losses::multi_similarity(&embeddings, source, &params)
            })
        })
    })?;
    Ok(PyTensor(loss))
}

#[pyfunction]
#[pyo3(signature = (embeddings, labels, *, epsilon=0.1, alpha=2.0, beta=50.0, base=0.5))]
fn multi_similarity_loss_with_miner(
    py: Python<'_>,
    embeddings: PyTensor,
    labels: PyTensor,
    epsilon: f64,
    alpha: f64,
    beta: f64,
    base: f64,
) -> PyResult<PyTensor> {
    let params = MultiSimilarityParams { alpha, beta, base };
    let loss = py.allow_threads(move || {
        guard(move || {
            Ok(losses::multi_similarity_with_miner(&embeddings, &labels, &params, epsilon)?.0)
        })
    })?;
    Ok(PyTensor(loss))
}

#[pyfunction]
#[pyo3(signature = (embeddings, labels=None, *, margin=losses::triplet::DEFAULT_MARGIN, pairs=None))]
fn triplet_margin_loss(
    py: Python<'_>,
    embeddings: PyTensor,
    labels: Option<PyTensor>,
    margin: f64,
    pairs: Option<Vec<PyTensor>>,
) -> PyResult<PyTensor> {
    let loss = py.allow_threads(move || {
        guard(move || match (pairs, labels) {
            (Some(pairs), labels) => {
                let (batch, tensors) = index_tuple(&embeddings, &pairs)?;
                if let Some(labels) = &labels {
                    validate::label_tensor(labels, batch, "labels", "embeddings")?;
                }
                let triplets = Triplets::from_tuple(&tensors, batch, embeddings.device(), "pairs")?;
                losses::triplet_margin(&embeddings, TripletSource::Triplets(&triplets), margin)
            }
            (None, Some(labels)) => {
                losses::triplet_margin(&embeddings, TripletSource::Labels(&labels), margin)
            }
            (None, None) => crate::bail!(Value, "give labels, or triplets or pairs from a miner"),
        })
    })?;
    Ok(PyTensor(loss))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(contrastive_loss, m)?)?;
    m.add_function(wrap_pyfunction!(multi_similarity_loss, m)?)?;
    m.add_function(wrap_pyfunction!(multi_similarity_loss_with_miner, m)?)?;
    m.add_function(wrap_pyfunction!(triplet_margin_loss, m)?)?;
    Ok(())
}
