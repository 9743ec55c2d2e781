//! Bindings of `crate::train`: trainer classes and checkpoint inspection. Every call runs
//! with the GIL released; a KeyboardInterrupt arrives between steps.

use super::count;
use super::error::guard;
use super::nn::{
    load_backbone, load_model_state, py_tensors, report_dict, rs_tensors, with_locked,
    BackboneWeights,
};
use super::settings::{parse_settings, to_py};
use crate::error::SladeError;
use crate::mining::ThresholdRule;
use crate::nn::layers::Builder;
use crate::nn::Model;
use crate::settings::Settings;
use crate::train::checkpoint;
use crate::train::optim::OptimizerConfig;
use crate::train::ranking::RankingConfig;
use crate::train::schedule::Schedule;
use crate::train::student::{Student, StudentBatch, StudentObjectiveConfig};
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

fn to_json<T: serde::Serialize>(value: &T) -> crate::Result<serde_json::Value> {
    serde_json::to_value(value).map_err(|e| SladeError::Internal(e.to_string()))
}

fn tensors_of(tensors: Vec<PyTensor>) -> Vec<Tensor> {
    tensors.into_iter().map(|t| t.0).collect()
}

/// A trainer from the mapping of its `TrainerConfig` and that of its objective's settings,
/// both checked by the core, built with the GIL released.
fn build<O: Objective, C: Settings + Send>(
    py: Python<'_>,
    trainer: &Bound<'_, PyAny>,
    objective_settings: &Bound<'_, PyAny>,
    device: &str,
    objective: impl FnOnce(C, &mut Builder, &Model) -> crate::Result<O> + Send,
) -> PyResult<Mutex<Trainer<O>>> {
    let config: TrainerConfig = parse_settings(trainer, "")?;
    let settings: C = parse_settings(objective_settings, "")?;
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

            /// The trainer's settings (model, optimizer, precision, seed), every one filled in.
            #[getter]
            fn config(&self, py: Python<'_>) -> PyResult<PyObject> {
                let value = with_locked(py, &self.inner, |t| to_json(t.config()))?;
                to_py(py, &value)
            }

            /// The objective's settings, every one filled in.
            #[getter]
            fn objective_config(&self, py: Python<'_>) -> PyResult<PyObject> {
                let value = with_locked(py, &self.inner, |t| {
                    Ok(crate::train::Objective::config(t.objective()))
                })?;
                to_py(py, &value)
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

trainer_class!(PySwavTrainer, "_SwavTrainer", Swav, {
    #[new]
    #[pyo3(signature = (trainer, swav, device="cpu"))]
    fn new(
        py: Python<'_>,
        trainer: &Bound<'_, PyAny>,
        swav: &Bound<'_, PyAny>,
        device: &str,
    ) -> PyResult<Self> {
        let inner = build(py, trainer, swav, device, |c: SwavConfig, b, m| Swav::new(c, b, m))?;
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

trainer_class!(PyTeacherTrainer, "_TeacherTrainer", Teacher, {
    #[new]
    #[pyo3(signature = (trainer, ranking, device="cpu"))]
    fn new(
        py: Python<'_>,
        trainer: &Bound<'_, PyAny>,
        ranking: &Bound<'_, PyAny>,
        device: &str,
    ) -> PyResult<Self> {
        let inner = build(py, trainer, ranking, device, |c: RankingConfig, _, _| Teacher::new(c))?;
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

trainer_class!(PyStudentTrainer, "_StudentTrainer", Student, {
    #[new]
    #[pyo3(signature = (trainer, student, device="cpu"))]
    fn new(
        py: Python<'_>,
        trainer: &Bound<'_, PyAny>,
        student: &Bound<'_, PyAny>,
        device: &str,
    ) -> PyResult<Self> {
        let inner = build(py, trainer, student, device, |c: StudentObjectiveConfig, b, m| {
            Student::new(c, b, m)
        })?;
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

    /// (T1 rule, T2 rule) in use, "auto" resolved: a number or "mu+", "mu-", "mid", "all".
    fn threshold_rules(&self, py: Python<'_>) -> PyResult<(PyObject, PyObject)> {
        let (t1, t2) = with_locked(py, &self.inner, |t| Ok(t.objective().threshold_rules()))?;
        Ok((rule_object(py, t1)?, rule_object(py, t2)?))
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

/// A rule as Python sees it: a float or its name.
fn rule_object(py: Python<'_>, rule: ThresholdRule) -> PyResult<PyObject> {
    to_py(py, &to_json(&rule)?)
}

/// (trainer kind, trainer settings, objective settings, step) of a checkpoint.
#[pyfunction]
fn read_checkpoint_info(
    py: Python<'_>,
    path: PathBuf,
) -> PyResult<(String, PyObject, PyObject, i64)> {
    let info = py.allow_threads(move || guard(move || checkpoint::read_info(&path)))?;
    let config = to_py(py, &to_json(&info.config)?)?;
    Ok((info.kind, config, to_py(py, &info.objective)?, info.step))
}

/// The optimizer's parameter groups as the trainers set them up: (group, base learning rate,
/// weight decay) for each of `groups`, from the optimizer settings (checked; a
/// `group_lr` or `group_weight_decay` entry for a group not in `groups` is a ConfigError).
#[pyfunction]
fn optimizer_groups(
    settings: &Bound<'_, PyAny>,
    groups: Vec<String>,
) -> PyResult<Vec<(String, f64, f64)>> {
    let config: OptimizerConfig = parse_settings(settings, "")?;
    let plan = guard(|| {
        let rule = config.rule()?;
        config.check_groups(&groups)?;
        Ok(groups
            .iter()
            .map(|g| (g.clone(), config.lr_of(g), config.weight_decay_of(g, rule)))
            .collect())
    })?;
    Ok(plan)
}

/// The schedule's learning-rate factor after `step` optimizer updates: update `step + 1`
/// uses each group's base rate times it.
#[pyfunction]
fn lr_factor(settings: &Bound<'_, PyAny>, step: i64) -> PyResult<f64> {
    let config: OptimizerConfig = parse_settings(settings, "")?;
    Ok(guard(|| Ok(Schedule::from_config(&config)?.factor(step)))?)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PySwavTrainer>()?;
    m.add_class::<PyTeacherTrainer>()?;
    m.add_class::<PyStudentTrainer>()?;
    m.add_function(wrap_pyfunction!(read_checkpoint_info, m)?)?;
    m.add_function(wrap_pyfunction!(optimizer_groups, m)?)?;
    m.add_function(wrap_pyfunction!(lr_factor, m)?)?;
    Ok(())
}
