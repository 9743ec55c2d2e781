//! The one error type of the core. `src/py/error.rs` maps each variant to a Python exception
//! class (a subclass of `slade.SladeError` and of the matching built-in).

use thiserror::Error;

#[derive(Debug, Error)]
pub enum SladeError {
    /// A tensor has the wrong number of dimensions or mismatched lengths.
    #[error("{0}")]
    Shape(String),
    /// A tensor has a dtype the operation does not accept.
    #[error("{0}")]
    Dtype(String),
    /// Tensors that must share a device do not.
    #[error("{0}")]
    Device(String),
    /// NaN or Inf where finite values are required.
    #[error("{0}")]
    NonFinite(String),
    /// An argument is out of its valid range (k, thresholds, empty input, ...).
    #[error("{0}")]
    Value(String),
    /// A setting is invalid: an unknown key or option name, or a value out of its range
    /// (see `crate::settings`).
    #[error("{0}")]
    Config(String),
    /// A file is missing.
    #[error("{0}")]
    FileNotFound(String),
    /// Reading or writing a file failed.
    #[error("{0}")]
    Io(String),
    /// LibTorch raised an error the core did not anticipate.
    #[error("torch error: {0}")]
    Torch(String),
    /// A bug in slade: an invariant did not hold.
    #[error("internal error in slade (please report it): {0}")]
    Internal(String),
}

pub type Result<T> = std::result::Result<T, SladeError>;

impl From<tch::TchError> for SladeError {
    /// Keeps LibTorch's message and drops the C++ stack trace that follows it.
    fn from(err: tch::TchError) -> Self {
        let text = match err {
            tch::TchError::Torch(text) => text,
            other => other.to_string(),
        };
        let message = text.split("\nException raised from").next().unwrap_or(&text);
        SladeError::Torch(message.trim().to_string())
    }
}

impl From<std::io::Error> for SladeError {
    fn from(err: std::io::Error) -> Self {
        if err.kind() == std::io::ErrorKind::NotFound {
            SladeError::FileNotFound(err.to_string())
        } else {
            SladeError::Io(err.to_string())
        }
    }
}

/// `bail!(Variant, "format", args)` returns early with `SladeError::Variant(format!(..))`.
#[macro_export]
macro_rules! bail {
    ($variant:ident, $($arg:tt)*) => {
        return Err($crate::error::SladeError::$variant(format!($($arg)*)))
    };
}
