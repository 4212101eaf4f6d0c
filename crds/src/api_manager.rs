//! `ApiManager`: one Tollgate installation in one of the deployment patterns.

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::api_deployment::ConfigMapKeyRef;
use crate::common::{Condition, Quantity, SecretKeyRef, conditions_schema, quantity_schema};

/// An API-manager deployment: store, key manager, gateways and analytics run
/// in one of the classic deployment patterns, reconciled by tollgate-operator.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "tollgate.dev",
    version = "v1alpha1",
    kind = "ApiManager",
    plural = "apimanagers",
    shortname = "apim",
    category = "tollgate",
    namespaced,
    derive = "PartialEq",
    doc = "An API-manager deployment in one of the deployment patterns (AllInOne, HighAvailability, DistributedGateways), reconciled by tollgate-operator.",
    status = "ApiManagerStatus",
    printcolumn = r#"{"name":"Pattern","type":"string","jsonPath":".spec.pattern"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.pattern != 'AllInOne' || !has(self.controlPlane) || !has(self.controlPlane.replicas) || self.controlPlane.replicas == 1",
        "message": "pattern AllInOne runs exactly one control-plane replica (controlPlane.replicas must be 1)",
        "fieldPath": ".controlPlane.replicas",
        "reason": "FieldValueInvalid"
    },
    {
        "rule": "self.pattern != 'AllInOne' || !has(self.controlPlane) || !has(self.controlPlane.autoscaling)",
        "message": "pattern AllInOne cannot autoscale (remove controlPlane.autoscaling or use HighAvailability)",
        "fieldPath": ".controlPlane.autoscaling",
        "reason": "FieldValueForbidden"
    },
    {
        "rule": "self.pattern == 'DistributedGateways' || !has(self.gateways) || size(self.gateways) == 0",
        "message": "gateways may only be set with pattern DistributedGateways",
        "fieldPath": ".gateways",
        "reason": "FieldValueForbidden"
    },
    {
        "rule": "self.pattern != 'DistributedGateways' || (has(self.gateways) && size(self.gateways) >= 1)",
        "message": "pattern DistributedGateways needs at least one entry in gateways",
        "fieldPath": ".gateways",
        "reason": "FieldValueRequired"
    },
    {
        "rule": "self.pattern != 'HighAvailability' || !has(self.controlPlane) || !has(self.controlPlane.replicas) || self.controlPlane.replicas >= 2",
        "message": "pattern HighAvailability runs at least 2 control-plane replicas",
        "fieldPath": ".controlPlane.replicas",
        "reason": "FieldValueInvalid"
    },
    {
        "rule": "self.pattern == 'AllInOne' || (has(self.database) && has(self.database.external))",
        "message": "patterns HighAvailability and DistributedGateways need an external PostgreSQL database (database.external.urlSecretRef)",
        "fieldPath": ".database",
        "reason": "FieldValueRequired"
    },
    {
        "rule": "self.pattern == 'AllInOne' || (has(self.trafficManager) && has(self.trafficManager.redis)) || (self.pattern == 'DistributedGateways' && has(self.gateways) && size(self.gateways) == 1 && self.gateways.all(g, (!has(g.replicas) || g.replicas <= 1) && (!has(g.autoscaling) || g.autoscaling.maxReplicas <= 1)))",
        "message": "more than one pod serves traffic, so cluster-wide throttling needs trafficManager.redis.urlSecretRef",
        "fieldPath": ".trafficManager",
        "reason": "FieldValueRequired"
    }
]))]
pub struct ApiManagerSpec {
    /// Deployment pattern: AllInOne (single node, embedded database),
    /// HighAvailability (several identical all-in-one pods, external PostgreSQL
    /// and Redis) or DistributedGateways (a control plane plus separately
    /// scaled gateway groups).
    pub pattern: Pattern,

    /// Container image for the Tollgate pods; defaults to the operator's own
    /// gateway image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageSpec>,

