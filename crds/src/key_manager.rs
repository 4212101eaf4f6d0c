//! `KeyManager`: a trusted OAuth2 token issuer (Keycloak, WSO2 IS, Auth0, a
//! bank's own authorisation server). Gateways accept JWT access tokens it
//! signed for the APIs that name it.

use kube::CustomResource;
use schemars::JsonSchema;
use schemars::{Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};

use crate::api_deployment::ApiManagerRef;
use crate::common::{Condition, conditions_schema};

/// A trusted OAuth2 token issuer: where its signing keys are, which `iss`,
/// `aud` and algorithms its tokens carry, and which claims name the client
/// and its scopes.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "tollgate.dev",
    version = "v1alpha1",
    kind = "KeyManager",
    plural = "keymanagers",
    shortname = "km",
    category = "tollgate",
    namespaced,
    derive = "PartialEq",
    doc = "A trusted OAuth2 token issuer whose JWT access tokens gateways accept.",
    status = "KeyManagerStatus",
    printcolumn = r#"{"name":"Issuer","type":"string","jsonPath":".spec.issuer"}"#,
    printcolumn = r#"{"name":"Manager","type":"string","jsonPath":".spec.apiManagerRef.name"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.jwksUri) != has(self.jwks)",
    "message": "exactly one of jwksUri and jwks is required"
}]))]
pub struct KeyManagerSpec {
    /// The ApiManager whose gateways trust this issuer.
    pub api_manager_ref: ApiManagerRef,

    /// The issuer identifier; a token's `iss` must equal it exactly.
    #[schemars(length(min = 1, max = 2048), extend("x-kubernetes-validations" = [{
        "rule": "isURL(self) && (url(self).getScheme() == 'https' || url(self).getScheme() == 'http')",
        "message": "issuer must be an absolute http(s) URL"
    }]))]
    pub issuer: String,

    /// Where the issuer publishes its signing keys (a JWK Set document):
    /// https (plain http only on loopback: anyone on the path could
    /// otherwise hand the gateway signing keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048), extend("x-kubernetes-validations" = [{
        "rule": "isURL(self) && (url(self).getScheme() == 'https' || (url(self).getScheme() == 'http' && url(self).getHostname() in ['127.0.0.1', 'localhost', '::1']))",
        "message": "jwksUri must be an absolute https URL (http only on loopback)"
    }]))]
    pub jwks_uri: Option<String>,

    /// The issuer's public signing keys inline, as a JWK Set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<InlineJwks>,

    /// When set, a token's `aud` must hold one of these (in addition to the
    /// API's own `security.oauth2.audience`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 2048)))]
    pub audiences: Vec<String>,

    /// Signature algorithms accepted from this issuer (asymmetric only;
    /// `none` and HMAC are never accepted). Default PS256 and ES256.
    #[serde(default = "default_algorithms")]
    #[schemars(length(min = 1, max = 9))]
    pub algorithms: Vec<Algorithm>,

    /// Which claims hold the client id and the granted scopes.
    #[serde(default)]
    pub claims: ClaimNames,
}

fn default_algorithms() -> Vec<Algorithm> {
    vec![Algorithm::PS256, Algorithm::ES256]
}

/// Asymmetric JWS algorithms (RFC 7518, RFC 8037).
#[allow(clippy::upper_case_acronyms)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Algorithm {
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    RS256,
    RS384,
    RS512,
    EdDSA,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::PS256 => "PS256",
            Algorithm::PS384 => "PS384",
            Algorithm::PS512 => "PS512",
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
            Algorithm::RS256 => "RS256",
            Algorithm::RS384 => "RS384",
            Algorithm::RS512 => "RS512",
            Algorithm::EdDSA => "EdDSA",
        }
    }
}

/// A JWK Set given inline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InlineJwks {
    /// Public keys (JWK, RFC 7517). Private and symmetric keys are refused.
    #[schemars(length(min = 1, max = 32), extend("x-kubernetes-validations" = [
        {"rule": "self.all(k, has(k.kty) && k.kty in ['RSA', 'EC', 'OKP'])",
         "message": "every key needs kty RSA, EC or OKP (symmetric keys are never trusted)"},
        {"rule": "self.all(k, !has(k.d) && !has(k.p) && !has(k.q))",
         "message": "keys must be public: a private key (d, p, q) does not belong in a KeyManager"}
    ]))]
    pub keys: Vec<Jwk>,
}

/// One JSON Web Key, kept as given.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Jwk(pub serde_json::Map<String, serde_json::Value>);

impl JsonSchema for Jwk {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Jwk".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        schemars::json_schema!({
            "type": "object",
            "description": "A JSON Web Key (RFC 7517): kty, kid, use, alg and the key's public parameters.",
            "properties": {
                "kty": {"type": "string", "maxLength": 16, "description": "Key type: RSA, EC or OKP."},
                "d": {"type": "string", "maxLength": 4096, "description": "A private key parameter; refused (keys must be public)."},
                "p": {"type": "string", "maxLength": 4096, "description": "A private RSA parameter; refused."},
                "q": {"type": "string", "maxLength": 4096, "description": "A private RSA parameter; refused."}
            },
            "x-kubernetes-preserve-unknown-fields": true
        })
    }
}

/// Claim names an issuer uses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimNames {
    /// The claim naming the OAuth2 client (default `client_id`, RFC 9068;
    /// `azp` for some issuers).
    #[serde(default = "default_consumer_key")]
    #[schemars(length(min = 1, max = 256))]
    pub consumer_key: String,
    /// The claim holding the granted scopes: a space-separated string or an
    /// array (default `scope`; `scp` for some issuers).
    #[serde(default = "default_scopes_claim")]
    #[schemars(length(min = 1, max = 256))]
    pub scopes: String,
}

impl Default for ClaimNames {
    fn default() -> Self {
        ClaimNames { consumer_key: default_consumer_key(), scopes: default_scopes_claim() }
    }
}

fn default_consumer_key() -> String {
    "client_id".into()
}

fn default_scopes_claim() -> String {
    "scope".into()
}

/// Observed state of a KeyManager.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyManagerStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Accepted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}

#[cfg(test)]
mod tests {
    use crate::loader::load_str;
    use crate::resource::Resource;

    #[test]
    fn a_minimal_key_manager_gets_the_documented_defaults() {
        let (loaded, errors) = load_str(
            std::path::Path::new("km.yaml"),
            "apiVersion: tollgate.dev/v1alpha1\nkind: KeyManager\nmetadata: {name: idp, namespace: bank}\n\
             spec: {apiManagerRef: {name: apim}, issuer: 'https://idp.bank.example/oauth2', jwksUri: 'https://idp.bank.example/jwks'}\n",
        );
        assert!(errors.is_empty(), "{errors:?}");
        let Resource::KeyManager(km) = &loaded[0].resource else { panic!("a KeyManager") };
        assert_eq!(km.spec.algorithms, [super::Algorithm::PS256, super::Algorithm::ES256]);
        assert_eq!((km.spec.claims.consumer_key.as_str(), km.spec.claims.scopes.as_str()), ("client_id", "scope"));
        assert!(km.spec.audiences.is_empty() && km.spec.jwks.is_none());
    }
}
