//! Bindings of `crate::train`: trainer classes and checkpoint inspection. Every call runs
//! with the GIL released; a KeyboardInterrupt arrives between steps.

use super::count;
use super::error::guard;
use super::nn::{
    load_backbone, load_model_state, parse_json, py_tensors, report_dict, rs_tensors, with_locked,
    BackboneWeights,
};
use crate::error::SladeError;
use crate::nn::layers::Builder;
use crate::nn::Model;
use crate::train::checkpoint;
use crate::train::ranking::RankingConfig;
use crate::train::student::{Student, StudentBatch, StudentConfig, ThresholdRule};
use crate::train::swav::{Swav, SwavConfig};
use crate::train::teacher::{LabeledBatch, Teacher};
use crate::train::{Metrics, Objective, Trainer, TrainerConfig};
use crate::validate;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use pyo3_tch::PyTensor;
use std::path::PathBuf;
use std::sync::Mutex;
use tch::Tensor;

fn to_json<T: serde::Serialize>(value: &T) -> crate::Result<String> {
    serde_json::to_string(value).map_err(|e| SladeError::Internal(e.to_string()))
}

fn tensors_of(tensors: Vec<PyTensor>) -> Vec<Tensor> {
    tensors.into_iter().map(|t| t.0).collect()
}

/// A trainer from the JSON of its `TrainerConfig` and of its objective's settings (`what`
/// names the latter in errors), built with the GIL released.
fn build<O: Objective, C: serde::de::DeserializeOwned + Send>(
    py: Python<'_>,
    config_json: &str,
    objective_json: &str,
    what: &str,
    device: &str,
    objective: impl FnOnce(C, &mut Builder, &Model) -> crate::Result<O> + Send,
) -> PyResult<Mutex<Trainer<O>>> {
    let config: TrainerConfig = parse_json(config_json, "trainer config")?;
    let settings: C = parse_json(objective_json, what)?;
    let device = validate::parse_device(device)?;
    let trainer = py.allow_threads(move || {
        guard(move || Trainer::new(config, device, |b, m| objective(settings, b, m)))
    })?;
    Ok(Mutex::new(trainer))
}

