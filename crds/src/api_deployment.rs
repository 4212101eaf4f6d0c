//! `ApiDeployment`: one version of one API, served by an ApiManager's gateways.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Condition, Period, Timeout, conditions_schema};

/// One version of one API, published on an ApiManager's gateways at
/// `<context>/<version>` (and at `<context>` when it is the default version).
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "tollgate.dev",
    version = "v1alpha1",
    kind = "ApiDeployment",
    plural = "apideployments",
    shortname = "apid",
    category = "tollgate",
    namespaced,
    derive = "PartialEq",
    doc = "One version of one API, served by the gateways of an ApiManager.",
    status = "ApiDeploymentStatus",
    printcolumn = r#"{"name":"Context","type":"string","jsonPath":".spec.context"}"#,
    printcolumn = r#"{"name":"Version","type":"string","jsonPath":".spec.version"}"#,
    printcolumn = r#"{"name":"Lifecycle","type":"string","jsonPath":".spec.lifecycle"}"#,
    printcolumn = r#"{"name":"Deployed","type":"string","jsonPath":".status.conditions[?(@.type==\"Deployed\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ApiDeploymentSpec {
    /// The ApiManager whose gateways serve this API.
    pub api_manager_ref: ApiManagerRef,

    /// Gateway groups (DistributedGateways) that serve this API; every group
    /// when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "set"), length(max = 32))]
    pub gateways: Vec<String>,

    /// Human-readable name shown in the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub display_name: Option<String>,

    /// What the API does (searchable in the store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub description: Option<String>,

    /// Free-form tags (searchable in the store).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub tags: Vec<String>,

    /// Base path of the API, for example /open-banking/aisp. Starts with "/",
    /// has no empty, "." or ".." segments and no trailing slash.
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self.matches('^(/[A-Za-z0-9._~!$&\\'()*+,;=:@%-]+)+$') && !self.matches('/\\\\.\\\\.?(/|$)')",
        "message": "context must start with \"/\" and consist of non-empty path segments (no empty, \".\" or \"..\" segments, no trailing slash)"
    }]), length(min = 2, max = 256))]
    pub context: String,

    /// Version of the API, one path segment (for example v3.1). Served at
    /// <context>/<version>. When two ApiDeployments on one ApiManager claim
    /// the same context and version, the older one (creationTimestamp) keeps
    /// it; on an equal creationTimestamp (one-second resolution) the one
    /// already serving it keeps it; only when neither serves yet does
    /// namespace/name order decide. The other gets Accepted=False, reason
    /// Conflict, and takes over when the owner goes.
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self.matches('^[A-Za-z0-9_~-][A-Za-z0-9._~-]*$') && self != '.' && self != '..'",
        "message": "version must be a single path segment of letters, digits, '.', '_', '~' or '-' (for example v3.1)"
    }]), length(min = 1, max = 64))]
    pub version: String,

    /// Also serve this version at <context> without the version segment.
    #[serde(default)]
    pub is_default_version: bool,

    /// Lifecycle state: Created (not served), Published, Deprecated (served
    /// with a Deprecation header), Blocked (503), Retired (removed).
    #[serde(default)]
    pub lifecycle: Lifecycle,

    /// Where requests are forwarded.
    pub backend: Backend,

    /// Authentication required from callers; an open API when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security: Option<Security>,

    /// API-level throttling policy (applies to every operation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttling: Option<ThrottlingRef>,

    /// Operations the API exposes; everything under the context when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["method", "path"]), length(max = 1000))]
    pub operations: Vec<Operation>,

    /// OpenAPI 3 definition, shown by the portal; operations are derived
    /// from it when none are listed above. It must resolve (the ConfigMap
    /// and key exist, the document is OpenAPI 3) for the API to deploy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition: Option<Definition>,

    /// Cross-origin resource sharing, answered by the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<Cors>,

    /// Open-banking request checks (UK Open Banking, FAPI, PSD2); omitted = off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_banking: Option<OpenBanking>,
}

/// Reference to an ApiManager.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiManagerRef {
    /// Name of the ApiManager.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace of the ApiManager; this object's namespace when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub namespace: Option<String>,
}

/// Lifecycle state of an API.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Lifecycle {
    /// Created but not served (404).
    Created,
    /// Served.
    #[default]
    Published,
    /// Served with a Deprecation response header.
    Deprecated,
    /// Known but refused with 503.
    Blocked,
    /// Removed from the gateways.
    Retired,
}