    /// Which namespaces may deploy APIs (ApiDeployments) onto this manager.
    #[serde(default)]
    pub allowed_namespaces: AllowedNamespaces,

    /// The control-plane pods: every role for AllInOne and HighAvailability;
    /// store, key manager and analytics for DistributedGateways.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_plane: Option<ControlPlaneSpec>,

    /// Gateway groups, each its own StatefulSet with its own scaling
    /// (DistributedGateways only). APIs choose groups through their spec.gateways.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]), length(max = 32))]
    pub gateways: Vec<GatewayGroup>,

    /// Ports and TLS of the pods.
    #[serde(default)]
    pub listeners: Listeners,

    /// Per-pod persistent volumes.
    #[serde(default)]
    pub persistence: Persistence,

    /// The API-manager database. AllInOne uses an embedded SQLite database on
    /// the pod's database volume; the other patterns need an external PostgreSQL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<DatabaseSpec>,

    /// Cluster-wide throttle counters shared by every gateway pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_manager: Option<TrafficManagerSpec>,

    /// Analytics (business intelligence) role on the control-plane pods.
    #[serde(default)]
    pub analytics: AnalyticsSpec,

    /// Secret key holding the bearer token of the management API (/api/v1:
    /// applications, keys, subscriptions) on port 9763/9443; at least 16
    /// characters. Without it /api/v1 answers 401.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token_secret_ref: Option<SecretKeyRef>,

    /// The built-in key manager (OAuth2 token endpoint, JWKS, dynamic client
    /// registration at /oauth2/* on the management listeners) of the pods
    /// with the key-manager role: every pod for AllInOne and
    /// HighAvailability, the control plane for DistributedGateways. Its
    /// gateway pods trust it through the control plane's JWKS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_manager: Option<BuiltInKeyManager>,
}

/// Deployment pattern of an ApiManager.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Pattern {
    /// Pattern 1: one pod with every role and an embedded SQLite database.
    AllInOne,
    /// Pattern 1-HA / 2-HA: two or more identical pods with every role,
    /// external PostgreSQL and cluster-wide throttling through Redis.
    HighAvailability,
    /// Pattern 3: a control plane (store, key manager, analytics) plus one
    /// separately scaled gateway StatefulSet per spec.gateways entry.
    DistributedGateways,
}

/// Container image of the Tollgate pods.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageSpec {
    /// Image repository, for example ghcr.io/tollgate-dev/tollgate-gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// Image tag; defaults to the operator's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Kubernetes image pull policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_policy: Option<PullPolicy>,
}

/// Kubernetes image pull policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PullPolicy {
    /// Always pull.
    Always,
    /// Pull only when the image is not present on the node.
    IfNotPresent,
    /// Never pull.
    Never,
}

/// Which namespaces may deploy APIs onto an ApiManager.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self.from != 'Selector' || has(self.selector)",
    "message": "allowedNamespaces.selector is required when from is Selector",
    "fieldPath": ".selector",
    "reason": "FieldValueRequired"
}]))]
pub struct AllowedNamespaces {
    /// Same: only the ApiManager's namespace; All: every namespace;
    /// Selector: namespaces matching selector.
    #[serde(default)]
    pub from: NamespacesFrom,
    /// Label selector on namespaces (with from: Selector).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

/// Where ApiDeployments may come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum NamespacesFrom {
    /// Only the ApiManager's own namespace.
    #[default]
    Same,
    /// Any namespace.
    All,
    /// Namespaces whose labels match allowedNamespaces.selector.
    Selector,
}