/// Declares a Python class around `Trainer<$objective>` with the methods every trainer
/// shares (the gradients' second half, embedding, parameters, checkpoints, ...) plus the
/// given ones: at least `#[new]`, `step` and `compute_gradients`, whose batch types differ.
macro_rules! trainer_class {
    ($class:ident, $name:literal, $objective:ty, { $($methods:tt)* }) => {
        #[pyclass(module = "slade._core", name = $name)]
        pub struct $class {
            inner: Mutex<Trainer<$objective>>,
        }

        #[pymethods]
        impl $class {
            $($methods)*

            fn apply_gradients(&self, py: Python<'_>) -> PyResult<Metrics> {
                with_locked(py, &self.inner, |t| t.apply_gradients())
            }

            #[pyo3(signature = (images, batch_size=256))]
            fn embed(&self, py: Python<'_>, images: PyTensor, batch_size: i64) -> PyResult<PyTensor> {
                let batch_size = count(batch_size, "batch_size")?;
                with_locked(py, &self.inner, move |t| t.embed(&images, batch_size)).map(PyTensor)
            }

            #[getter]
            fn step_count(&self, py: Python<'_>) -> PyResult<i64> {
                with_locked(py, &self.inner, |t| Ok(t.step_count()))
            }

            #[getter]
            fn config_json(&self, py: Python<'_>) -> PyResult<String> {
                with_locked(py, &self.inner, |t| to_json(t.config()))
            }

            #[getter]
            fn objective_json(&self, py: Python<'_>) -> PyResult<String> {
                with_locked(py, &self.inner, |t| {
                    Ok(crate::train::Objective::config(t.objective()).to_string())
                })
            }

            #[getter]
            fn device(&self, py: Python<'_>) -> PyResult<String> {
                with_locked(py, &self.inner, |t| Ok(validate::device_name(t.device())))
            }

            #[getter]
            fn backbone_frozen(&self, py: Python<'_>) -> PyResult<bool> {
                with_locked(py, &self.inner, |t| Ok(t.model().is_backbone_frozen()))
            }

            fn set_backbone_frozen(&self, py: Python<'_>, frozen: bool) -> PyResult<()> {
                with_locked(py, &self.inner, |t| t.set_backbone_frozen(frozen))
            }

            fn learning_rates(&self, py: Python<'_>) -> PyResult<Vec<(String, f64)>> {
                with_locked(py, &self.inner, |t| Ok(t.learning_rates()))
            }

            fn named_parameters(&self, py: Python<'_>) -> PyResult<Vec<(String, PyTensor)>> {
                with_locked(py, &self.inner, |t| Ok(t.named_parameters())).map(py_tensors)
            }

            fn named_buffers(&self, py: Python<'_>) -> PyResult<Vec<(String, PyTensor)>> {
                with_locked(py, &self.inner, |t| Ok(t.named_buffers())).map(py_tensors)
            }

            fn state_dict(&self, py: Python<'_>) -> PyResult<Vec<(String, PyTensor)>> {
                with_locked(py, &self.inner, |t| t.state_dict()).map(py_tensors)
            }

            fn optimizer_state(&self, py: Python<'_>) -> PyResult<Vec<(String, PyTensor)>> {
                with_locked(py, &self.inner, |t| Ok(t.optimizer_state())).map(py_tensors)
            }

            #[pyo3(signature = (state, strict=true))]
            fn load_state_dict<'py>(
                &self,
                py: Python<'py>,
                state: Vec<(String, PyTensor)>,
                strict: bool,
            ) -> PyResult<Bound<'py, PyDict>> {
                let state = rs_tensors(state);
                let report =
                    with_locked(py, &self.inner, move |t| t.load_state_dict(&state, strict))?;
                report_dict(py, report)
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

            /// Backbone and embedding head from a state_dict with the model's names (e.g. a
            /// teacher's), leaving the trainer's own parameters as they are.
            #[pyo3(signature = (state, strict=true))]
            fn load_model_state<'py>(
                &self,
                py: Python<'py>,
                state: Vec<(String, PyTensor)>,
                strict: bool,
            ) -> PyResult<Bound<'py, PyDict>> {
                load_model_state(py, &self.inner, state, strict)
            }

            /// The model's parameters and buffers (no objective state), detached.
            fn model_state_dict(&self, py: Python<'_>) -> PyResult<Vec<(String, PyTensor)>> {
                with_locked(py, &self.inner, |t| t.model().store().state_dict()).map(py_tensors)
            }

            fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
                with_locked(py, &self.inner, move |t| t.save(&path))
            }

            fn load(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
                with_locked(py, &self.inner, move |t| t.load(&path))
            }
        }
    };
}

trainer_class!(PySwavTrainer, "SwavTrainer", Swav, {
    #[new]
    #[pyo3(signature = (config_json, swav_json, device="cpu"))]
    fn new(py: Python<'_>, config_json: &str, swav_json: &str, device: &str) -> PyResult<Self> {
        let inner =
            build(py, config_json, swav_json, "SwAV config", device, |c: SwavConfig, b, m| {
                Swav::new(c, b, m)
            })?;
        Ok(Self { inner })
    }

    fn step(&self, py: Python<'_>, crops: Vec<PyTensor>) -> PyResult<Metrics> {
        let crops = tensors_of(crops);
        with_locked(py, &self.inner, move |t| t.step(&crops))
    }

    fn compute_gradients(&self, py: Python<'_>, crops: Vec<PyTensor>) -> PyResult<Metrics> {
        let crops = tensors_of(crops);
        with_locked(py, &self.inner, move |t| t.compute_gradients(&crops))
    }
});

