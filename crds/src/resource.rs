//! A typed Tollgate resource as read from a manifest or artifact.

use std::fmt;
use std::sync::Arc;

use kube::ResourceExt;

use crate::{ApiDeployment, ApiManager, KeyManager, ThrottlePolicy};

/// Any of the Tollgate resources. Shared, not copied: a reload hands the
/// same parsed objects from the file cache to the snapshot it builds.
#[derive(Clone, Debug, PartialEq)]
pub enum Resource {
    ApiManager(Arc<ApiManager>),
    ApiDeployment(Arc<ApiDeployment>),
    ThrottlePolicy(Arc<ThrottlePolicy>),
    KeyManager(Arc<KeyManager>),
}

impl Resource {
    /// Kind, namespace and name of the resource.
    pub fn object_ref(&self) -> ObjectRef {
        let (kind, ns, name) = match self {
            Resource::ApiManager(r) => ("ApiManager", r.namespace(), r.name_any()),
            Resource::ApiDeployment(r) => ("ApiDeployment", r.namespace(), r.name_any()),
            Resource::ThrottlePolicy(r) => ("ThrottlePolicy", r.namespace(), r.name_any()),
            Resource::KeyManager(r) => ("KeyManager", r.namespace(), r.name_any()),
        };
        ObjectRef { kind: kind.to_string(), namespace: ns.unwrap_or_default(), name }
    }

    /// Whether both are the very same parsed object (not merely equal).
    pub fn is_same(&self, other: &Resource) -> bool {
        match (self, other) {
            (Resource::ApiManager(a), Resource::ApiManager(b)) => Arc::ptr_eq(a, b),
            (Resource::ApiDeployment(a), Resource::ApiDeployment(b)) => Arc::ptr_eq(a, b),
            (Resource::ThrottlePolicy(a), Resource::ThrottlePolicy(b)) => Arc::ptr_eq(a, b),
            (Resource::KeyManager(a), Resource::KeyManager(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

/// Identity of an object: kind, namespace (empty when none was given) and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}
