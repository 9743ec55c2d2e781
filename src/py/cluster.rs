//! Bindings of `crate::cluster`.

use super::count;
use super::error::guard;
use crate::cluster::{self, Init, KMeansOptions};
use pyo3::prelude::*;
use pyo3_tch::PyTensor;

/// `init=`: a method name or a `(k, dim)` tensor of centroids.
#[derive(FromPyObject)]
enum InitArg {
    Name(String),
    Centroids(PyTensor),
}

fn options(k: i64, iters: i64, seed: i64, init: InitArg, tol: f64) -> PyResult<KMeansOptions> {
    Ok(KMeansOptions {
        k: count(k, "k")?,
        iters: count(iters, "iters")?,
        seed: count(seed, "seed")? as u64,
        init: match init {
            InitArg::Name(name) => Init::from_name(&name)?,
            InitArg::Centroids(c) => Init::Centroids(c.0),
        },
        tol,
    })
}

#[pyfunction]
#[pyo3(signature = (x, k, *, iters=20, seed=0, init=InitArg::Name("k-means++".into()), tol=0.0))]
fn kmeans(
    py: Python<'_>,
    x: PyTensor,
    k: i64,
    iters: i64,
    seed: i64,
    init: InitArg,
    tol: f64,
) -> PyResult<(PyTensor, PyTensor, f64, usize)> {
    let options = options(k, iters, seed, init, tol)?;
    let result = py.allow_threads(move || guard(move || cluster::kmeans(&x, &options)))?;
    Ok((PyTensor(result.centroids), PyTensor(result.labels), result.inertia, result.iterations))
}

/// The k-means cluster ids of the L2-normalised embeddings (`crate::cluster::pseudo_label`).
#[pyfunction]
#[pyo3(signature = (embeddings, k, *, iters=20, seed=0, init=InitArg::Name("k-means++".into()), tol=0.0))]
fn cluster_labels(
    py: Python<'_>,
    embeddings: PyTensor,
    k: i64,
    iters: i64,
    seed: i64,
    init: InitArg,
    tol: f64,
) -> PyResult<PyTensor> {
    let options = options(k, iters, seed, init, tol)?;
    let labels =
        py.allow_threads(move || guard(move || cluster::pseudo_label(&embeddings, &options)))?;
    Ok(PyTensor(labels))
}

#[pyfunction]
fn nmi(py: Python<'_>, labels_a: PyTensor, labels_b: PyTensor) -> PyResult<f64> {
    Ok(py.allow_threads(move || guard(move || cluster::nmi_of_tensors(&labels_a, &labels_b)))?)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(kmeans, m)?)?;
    m.add_function(wrap_pyfunction!(cluster_labels, m)?)?;
    m.add_function(wrap_pyfunction!(nmi, m)?)?;
    Ok(())
}