/// Horizontal autoscaling of a StatefulSet through a HorizontalPodAutoscaler.
/// When set, the operator leaves `replicas` to the autoscaler.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self.minReplicas <= self.maxReplicas",
    "message": "autoscaling.minReplicas must not be greater than autoscaling.maxReplicas",
    "fieldPath": ".minReplicas",
    "reason": "FieldValueInvalid"
}]))]
pub struct AutoscalingSpec {
    /// Fewest replicas the autoscaler keeps.
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 1, max = 1000))]
    pub min_replicas: i32,
    /// Most replicas the autoscaler may create.
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// Average CPU utilisation (percent of requests) the autoscaler aims for.
    #[serde(default = "default_cpu_target", rename = "targetCPUUtilizationPercentage")]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization_percentage: i32,
    /// Optional second target: average gateway requests per second per pod
    /// (the `tollgate_requests_per_second` pod metric, served through a
    /// custom-metrics adapter such as Prometheus Adapter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub target_requests_per_second: Option<i32>,
}

fn default_min_replicas() -> i32 {
    1
}

fn default_cpu_target() -> i32 {
    70
}

/// The control-plane StatefulSet.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ControlPlaneSpec {
    /// Number of pods (AllInOne: 1; HighAvailability: 2 or more, default 2;
    /// DistributedGateways: default 2). Ignored when autoscaling is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub replicas: Option<i32>,
    /// CPU and memory requests and limits of each pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Autoscale the control plane (not for AllInOne).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,
}

/// One separately scaled group of gateway pods (DistributedGateways).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayGroup {
    /// Group name, unique in this ApiManager (a DNS label, for example
    /// production or sandbox). ApiDeployments target it by this name.
    #[schemars(length(min = 1, max = 40), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    /// Number of gateway pods (ignored when autoscaling is set). Default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: Option<i32>,
    /// Autoscale this group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,
    /// CPU and memory requests and limits of each gateway pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Whose credentials the group's gateways accept: Production (default)
    /// or Sandbox API keys and tokens, or Both. Credentials of another
    /// environment get 403 wrong_environment and never reach a backend.
    #[serde(default)]
    pub environment: GroupEnvironment,
}

/// The credentials a gateway group accepts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum GroupEnvironment {
    #[default]
    Production,
    Sandbox,
    Both,
}

/// Listener ports and TLS of the Tollgate pods.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Listeners {
    /// API traffic over HTTP.
    #[serde(default = "default_http")]
    #[schemars(range(min = 1, max = 65535))]
    pub http: i32,
    /// API traffic over HTTPS (needs tlsSecretName).
    #[serde(default = "default_https")]
    #[schemars(range(min = 1, max = 65535))]
    pub https: i32,
    /// Management API (health, metrics, store, key manager) over HTTP.
    #[serde(default = "default_management")]
    #[schemars(range(min = 1, max = 65535))]
    pub management: i32,
    /// Management API over HTTPS (needs tlsSecretName).
    #[serde(default = "default_management_tls")]
    #[schemars(range(min = 1, max = 65535))]
    pub management_tls: i32,
    /// Secret of type kubernetes.io/tls with the server certificate and key;
    /// enables the HTTPS listeners.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_secret_name: Option<String>,
    /// Secret with a `ca.crt` used to verify client certificates (mutual TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca_secret_name: Option<String>,
    /// Whether HTTPS clients are asked for a certificate signed by the client
    /// CA (with clientCaSecretName). Default Optional: verified when
    /// presented, which APIs with security.mtls.required need.
    #[serde(default)]
    pub client_auth: ClientAuth,
}

impl Default for Listeners {
    fn default() -> Self {
        Listeners {
            http: default_http(),
            https: default_https(),
            management: default_management(),
            management_tls: default_management_tls(),
            tls_secret_name: None,
            client_ca_secret_name: None,
            client_auth: ClientAuth::Optional,
        }
    }
}

fn default_http() -> i32 {
    8280
}
fn default_https() -> i32 {
    8243
}
fn default_management() -> i32 {
    9763
}
fn default_management_tls() -> i32 {
    9443
}

/// Client-certificate policy of the HTTPS listeners.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ClientAuth {
    /// No client certificates are requested.
    None,
    /// Client certificates are verified when presented.
    #[default]
    Optional,
    /// Every HTTPS client must present a valid certificate.
    Required,
}

