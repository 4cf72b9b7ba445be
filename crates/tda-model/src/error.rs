//! Errors of the model layer. Every message is one line that names the file (when there is one)
//! and what is wrong with it, so the CLI can print it as is.

use std::path::PathBuf;

/// An error of the model layer.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file was read but its content is wrong (bad JSON, bad tensor, wrong shape, ...).
    #[error("{path}: {msg}")]
    Invalid { path: PathBuf, msg: String },
    /// A file or folder could not be written atomically (`tda-io`; the message names the path).
    #[error(transparent)]
    Write(#[from] std::io::Error),
    /// A request that does not fit the model (too long, empty, bad token id, ...).
    #[error("{0}")]
    Usage(String),
}

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
    pub(crate) fn invalid(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Self::Invalid {
            path: path.into(),
            msg: msg.into(),
        }
    }
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