impl Lifecycle {
    /// Whether an artifact exists for this state (everything but Retired).
    pub fn has_artifact(self) -> bool {
        !matches!(self, Lifecycle::Retired)
    }
}

/// Backend endpoints and forwarding behaviour.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Backend {
    /// Production endpoints, chosen by weighted round robin.
    #[schemars(length(min = 1, max = 64))]
    pub endpoints: Vec<Endpoint>,
    /// Endpoints used for sandbox credentials.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub sandbox_endpoints: Vec<Endpoint>,
    /// Time allowed for the backend to answer (for example 30s, 500ms); 504
    /// after it.
    #[serde(default = "default_timeout")]
    pub timeout: Timeout,
    /// Extra attempts on another endpoint after a connection failure or
    /// timeout; idempotent methods only.
    #[serde(default = "default_retries")]
    #[schemars(range(min = 0, max = 5))]
    pub retries: i32,
}

fn default_timeout() -> Timeout {
    Timeout("30s".into())
}

fn default_retries() -> i32 {
    1
}

/// One backend endpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// Absolute http or https URL; its path is prepended to the forwarded path.
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self.matches('^https?://[^/?#\\\\s]+(/[^?#\\\\s]*)?$')",
        "message": "backend URL must be an absolute http:// or https:// URL without query or fragment"
    }]), length(min = 8, max = 2048))]
    pub url: String,
    /// Relative share of traffic (0 takes none).
    #[serde(default = "default_weight")]
    #[schemars(range(min = 0, max = 1000))]
    pub weight: i32,
}

fn default_weight() -> i32 {
    1
}

/// Caller authentication; every listed scheme is accepted.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Security {
    /// API keys issued by the store, in a header or a query parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<ApiKeySecurity>,
    /// OAuth2 JWT access tokens issued by the key manager.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth2: Option<OAuth2Security>,
    /// Mutual TLS: certificate-bound tokens (RFC 8705).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<MtlsSecurity>,
}

/// Where callers put their API key. Header `apikey` when neither is set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!(has(self.header) && has(self.query))",
    "message": "apiKey takes either header or query, not both"
}]))]
pub struct ApiKeySecurity {
    /// Request header carrying the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub header: Option<String>,
    /// Query parameter carrying the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub query: Option<String>,
}

/// OAuth2 access tokens (JWT) from trusted key managers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OAuth2Security {
    /// KeyManagers (by name, in this namespace, then in the ApiManager's)
    /// whose tokens this API accepts; every KeyManager of the ApiManager
    /// when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 253)))]
    pub key_managers: Vec<String>,
    /// Required audience: a token's `aud` must hold it (on top of the
    /// KeyManager's own audiences); not checked when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub audience: Option<String>,
    /// Forward the client's Authorization header to the backend (it is
    /// removed by default; the backend gets the verified identity in
    /// X-Tollgate-* headers either way).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forward_token: bool,
}

/// Mutual TLS requirement.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MtlsSecurity {
    /// Reject callers that present no valid client certificate, and require
    /// OAuth2 tokens to be bound to it.
    #[serde(default)]
    pub required: bool,
}

/// Reference to a ThrottlePolicy by name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ThrottlingRef {
    /// ThrottlePolicy name, looked up in this namespace, then in the
    /// ApiManager's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub policy: String,
}

/// One operation (method and path template) of an API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    /// HTTP method.
    pub method: Method,
    /// Path template under <context>/<version>, for example
    /// /accounts/{accountId}; {name} matches one segment.
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self == '/' || self.matches('^(/([A-Za-z0-9._~!$&\\'()*+,;=:@%-]+|\\\\{[A-Za-z_][A-Za-z0-9_]*\\\\}))+$')",
        "message": "operation path must start with \"/\"; segments are literal text or {name} parameters"
    }]), length(min = 1, max = 1024))]
    pub path: String,
    /// OAuth2 scopes a token needs for this operation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub scopes: Vec<String>,
    /// Operation-level throttling policy (in addition to the API-level one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttling: Option<ThrottlingRef>,
}

/// HTTP methods an operation may declare.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[allow(clippy::upper_case_acronyms)]
pub enum Method {
    GET,
    POST,
    PUT,
    PATCH,
    DELETE,
    HEAD,
    OPTIONS,
}

impl Method {
    /// The method name as sent on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::GET => "GET",
            Method::POST => "POST",
            Method::PUT => "PUT",
            Method::PATCH => "PATCH",
            Method::DELETE => "DELETE",
            Method::HEAD => "HEAD",
            Method::OPTIONS => "OPTIONS",
        }
    }
}

