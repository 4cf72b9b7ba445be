//! Errors of the pipeline: one line each, naming the layer, file or option concerned.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error(transparent)]
    Curvature(#[from] tda_curvature::CurvatureError),
    #[error(transparent)]
    Model(#[from] tda_model::ModelError),
    #[error(transparent)]
    Corpus(#[from] tda_corpus::CorpusError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A write through `tda-io` (its message names the file).
    #[error(transparent)]
    Write(#[from] std::io::Error),
    /// Bad option or input (one line).
    #[error("{0}")]
    Usage(String),
    /// Factors that do not belong to this model.
    #[error("{0}")]
    Mismatch(String),
    #[error("cannot write parquet {}: {msg}", path.display())]
    Parquet { path: PathBuf, msg: String },
}

pub type Result<T, E = TraceError> = std::result::Result<T, E>;

pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> TraceError {
    TraceError::Io {
        path: path.to_path_buf(),
        source,
    }
}
