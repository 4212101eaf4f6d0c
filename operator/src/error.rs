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
    /// Another writer changed the object first (or our cache was stale);
    /// retried at once.
    #[error("conflict with a concurrent change: {0}")]
    Conflict(String),
    #[error("object has no {0}")]
    MissingField(&'static str),
    /// Waiting for another controller (an artifact still in the folder
    /// while its object is being deleted); retried shortly.
    #[error("waiting: {0}")]
    Pending(String),
    /// An artifact cannot be removed (the folder refuses writes); retried
    /// with backoff, reported in the object's status.
    #[error("blocked: {0}")]
    Blocked(String),
    /// This replica does not hold a fresh Lease: it writes nothing.
    #[error("not the leader (or the Lease was not renewed within the renew deadline)")]
    NotLeader,
}

impl Error {
    /// Conflicts resolve themselves on the next attempt with a fresh object.
    pub fn is_conflict(&self) -> bool {
        self.metric_label() == "conflict"
    }

    /// Waiting for another controller's work; retried shortly.
    pub fn is_pending(&self) -> bool {
        matches!(self, Error::Pending(_))
    }

    /// The object the reconcile was about is gone (deleted between the
    /// cache read and our write): nothing left to do.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Kube(kube::Error::Api(e)) if e.code == 404)
    }

    /// Label used for the `reason` of the error metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(e)) if e.code == 409 => "conflict",
            Error::Conflict(_) => "conflict",
            Error::Kube(kube::Error::Api(_)) => "api_error",
            Error::Kube(_) => "kube_client",
            Error::Artifact { .. } => "artifact_write",
            Error::Serialize { .. } => "serialize",
            Error::Finalizer(_) => "finalizer",
            Error::MissingField(_) => "missing_field",
            Error::Pending(_) => "pending",
            Error::NotLeader => "not_leader",
            Error::Blocked(_) => "artifact_blocked",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16) -> Error {
        Error::Kube(kube::Error::Api(Box::new(kube::core::Status::failure("x", "Reason").with_code(code))))
    }

    #[test]
    fn conflicts_are_told_apart_from_real_failures() {
        assert!(api_error(409).is_conflict());
        assert!(Error::Conflict("stale".into()).is_conflict());
        assert_eq!(api_error(403).metric_label(), "api_error");
        assert!(!api_error(403).is_conflict());
        assert_eq!(Error::MissingField("metadata.name").metric_label(), "missing_field");
        assert!(api_error(404).is_not_found() && !api_error(409).is_not_found() && !api_error(403).is_not_found());
    }
}
