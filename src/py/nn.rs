//! Bindings of `crate::nn`: the embedding model as a Python class, and the helpers the
//! trainer bindings share (locking, tensor lists, load reports).

use super::count;
use super::error::guard;
use super::settings::{parse_settings, to_py};
use crate::error::SladeError;
use crate::nn::store::LoadReport;
use crate::nn::{Model, ModelConfig};
use crate::validate;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use pyo3_tch::PyTensor;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::path::PathBuf;
use std::sync::Mutex;
use tch::Tensor;

/// Runs `f` on the locked value with the GIL released, under `guard`.
pub(crate) fn with_locked<T: Send, R: Send>(
    py: Python<'_>,
    cell: &Mutex<T>,
    f: impl FnOnce(&mut T) -> crate::Result<R> + Send,
) -> PyResult<R> {
    let result = py.allow_threads(move || {
        guard(move || {
            let mut value = cell.lock().map_err(|_| {
                SladeError::Internal(
                    "an earlier call failed inside slade; build a new object".into(),
                )
            })?;
            f(&mut value)
        })
    })?;
    Ok(result)
}

pub(crate) fn py_tensors(named: Vec<(String, Tensor)>) -> Vec<(String, PyTensor)> {
    named.into_iter().map(|(n, t)| (n, PyTensor(t))).collect()
}

pub(crate) fn rs_tensors(named: Vec<(String, PyTensor)>) -> Vec<(String, Tensor)> {
    named.into_iter().map(|(n, t)| (n, t.0)).collect()
}

pub(crate) fn report_dict<'py>(
    py: Python<'py>,
    report: LoadReport,
) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    dict.set_item("loaded", report.loaded)?;
    dict.set_item("missing", report.missing)?;
    dict.set_item("unexpected", report.unexpected)?;
    dict.set_item("ignored", report.ignored)?;
    Ok(dict)
}

/// Something that holds an embedding model: the model itself or a trainer.
pub(crate) trait HoldsModel: Send {
    fn model(&self) -> &Model;
}

impl HoldsModel for Model {
    fn model(&self) -> &Model {
        self
    }
}

impl<O: crate::train::Objective> HoldsModel for crate::train::Trainer<O> {
    fn model(&self) -> &Model {
        crate::train::Trainer::model(self)
    }
}

/// Backbone weights from Python: a list of (name, tensor) or a `.safetensors` path.
#[derive(FromPyObject)]
pub(crate) enum BackboneWeights {
    Named(Vec<(String, PyTensor)>),
    File(PathBuf),
}

/// Loads backbone weights into the held model (see `Model::load_backbone_weights`).
pub(crate) fn load_backbone<'py, T: HoldsModel>(
    py: Python<'py>,
    cell: &Mutex<T>,
    weights: BackboneWeights,
    strict: bool,
    ignore_prefixes: Vec<String>,
    strip_prefix: Option<String>,
) -> PyResult<Bound<'py, PyDict>> {
    let report = with_locked(py, cell, move |holder| {
        let model = holder.model();
        match weights {
            BackboneWeights::Named(named) => model.load_backbone_weights(
                &rs_tensors(named),
                strict,
                &ignore_prefixes,
                strip_prefix.as_deref(),
            ),
            BackboneWeights::File(path) => {
                model.load_backbone_file(&path, strict, &ignore_prefixes, strip_prefix.as_deref())
            }
        }
    })?;
    report_dict(py, report)
}

/// Loads a state_dict with the model's names into the held model (see
/// `Model::load_state_dict`); a trainer's own parameters are left as they are.
pub(crate) fn load_model_state<'py, T: HoldsModel>(
    py: Python<'py>,
    cell: &Mutex<T>,
    state: Vec<(String, PyTensor)>,
    strict: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let state = rs_tensors(state);
    let report =
        with_locked(py, cell, move |holder| holder.model().load_state_dict(&state, strict))?;
    report_dict(py, report)
}

/// Backbone + embedding head (see `crate::nn::Model`).
#[pyclass(module = "slade._core", name = "_EmbeddingModel")]
pub struct PyEmbeddingModel {
    inner: Mutex<Model>,
}