trainer_class!(PyTeacherTrainer, "TeacherTrainer", Teacher, {
    #[new]
    #[pyo3(signature = (config_json, ranking_json, device="cpu"))]
    fn new(py: Python<'_>, config_json: &str, ranking_json: &str, device: &str) -> PyResult<Self> {
        let inner = build(
            py,
            config_json,
            ranking_json,
            "teacher config",
            device,
            |c: RankingConfig, _, _| Teacher::new(c),
        )?;
        Ok(Self { inner })
    }

    fn step(&self, py: Python<'_>, images: PyTensor, labels: PyTensor) -> PyResult<Metrics> {
        let batch = LabeledBatch { images: images.0, labels: labels.0 };
        with_locked(py, &self.inner, move |t| t.step(&batch))
    }

    fn compute_gradients(
        &self,
        py: Python<'_>,
        images: PyTensor,
        labels: PyTensor,
    ) -> PyResult<Metrics> {
        let batch = LabeledBatch { images: images.0, labels: labels.0 };
        with_locked(py, &self.inner, move |t| t.compute_gradients(&batch))
    }
});

trainer_class!(PyStudentTrainer, "StudentTrainer", Student, {
    #[new]
    #[pyo3(signature = (config_json, student_json, device="cpu"))]
    fn new(py: Python<'_>, config_json: &str, student_json: &str, device: &str) -> PyResult<Self> {
        let inner = build(
            py,
            config_json,
            student_json,
            "student config",
            device,
            |c: StudentConfig, b, m| Student::new(c, b, m),
        )?;
        Ok(Self { inner })
    }

    #[pyo3(signature = (labeled_images, labels, unlabeled_images, pseudo_labels, true_labels=None))]
    fn step(
        &self,
        py: Python<'_>,
        labeled_images: PyTensor,
        labels: PyTensor,
        unlabeled_images: PyTensor,
        pseudo_labels: PyTensor,
        true_labels: Option<PyTensor>,
    ) -> PyResult<Metrics> {
        let batch =
            student_batch([labeled_images, labels, unlabeled_images, pseudo_labels], true_labels);
        with_locked(py, &self.inner, move |t| t.step(&batch))
    }

    #[pyo3(signature = (labeled_images, labels, unlabeled_images, pseudo_labels, true_labels=None))]
    fn compute_gradients(
        &self,
        py: Python<'_>,
        labeled_images: PyTensor,
        labels: PyTensor,
        unlabeled_images: PyTensor,
        pseudo_labels: PyTensor,
        true_labels: Option<PyTensor>,
    ) -> PyResult<Metrics> {
        let batch =
            student_batch([labeled_images, labels, unlabeled_images, pseudo_labels], true_labels);
        with_locked(py, &self.inner, move |t| t.compute_gradients(&batch))
    }

    /// (T1 rule, T2 rule) in use, "auto" resolved: a number or "mu+", "mu-", "mid".
    fn threshold_rules(&self, py: Python<'_>) -> PyResult<(String, String)> {
        with_locked(py, &self.inner, |t| {
            let (t1, t2) = t.objective().threshold_rules();
            Ok((rule_name(t1), rule_name(t2)))
        })
    }
});

fn student_batch(
    [labeled_images, labels, unlabeled_images, pseudo_labels]: [PyTensor; 4],
    true_labels: Option<PyTensor>,
) -> StudentBatch {
    StudentBatch {
        labeled_images: labeled_images.0,
        labels: labels.0,
        unlabeled_images: unlabeled_images.0,
        pseudo_labels: pseudo_labels.0,
        true_labels: true_labels.map(|t| t.0),
    }
}

fn rule_name(rule: ThresholdRule) -> String {
    match rule {
        ThresholdRule::Fixed(v) => v.to_string(),
        ThresholdRule::MuPos => "mu+".into(),
        ThresholdRule::MuNeg => "mu-".into(),
        ThresholdRule::Mid => "mid".into(),
    }
}

/// (trainer kind, trainer config JSON, objective config JSON, step) of a checkpoint.
#[pyfunction]
fn read_checkpoint_info(py: Python<'_>, path: PathBuf) -> PyResult<(String, String, String, i64)> {
    let info = py.allow_threads(move || guard(move || checkpoint::read_info(&path)))?;
    let config = to_json(&info.config)?;
    Ok((info.kind, config, info.objective.to_string(), info.step))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PySwavTrainer>()?;
    m.add_class::<PyTeacherTrainer>()?;
    m.add_class::<PyStudentTrainer>()?;
    m.add_function(wrap_pyfunction!(read_checkpoint_info, m)?)?;
    Ok(())
}
