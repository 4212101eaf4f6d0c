//! The operator's error type; every variant has a short metric label.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("writing artifact {path}: {source}")]
    Artifact {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("serializing {what}: {reason}")]
    Serialize { what: String, reason: String },
    #[error("finalizer: {0}")]
    Finalizer(String),
    #[error("object has no {0}")]
    MissingField(&'static str),
}

impl Error {
    /// Label used for the `reason` of the error metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(_)) => "api_error",
            Error::Kube(_) => "kube_client",
            Error::Artifact { .. } => "artifact_write",
            Error::Serialize { .. } => "serialize",
            Error::Finalizer(_) => "finalizer",
            Error::MissingField(_) => "missing_field",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
