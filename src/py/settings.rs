//! Bindings of `crate::settings`: Python mappings <-> JSON values, the defaults of every
//! settings group and their check. Every group crosses as one mapping; the core validates it.

use super::error::guard;
use crate::error::SladeError;
use crate::settings::{self, Group, Settings};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use serde_json::{Map, Number, Value};

/// `obj` (None, bool, int, float, str, list, tuple, dict with str keys) as a JSON value;
/// `name` names it in errors ("t1", "optimizer.betas").
pub(crate) fn to_value(obj: &Bound<'_, PyAny>, name: &str) -> crate::Result<Value> {
    if obj.is_none() {
        return Ok(Value::Null);
    }
    if let Ok(flag) = obj.downcast::<PyBool>() {
        return Ok(Value::Bool(flag.is_true()));
    }
    if obj.is_instance_of::<PyInt>() {
        return integer(obj, name);
    }
    if obj.is_instance_of::<PyFloat>() {
        return float(obj, name);
    }
    if let Ok(text) = obj.downcast::<PyString>() {
        return Ok(Value::String(text.to_string_lossy().into_owned()));
    }
    if let Ok(dict) = obj.downcast::<PyDict>() {
        return object(dict, name);
    }
    if obj.is_instance_of::<PyList>() || obj.is_instance_of::<PyTuple>() {
        let items = obj.try_iter().map_err(py_error)?;
        return items
            .enumerate()
            .map(|(i, item)| to_value(&item.map_err(py_error)?, &format!("{name}[{i}]")))
            .collect::<crate::Result<Vec<_>>>()
            .map(Value::Array);
    }
    if obj.hasattr("__index__").map_err(py_error)? {
        return integer(obj, name);
    }
    if obj.hasattr("__float__").map_err(py_error)? {
        return float(obj, name);
    }
    let kind = obj.get_type().name().map_err(py_error)?;
    Err(SladeError::Dtype(format!(
        "{name} must be a number, a str, a bool, a list or a dict, got {kind}"
    )))
}

fn integer(obj: &Bound<'_, PyAny>, name: &str) -> crate::Result<Value> {
    let value: i64 = obj
        .extract()
        .map_err(|_| SladeError::Config(format!("{name} must fit in a 64-bit integer")))?;
    Ok(Value::Number(value.into()))
}

fn float(obj: &Bound<'_, PyAny>, name: &str) -> crate::Result<Value> {
    let value: f64 = obj.extract().map_err(py_error)?;
    Number::from_f64(value)
        .map(Value::Number)
        .ok_or_else(|| settings::invalid(name, "a finite number", value))
}

fn object(dict: &Bound<'_, PyDict>, name: &str) -> crate::Result<Value> {
    let mut map = Map::new();
    for (key, item) in dict.iter() {
        let key: String = key.extract().map_err(|_| {
            let place = if name.is_empty() { "settings" } else { name };
            SladeError::Dtype(format!("the keys of {place} must be str"))
        })?;
        let inner = if name.is_empty() { key.clone() } else { format!("{name}.{key}") };
        map.insert(key, to_value(&item, &inner)?);
    }
    Ok(Value::Object(map))
}

fn py_error(err: PyErr) -> SladeError {
    SladeError::Internal(err.to_string())
}

/// A JSON value as the Python object it describes.
pub(crate) fn to_py(py: Python<'_>, value: &Value) -> PyResult<PyObject> {
    Ok(match value {
        Value::Null => py.None(),
        Value::Bool(flag) => flag.into_pyobject(py)?.to_owned().into_any().unbind(),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => i.into_pyobject(py)?.into_any().unbind(),
            (None, Some(f)) => f.into_pyobject(py)?.into_any().unbind(),
            (None, None) => return Err(PyValueError::new_err(format!("unreadable number {n}"))),
        },
        Value::String(text) => text.into_pyobject(py)?.into_any().unbind(),
        Value::Array(items) => {
            let items = items.iter().map(|v| to_py(py, v)).collect::<PyResult<Vec<_>>>()?;
            PyList::new(py, items)?.into_any().unbind()
        }
        Value::Object(map) => {
            let dict = PyDict::new(py);
            for (key, item) in map {
                dict.set_item(key, to_py(py, item)?)?;
            }
            dict.into_any().unbind()
        }
    })
}

/// A settings group from a Python mapping, checked (errors name the setting after `at`).
pub(crate) fn parse_settings<T: Settings>(
    settings: &Bound<'_, PyAny>,
    at: &str,
) -> crate::Result<T> {
    let value = to_value(settings, at.trim_end_matches('.'))?;
    settings::parse(value, at)
}

/// The defaults of the settings group `group` ("model", "optimizer", "trainer", "ranking",
/// "swav", "basis", "student").
#[pyfunction]
fn default_settings(py: Python<'_>, group: &str) -> PyResult<PyObject> {
    let group: Group = group.parse()?;
    let value = guard(|| settings::defaults(group))?;
    to_py(py, &value)
}

/// `settings` checked as the group `group`, every setting filled in; errors name the
/// setting as `{at}{key}`.
#[pyfunction]
#[pyo3(signature = (group, settings, at=""))]
fn check_settings(
    py: Python<'_>,
    group: &str,
    settings: &Bound<'_, PyAny>,
    at: &str,
) -> PyResult<PyObject> {
    let group: Group = group.parse()?;
    let value = to_value(settings, at.trim_end_matches('.'))?;
    let checked = py.allow_threads(|| guard(|| settings::check(group, value, at)))?;
    to_py(py, &checked)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(default_settings, m)?)?;
    m.add_function(wrap_pyfunction!(check_settings, m)?)?;
    Ok(())
}
