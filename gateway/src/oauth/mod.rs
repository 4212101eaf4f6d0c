//! OAuth2 resource-server side: trusted issuers (KeyManagers), their keys,
//! and JWT access-token verification.

pub mod client_keys;
pub mod issuer;
pub mod jwks;
pub mod jwt;
pub mod keys;
pub mod verify;

pub use issuer::Issuer;
pub use verify::{TokenError, VerifiedToken, Verifier};