/// Per-pod persistent volumes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Persistence {
    /// The `search-index` volume (the API search index).
    #[serde(default)]
    pub search_index: VolumeSpec,
    /// The `database` volume (the embedded SQLite database).
    #[serde(default)]
    pub database: VolumeSpec,
    /// For storage that applies no fsGroup (hostPath, local volumes, many
    /// NFS provisioners), which leaves the volumes root-owned: an init
    /// container gives the search-index and database volumes to the
    /// gateway's user 65532 before it starts. It runs as root with the
    /// single capability CHOWN, so a namespace enforcing the "restricted"
    /// Pod Security level refuses it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fix_permissions: bool,
}

/// Size and class of a per-pod PersistentVolumeClaim.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSpec {
    /// Requested size, for example 1Gi.
    #[serde(default = "default_volume_size")]
    #[schemars(schema_with = "quantity_schema")]
    pub size: Quantity,
    /// StorageClass of the claim; the cluster default when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

impl Default for VolumeSpec {
    fn default() -> Self {
        VolumeSpec { size: default_volume_size(), storage_class_name: None }
    }
}

fn default_volume_size() -> Quantity {
    Quantity("1Gi".into())
}

/// The API-manager database.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseSpec {
    /// External PostgreSQL; required unless the pattern is AllInOne.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalDatabase>,
}

/// An external PostgreSQL database.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalDatabase {
    /// Secret key holding the postgres:// connection URL. The URL is passed to
    /// the pods as an environment reference and never copied elsewhere.
    pub url_secret_ref: SecretKeyRef,
}

/// Cluster-wide throttling.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrafficManagerSpec {
    /// Redis holding the shared counters; required when more than one pod
    /// serves traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisSpec>,
    /// What gateways do while Redis is unreachable: Open admits and counts
    /// locally, Closed answers 503.
    #[serde(default)]
    pub failure_mode: FailureMode,
}

/// Connection to Redis.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RedisSpec {
    /// Secret key holding the redis:// (or rediss://, redis+sentinel://)
    /// URL, passed to the pods as an environment reference.
    pub url_secret_ref: SecretKeyRef,
}

/// Behaviour while the traffic manager (Redis) is unreachable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum FailureMode {
    /// Admit traffic and count in each pod until Redis is back.
    #[default]
    Open,
    /// Reject throttled traffic with 503 until Redis is back.
    Closed,
}

/// Analytics role.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalyticsSpec {
    /// Run the analytics role (the /api/v1/analytics queries) on the
    /// control-plane pods. Every gateway records usage regardless.
    #[serde(default)]
    pub enabled: bool,
    /// How long usage rollups are kept, in days; every pod gets the same
    /// settings (any of them may expire rows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<AnalyticsRetention>,
    /// An OpenTelemetry collector (OTLP/HTTP URL) that every pod sends one
    /// log record per request to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self.startsWith('https://') || self.startsWith('http://')",
        "message": "otlpEndpoint must be an http(s) URL"
    }]))]
    pub otlp_endpoint: Option<String>,
}

/// Days the per-minute, hourly and daily usage rollups are kept.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalyticsRetention {
    /// Per-minute rows (default 7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 366))]
    pub minute_days: Option<i32>,
    /// Hourly rows (default 90).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3660))]
    pub hour_days: Option<i32>,
    /// Daily rows (default 730).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 36600))]
    pub day_days: Option<i32>,
}