#[pymethods]
impl PyEmbeddingModel {
    #[new]
    #[pyo3(signature = (config, device="cpu", seed=0))]
    fn new(py: Python<'_>, config: &Bound<'_, PyAny>, device: &str, seed: u64) -> PyResult<Self> {
        let config: ModelConfig = parse_settings(config, "")?;
        let device = validate::parse_device(device)?;
        let model = py.allow_threads(move || {
            guard(move || Model::new(&config, device, &mut ChaCha8Rng::seed_from_u64(seed)))
        })?;
        Ok(PyEmbeddingModel { inner: Mutex::new(model) })
    }

    /// The model's settings, every one filled in.
    #[getter]
    fn config(&self, py: Python<'_>) -> PyResult<PyObject> {
        let value = with_locked(py, &self.inner, |m| {
            serde_json::to_value(m.config()).map_err(|e| SladeError::Internal(e.to_string()))
        })?;
        to_py(py, &value)
    }

    #[getter]
    fn device(&self, py: Python<'_>) -> PyResult<String> {
        with_locked(py, &self.inner, |m| Ok(validate::device_name(m.device())))
    }

    #[getter]
    fn training(&self, py: Python<'_>) -> PyResult<bool> {
        with_locked(py, &self.inner, |m| Ok(m.is_training()))
    }

    fn set_training(&self, py: Python<'_>, training: bool) -> PyResult<()> {
        with_locked(py, &self.inner, |m| {
            m.set_training(training);
            Ok(())
        })
    }

    fn set_backbone_frozen(&self, py: Python<'_>, frozen: bool) -> PyResult<()> {
        with_locked(py, &self.inner, |m| m.set_backbone_frozen(frozen))
    }

    #[getter]
    fn backbone_frozen(&self, py: Python<'_>) -> PyResult<bool> {
        with_locked(py, &self.inner, |m| Ok(m.is_backbone_frozen()))
    }

    /// Embeddings in the current mode, with autograd as the caller's grad mode says.
    fn forward(&self, py: Python<'_>, images: PyTensor) -> PyResult<PyTensor> {
        with_locked(py, &self.inner, move |m| m.forward(&images)).map(PyTensor)
    }

    /// Pooled backbone features in the given mode (default: the current mode).
    #[pyo3(signature = (images, train=None))]
    fn features(
        &self,
        py: Python<'_>,
        images: PyTensor,
        train: Option<bool>,
    ) -> PyResult<PyTensor> {
        with_locked(py, &self.inner, move |m| {
            m.check_images(&images, "images", false)?;
            m.features_t(&images, train.unwrap_or(m.is_training()))
        })
        .map(PyTensor)
    }

    #[pyo3(signature = (images, batch_size=256))]
    fn embed(&self, py: Python<'_>, images: PyTensor, batch_size: i64) -> PyResult<PyTensor> {
        let batch_size = count(batch_size, "batch_size")?;
        with_locked(py, &self.inner, move |m| m.embed(&images, batch_size)).map(PyTensor)
    }

    fn named_parameters(&self, py: Python<'_>) -> PyResult<Vec<(String, PyTensor)>> {
        with_locked(py, &self.inner, |m| Ok(m.store().named_parameters())).map(py_tensors)
    }

    fn named_buffers(&self, py: Python<'_>) -> PyResult<Vec<(String, PyTensor)>> {
        with_locked(py, &self.inner, |m| Ok(m.store().named_buffers())).map(py_tensors)
    }

    fn state_dict(&self, py: Python<'_>) -> PyResult<Vec<(String, PyTensor)>> {
        with_locked(py, &self.inner, |m| m.store().state_dict()).map(py_tensors)
    }

    #[pyo3(signature = (state, strict=true))]
    fn load_state_dict<'py>(
        &self,
        py: Python<'py>,
        state: Vec<(String, PyTensor)>,
        strict: bool,
    ) -> PyResult<Bound<'py, PyDict>> {
        load_model_state(py, &self.inner, state, strict)
    }

    #[pyo3(signature = (weights, strict=true, ignore_prefixes=vec!["fc.".to_string()], strip_prefix=None))]
    fn load_backbone<'py>(
        &self,
        py: Python<'py>,
        weights: BackboneWeights,
        strict: bool,
        ignore_prefixes: Vec<String>,
        strip_prefix: Option<String>,
    ) -> PyResult<Bound<'py, PyDict>> {
        load_backbone(py, &self.inner, weights, strict, ignore_prefixes, strip_prefix)
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyEmbeddingModel>()?;
    Ok(())
}
