//! A KeyManager compiled for the request path: what its tokens must say and
//! where its keys are.

use std::sync::Arc;

use jsonwebtoken::Algorithm;
use sha2::Digest;
use tollgate_crds::KeyManager;
use tollgate_crds::key_manager::Algorithm as SpecAlgorithm;

use super::jwks::{JwksCache, RemoteKeys};
use super::keys::KeySet;

/// Where an issuer's keys come from.
pub enum Keys {
    Inline(Arc<KeySet>),
    Remote(Arc<RemoteKeys>),
}

/// A trusted token issuer.
pub struct Issuer {
    /// `namespace/name` of the KeyManager.
    pub id: String,
    pub namespace: String,
    pub name: String,
    /// `namespace/name` of the ApiManager it is bound to.
    pub manager: String,
    /// The exact `iss` its tokens carry.
    pub issuer: String,
    /// When not empty, a token's `aud` must hold one of these.
    pub audiences: Vec<String>,
    pub algorithms: Vec<Algorithm>,
    pub consumer_claim: String,
    pub scopes_claim: String,
    pub keys: Keys,
    /// What its access tokens' `typ` must say: `at+jwt` for the built-in
    /// key manager; external issuers may also send `JWT` or none.
    pub token_kind: super::jwt::Kind,
    /// SHA-256 of the KeyManager's spec: a verified token is reused only
    /// while the issuer is configured as it was when the token was checked.
    pub fingerprint: [u8; 32],
}

fn algorithm(a: SpecAlgorithm) -> Algorithm {
    match a {
        SpecAlgorithm::PS256 => Algorithm::PS256,
        SpecAlgorithm::PS384 => Algorithm::PS384,
        SpecAlgorithm::PS512 => Algorithm::PS512,
        SpecAlgorithm::ES256 => Algorithm::ES256,
        SpecAlgorithm::ES384 => Algorithm::ES384,
        SpecAlgorithm::RS256 => Algorithm::RS256,
        SpecAlgorithm::RS384 => Algorithm::RS384,
        SpecAlgorithm::RS512 => Algorithm::RS512,
        SpecAlgorithm::EdDSA => Algorithm::EdDSA,
    }
}

impl Issuer {
    /// Compiles a KeyManager; remote keys come from (and are fetched by) `jwks`.
    pub fn compile(km: &KeyManager, jwks: &JwksCache) -> Result<Issuer, String> {
        let s = &km.spec;
        let namespace = km.metadata.namespace.clone().unwrap_or_default();
        let name = km.metadata.name.clone().unwrap_or_default();
        let keys = match (&s.jwks_uri, &s.jwks) {
            (Some(uri), None) => {
                if !super::jwks::allowed_uri(uri) {
                    return Err(format!("jwksUri {uri:?} must be an https URL (http only on loopback)"));
                }
                Keys::Remote(jwks.source(uri))
            }
            (None, Some(inline)) => {
                let doc = serde_json::to_vec(inline).map_err(|e| e.to_string())?;
                Keys::Inline(Arc::new(KeySet::parse(&doc).map_err(|e| format!("jwks: {e}"))?))
            }
            _ => return Err("exactly one of jwksUri and jwks is required".into()),
        };
        let mut algorithms: Vec<Algorithm> = s.algorithms.iter().copied().map(algorithm).collect();
        algorithms.dedup();
        if algorithms.is_empty() {
            return Err("algorithms must name at least one algorithm".into());
        }
        let manager_ns = s.api_manager_ref.namespace.clone().unwrap_or_else(|| namespace.clone());
        let fingerprint = sha2::Sha256::digest(serde_json::to_vec(s).map_err(|e| e.to_string())?).into();
        Ok(Issuer {
            fingerprint,
            id: format!("{namespace}/{name}"),
            manager: format!("{manager_ns}/{}", s.api_manager_ref.name),
            namespace,
            name,
            issuer: s.issuer.clone(),
            audiences: s.audiences.clone(),
            algorithms,
            consumer_claim: s.claims.consumer_key.clone(),
            scopes_claim: s.claims.scopes.clone(),
            keys,
            token_kind: super::jwt::Kind::ExternalAccessToken,
        })
    }

    /// The keys held now.
    pub fn current_keys(&self) -> Option<Arc<KeySet>> {
        match &self.keys {
            Keys::Inline(k) => Some(k.clone()),
            Keys::Remote(r) => r.current(),
        }
    }
}
