//! The one place where core errors become Python exceptions. The classes live in
//! `slade/errors.py`; each derives from `slade.SladeError` and the matching built-in.

use crate::error::SladeError;
use pyo3::prelude::*;
use pyo3::types::PyType;

/// The class name in `slade.errors` for each variant.
fn class_name(err: &SladeError) -> &'static str {
    match err {
        SladeError::Shape(_) => "ShapeError",
        SladeError::Dtype(_) => "DtypeError",
        SladeError::Device(_) => "DeviceError",
        SladeError::NonFinite(_) => "NonFiniteError",
        SladeError::Value(_) => "InvalidArgumentError",
        SladeError::Config(_) => "ConfigError",
        SladeError::FileNotFound(_) => "MissingFileError",
        SladeError::Io(_) => "SladeIOError",
        SladeError::Torch(_) => "TorchError",
        SladeError::Internal(_) => "InternalError",
    }
}

impl From<SladeError> for PyErr {
    fn from(err: SladeError) -> PyErr {
        Python::with_gil(|py| {
            let class = py
                .import("slade.errors")
                .and_then(|module| module.getattr(class_name(&err)))
                .and_then(|class| class.downcast_into::<PyType>().map_err(PyErr::from));
            match class {
                Ok(class) => PyErr::from_type(class, err.to_string()),
                Err(import_error) => import_error,
            }
        })
    }
}

/// Runs core code, turning a panic (a bug) into `InternalError` instead of letting it
/// cross into Python.
pub fn guard<T>(f: impl FnOnce() -> crate::Result<T>) -> crate::Result<T> {
    // The closure's state is dropped after a panic, never observed half-updated.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => {
            let message = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".to_string());
            Err(SladeError::Internal(message))
        }
    }
}
