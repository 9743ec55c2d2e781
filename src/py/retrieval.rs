//! Bindings of `crate::retrieval`.

use super::count;
use super::error::guard;
use crate::bail;
use crate::retrieval::{self, Engine, MetricOptions};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use pyo3_tch::PyTensor;

#[pyfunction]
#[pyo3(signature = (query, reference=None, k=1, engine="auto"))]
fn knn(
    py: Python<'_>,
    query: PyTensor,
    reference: Option<PyTensor>,
    k: i64,
    engine: &str,
) -> PyResult<(PyTensor, PyTensor)> {
    let engine: Engine = engine.parse()?;
    let (distances, indices) = py.allow_threads(move || {
        guard(move || retrieval::knn(&query, reference.as_deref(), count(k, "k")?, engine))
    })?;
    Ok((PyTensor(distances), PyTensor(indices)))
}

#[pyfunction]
#[pyo3(signature = (
    query, query_labels, reference=None, reference_labels=None, *, k=None,
    recall_at=vec![1, 2, 4, 8], avg_of_avgs=false, exclude_lone_queries=true, engine="auto",
    nmi=false
))]
#[allow(clippy::too_many_arguments)]
fn retrieval_metrics<'py>(
    py: Python<'py>,
    query: PyTensor,
    query_labels: PyTensor,
    reference: Option<PyTensor>,
    reference_labels: Option<PyTensor>,
    k: Option<i64>,
    recall_at: Vec<i64>,
    avg_of_avgs: bool,
    exclude_lone_queries: bool,
    engine: &str,
    nmi: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let options = MetricOptions {
        k: k.map(|k| count(k, "k")).transpose()?,
        recall_at: recall_at
            .into_iter()
            .map(|v| count(v, "recall_at"))
            .collect::<Result<_, _>>()?,
        avg_of_avgs,
        exclude_lone_queries,
        engine: engine.parse()?,
        nmi,
    };
    let metrics = py.allow_threads(move || {
        guard(move || {
            let reference = match (&reference, &reference_labels) {
                (Some(r), Some(l)) => Some((&r.0, &l.0)),
                (None, None) => None,
                (Some(_), None) => bail!(Value, "reference was given without reference_labels"),
                (None, Some(_)) => bail!(Value, "reference_labels was given without reference"),
            };
            retrieval::retrieval_metrics(&query, &query_labels, reference, &options)
        })
    })?;
    let dict = PyDict::new(py);
    for (name, value) in metrics {
        dict.set_item(name, value)?;
    }
    Ok(dict)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(knn, m)?)?;
    m.add_function(wrap_pyfunction!(retrieval_metrics, m)?)?;
    Ok(())
}