/// The built-in key manager of an ApiManager.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(self.signingKeys) || has(self.signingKeySecretName)",
    "message": "keyManager.signingKeys names keys of keyManager.signingKeySecretName, which is not set",
    "fieldPath": ".signingKeySecretName",
    "reason": "FieldValueRequired"
}]))]
pub struct BuiltInKeyManager {
    /// The issuer identifier (`iss` of the tokens it signs); its endpoints
    /// are <issuer>/token, <issuer>/jwks, <issuer>/register. Set it to the
    /// address clients reach the key manager at (for example through an
    /// Ingress). Default: the in-cluster Service of the key-manager pods,
    /// https://<service>.<namespace>.svc:<managementTls>/oauth2 with
    /// listeners.tlsSecretName, else
    /// http://<service>.<namespace>.svc:<management>/oauth2. An https URL
    /// (http only on loopback or a cluster-local .svc name), without query,
    /// fragment or trailing slash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048), extend("x-kubernetes-validations" = [
        {
            "rule": "isURL(self) && (url(self).getScheme() == 'https' || (url(self).getScheme() == 'http' && (url(self).getHostname() in ['127.0.0.1', 'localhost', '::1'] || url(self).getHostname().endsWith('.svc') || url(self).getHostname().endsWith('.svc.cluster.local'))))",
            "message": "keyManager.issuer must be an absolute https URL (http only on loopback or a cluster-local .svc name)"
        },
        {
            "rule": "!self.contains('?') && !self.contains('#') && !self.endsWith('/')",
            "message": "keyManager.issuer must not have a query, a fragment or a trailing slash"
        }
    ]))]
    pub issuer: Option<String>,

    /// Secret (same namespace) holding the PEM private keys the key manager
    /// signs with (EC P-256 in PKCS#8 for ES256, or RSA for PS256), for
    /// example made with `openssl genpkey -algorithm EC -pkeyopt
    /// ec_paramgen_curve:P-256 -out signing-key.pem` and `kubectl create
    /// secret generic tollgate-signing-key --from-file=signing-key.pem`. The
    /// operator never creates it; it mounts the keys listed in signingKeys
    /// read-only into the key-manager pods. Required for the same tokens to
    /// verify on every pod when more than one pod runs the key manager
    /// (HighAvailability, a scaled DistributedGateways control plane);
    /// without it each pod generates its own key, kept for the pod's
    /// lifetime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub signing_key_secret_name: Option<String>,

    /// Keys of signingKeySecretName to use, in order: the first signs new
    /// tokens, every one is published in the JWKS (to rotate, put the new key
    /// first and keep the previous one listed until its tokens have
    /// expired). Default [signing-key.pem].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        extend("x-kubernetes-list-type" = "set"),
        length(min = 1, max = 8),
        inner(length(min = 1, max = 253), regex(pattern = r"^[-_a-zA-Z0-9][-._a-zA-Z0-9]*$"))
    )]
    pub signing_keys: Vec<String>,

    /// ConfigMap key (same namespace) holding a JWK Set of the public keys
    /// trusted to sign software statements for dynamic client registration
    /// (for example the Open Banking directory's); without it /oauth2/register
    /// refuses software statements.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssa_jwks_config_map_ref: Option<ConfigMapKeyRef>,

    /// Lifetime of the access tokens it issues, in seconds (60 to 86400);
    /// default 3600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 60, max = 86400))]
    pub token_ttl_seconds: Option<i32>,

    /// DistributedGateways: also mount the signing keys on the gateway
    /// groups that serve an API with openBanking.jws.signResponses (only
    /// those groups hold the private key), which then sign its answers. Off
    /// by default: without it such APIs are not served by gateway groups.
    #[serde(default)]
    pub gateways_sign_responses: bool,
}

/// The key of signingKeySecretName used when signingKeys is empty.
pub const DEFAULT_SIGNING_KEY: &str = "signing-key.pem";

impl BuiltInKeyManager {
    /// The keys of the signing-key Secret in use, first the one that signs.
    pub fn signing_keys(&self) -> Vec<String> {
        if self.signing_keys.is_empty() { vec![DEFAULT_SIGNING_KEY.to_string()] } else { self.signing_keys.clone() }
    }
}

/// Observed state of an ApiManager.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiManagerStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Progressing and Degraded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// One entry per StatefulSet the operator runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub components: Vec<ComponentStatus>,
    /// In-cluster addresses of the listeners.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Endpoints>,
}

