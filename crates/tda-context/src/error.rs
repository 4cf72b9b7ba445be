//! Errors of context attribution: one line each, naming the file when there is one, so the CLI
//! can print them as they are.

use std::path::PathBuf;

/// An error of context attribution.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file was read but its content is wrong (bad JSON line, missing column, ...).
    #[error("{}: {msg}", path.display())]
    Invalid { path: PathBuf, msg: String },
    /// A request that cannot be served: no documents, empty answer, prompt too long, ...
    #[error("{0}")]
    Usage(String),
    /// The prompt or chat template could not be rendered.
    #[error("template: {0}")]
    Template(String),
    #[error(transparent)]
    Model(#[from] tda_model::ModelError),
    /// The documents file could not be read (`tda-corpus` names the file and record).
    #[error(transparent)]
    Corpus(#[from] tda_corpus::CorpusError),
}

impl ContextError {
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
    pub(crate) fn usage(msg: impl Into<String>) -> Self {
        Self::Usage(msg.into())
    }
}

pub type Result<T, E = ContextError> = std::result::Result<T, E>;
