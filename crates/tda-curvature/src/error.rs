//! Error type. Every message is one line and names the layer or the file concerned.

use std::path::PathBuf;

/// Errors of the curvature crate.
#[derive(Debug, thiserror::Error)]
pub enum CurvatureError {
    /// Inputs whose lengths or dimensions do not match the layer spec.
    #[error("layer {layer}: shape mismatch: {msg}")]
    Shape { layer: String, msg: String },
    /// NaN or ±Inf found in inputs, covariances, eigenvalues or Λ.
    #[error("layer {layer}: non-finite value in {what}")]
    NonFinite { layer: String, what: String },
    /// Numerical routine failure (eigendecomposition, SVD).
    #[error("layer {layer}: {msg}")]
    Numerical { layer: String, msg: String },
    /// Wrong use of the API (pass order, empty layer list, bad option).
    #[error("{0}")]
    Usage(String),
    /// A write through `tda-io`; its message already names the file.
    #[error("{0}")]
    Write(std::io::Error),
    /// I/O failure on a factor file.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Corrupt, truncated or incompatible factor file.
    #[error("{path}: invalid factor file: {msg}")]
    Format { path: PathBuf, msg: String },
    /// The factor file was fitted on another model.
    #[error("{path}: model fingerprint mismatch: file has {found:?}, expected {expected:?}")]
    Fingerprint {
        path: PathBuf,
        expected: String,
        found: String,
    },
}

/// Result alias.
pub type Result<T> = std::result::Result<T, CurvatureError>;

pub(crate) fn shape_err(layer: &str, msg: impl Into<String>) -> CurvatureError {
    CurvatureError::Shape {
        layer: layer.to_string(),
        msg: msg.into(),
    }
}

pub(crate) fn non_finite(layer: &str, what: impl Into<String>) -> CurvatureError {
    CurvatureError::NonFinite {
        layer: layer.to_string(),
        what: what.into(),
    }
}