/// State of one StatefulSet of an ApiManager.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComponentStatus {
    /// Component name: control-plane, or gateway-<group>.
    pub name: String,
    /// Name of the StatefulSet.
    pub stateful_set: String,
    /// Desired replicas.
    pub replicas: i32,
    /// Replicas that are ready.
    pub ready_replicas: i32,
}

/// In-cluster URLs of an ApiManager's listeners.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Endpoints {
    /// API traffic over HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// API traffic over HTTPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https: Option<String>,
    /// Management API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub management: Option<String>,
    /// Issuer of the built-in key manager (keyManager.issuer or its
    /// default); tokens at <issuer>/token, keys at <issuer>/jwks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
}

#[cfg(test)]
mod tests {
    use crate::loader::load_str;
    use crate::resource::Resource;

    fn load(key_manager: &str) -> Result<super::BuiltInKeyManager, Vec<String>> {
        let text = format!(
            "apiVersion: tollgate.dev/v1alpha1\nkind: ApiManager\nmetadata: {{name: apim, namespace: bank}}\n\
             spec: {{pattern: AllInOne, keyManager: {key_manager}}}\n"
        );
        let (loaded, errors) = load_str(std::path::Path::new("apim.yaml"), &text);
        if !errors.is_empty() {
            return Err(errors.iter().map(|e| e.to_string()).collect());
        }
        let Resource::ApiManager(m) = &loaded[0].resource else { panic!("an ApiManager") };
        Ok(m.spec.key_manager.clone().expect("keyManager"))
    }

    #[test]
    fn key_manager_issuers_are_https_or_cluster_local_http() {
        for ok in [
            "https://api.bank.example/oauth2",
            "https://api.bank.example:8443",
            "http://apim.bank.svc:9763/oauth2",
            "http://apim.bank.svc.cluster.local:9763/oauth2",
            // (http://localhost too at the apiserver; kube-cel 0.8 reads its
            // scheme as empty, as for the KeyManager's jwksUri.)
            "http://127.0.0.1:9763/oauth2",
        ] {
            let km = load(&format!("{{issuer: '{ok}'}}")).unwrap_or_else(|e| panic!("{ok}: {e:?}"));
            assert_eq!(km.issuer.as_deref(), Some(ok));
        }
        for bad in [
            "http://api.bank.example/oauth2",
            "http://svc.example/oauth2",
            "ftp://api.bank.example/oauth2",
            "api.bank.example/oauth2",
            "https://api.bank.example/oauth2/",
            "https://api.bank.example/oauth2?x=1",
            "https://api.bank.example/oauth2#k",
        ] {
            let errors = load(&format!("{{issuer: '{bad}'}}")).expect_err(bad);
            assert!(errors.iter().any(|e| e.contains("keyManager.issuer")), "{bad}: {errors:?}");
        }
    }

    #[test]
    fn signing_keys_belong_to_the_signing_key_secret() {
        let km = load("{signingKeySecretName: apim-signing}").unwrap();
        assert!(km.signing_keys.is_empty(), "the default is not written into the object");
        assert_eq!(km.signing_keys(), [super::DEFAULT_SIGNING_KEY]);
        let km = load("{signingKeySecretName: apim-signing, signingKeys: [next.pem, current.pem]}").unwrap();
        assert_eq!(km.signing_keys(), ["next.pem", "current.pem"]);
        assert!(load("{signingKeys: [next.pem]}").is_err(), "keys without their Secret");
        assert!(load("{signingKeySecretName: apim-signing, signingKeys: ['../etc/passwd']}").is_err());
        assert!(load("{signingKeySecretName: apim-signing, signingKeys: []}").is_err());
        assert!(load("{signingKeySecretName: Not_A_Name}").is_err());
        assert!(load("{tokenTtlSeconds: 30}").is_err() && load("{tokenTtlSeconds: 600}").is_ok());
        let km = load("{ssaJwksConfigMapRef: {name: ob-directory, key: jwks.json}}").unwrap();
        assert_eq!(km.ssa_jwks_config_map_ref.unwrap().name, "ob-directory");
    }
}