/// An OpenAPI 3 definition: a ConfigMap key holding it, or the document
/// itself. The portal shows it (descriptions, schemas, examples) with the
/// gateway's server and security; operations are derived from it when the
/// API lists none. The operator copies a ConfigMap's document into the
/// artifact, so gateways never read ConfigMaps.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.configMapRef) != has(self.document)",
    "message": "definition takes exactly one of configMapRef or document"
}]))]
pub struct Definition {
    /// ConfigMap key holding the OpenAPI 3 document (JSON or YAML).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_ref: Option<ConfigMapKeyRef>,
    /// The OpenAPI 3 document (JSON or YAML), at most 1 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1048576))]
    pub document: Option<String>,
}

impl Definition {
    /// `text` (JSON or YAML) read as an OpenAPI 3 document, or why it is not
    /// one. The operator derives operations from it, the portal shows it.
    pub fn parse_document(text: &str) -> Result<serde_json::Value, String> {
        let doc: serde_json::Value = serde_saphyr::from_str(text).map_err(|e| format!("not JSON or YAML: {e}"))?;
        if doc.get("openapi").and_then(serde_json::Value::as_str).is_none_or(|v| !v.starts_with('3')) {
            return Err("not an OpenAPI 3 document (no `openapi: 3.x` field)".into());
        }
        Ok(doc)
    }
}

/// A key of a ConfigMap in the same namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapKeyRef {
    /// ConfigMap name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the ConfigMap.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// Cross-origin resource sharing. The gateway answers preflights itself and
/// its CORS headers replace any the backend sends.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!(has(self.allowCredentials) && self.allowCredentials && has(self.allowOrigins) && self.allowOrigins.exists(o, o == '*'))",
    "message": "allowCredentials: true needs explicit allowOrigins; \"*\" would let any web site call the API with the user's credentials"
}]))]
pub struct Cors {
    /// Allowed origins (exact, or "*" for any; "*" is refused together with
    /// allowCredentials).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub allow_origins: Vec<String>,
    /// Allowed methods; the operations' methods when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub allow_methods: Vec<String>,
    /// Allowed request headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub allow_headers: Vec<String>,
    /// Response headers exposed to the browser.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub expose_headers: Vec<String>,
    /// Allow credentials (cookies, authorization headers).
    #[serde(default)]
    pub allow_credentials: bool,
    /// Seconds a browser may cache a preflight answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 86400))]
    pub max_age: Option<i32>,
}

/// Open-banking request checks, run by the gateway for this API.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OpenBanking {
    /// `x-fapi-interaction-id`: echoed when the request carries one (a
    /// UUID, else 400), generated otherwise; on every response of the API
    /// including the gateway's own errors, and forwarded to the backend.
    #[serde(default)]
    pub interaction_id: bool,
    /// PSD2 roles the client certificate's QCStatement (ETSI TS 119 495)
    /// must hold one of; empty = not checked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4))]
    pub tpp_roles: Vec<TppRole>,
    /// POST, PUT and PATCH need `x-idempotency-key`; a repeat within `ttl`
    /// gets the first answer without reaching the backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency: Option<Idempotency>,
    /// Detached JWS signatures (`x-jws-signature`) over bodies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jws: Option<Jws>,
}

/// A PSD2 role of a payment service provider (ETSI TS 119 495).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum TppRole {
    /// Account information (PSP_AI).
    AISP,
    /// Payment initiation (PSP_PI).
    PISP,
    /// Card-based payment instrument issuing (PSP_IC).
    CBPII,
    /// Account servicing (PSP_AS).
    ASPSP,
}

/// Payment idempotency.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Idempotency {
    /// How long a key and its answer are kept (1s to 30d; default 24h).
    #[serde(default = "default_idempotency_ttl")]
    pub ttl: Period,
}

fn default_idempotency_ttl() -> Period {
    Period("24h".into())
}

/// Detached JWS signatures (RFC 7515 appendix F) in `x-jws-signature`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Jws {
    /// Request bodies must carry a signature by a key of the calling client.
    #[serde(default)]
    pub verify_requests: bool,
    /// Response bodies are signed with the key manager's signing key.
    #[serde(default)]
    pub sign_responses: bool,
}

/// Observed state of an ApiDeployment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiDeploymentStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Accepted, ResolvedRefs and Deployed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// Path the API is served at, for example /open-banking/aisp/v3.1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The artifact the gateways serve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<ArtifactStatus>,
}

/// Artifact written for an ApiDeployment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactStatus {
    /// Content hash of the artifact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
}
