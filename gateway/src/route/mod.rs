//! From a request path to an API: the one path canonicaliser every route
//! decision uses, and the longest-prefix router over the APIs' contexts.

pub mod canonical;
pub mod router;
