//! `ThrottlePolicy`: a throttling tier (rate limit, burst, bandwidth).

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Condition, Period, Quantity, conditions_schema, quantity_schema};

/// A throttling tier: how many requests (and bytes) a key may make per
/// period. Attached to an API (spec.throttling), an operation, or a
/// subscription.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "tollgate.dev",
    version = "v1alpha1",
    kind = "ThrottlePolicy",
    plural = "throttlepolicies",
    shortname = "tp",
    category = "tollgate",
    namespaced,
    derive = "PartialEq",
    doc = "A throttling tier: requests (and bytes) allowed per period, attached to APIs, operations and subscriptions.",
    status = "ThrottlePolicyStatus",
    printcolumn = r#"{"name":"Limit","type":"integer","jsonPath":".spec.limit.requests"}"#,
    printcolumn = r#"{"name":"Per","type":"string","jsonPath":".spec.limit.per"}"#,
    printcolumn = r#"{"name":"KeyBy","type":"string","jsonPath":".spec.keyBy"}"#,
    printcolumn = r#"{"name":"Scope","type":"string","jsonPath":".spec.scope"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "(self.keyBy != 'Header' && self.keyBy != 'Claim') || (has(self.keyName) && size(self.keyName) > 0)",
    "message": "keyName is required when keyBy is Header or Claim",
    "fieldPath": ".keyName",
    "reason": "FieldValueRequired"
}]))]
pub struct ThrottlePolicySpec {
    /// What this tier is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,

    /// Requests allowed per period for each key.
    pub limit: RateLimit,

    /// Spike arrest: at most this many requests per (short) period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<RateLimit>,

    /// Response bytes allowed per period for each key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<BandwidthLimit>,

    /// Whose requests share one counter: Api (everyone), Consumer (each
    /// subscribed application), ClientIp, Header (value of header keyName) or
    /// Claim (value of JWT claim keyName).
    #[serde(default)]
    pub key_by: KeyBy,

    /// Header or claim name for keyBy Header / Claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub key_name: Option<String>,

    /// Cluster: counted across all gateway pods (through the traffic
    /// manager); Replica: counted in each pod.
    #[serde(default)]
    pub scope: Scope,

    /// true: requests over the limit get 429. false: they pass, flagged with a
    /// response header and counted in metrics.
    #[serde(default = "default_true")]
    pub stop_on_quota_reach: bool,

    /// Alternative limits for matching requests; the first match wins, else
    /// the default limit applies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub conditions: Vec<ConditionalLimit>,
}

fn default_true() -> bool {
    true
}

/// A number of requests per period.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Requests allowed per period (at least 1).
    #[schemars(range(min = 1, max = 1_000_000_000_000i64))]
    pub requests: i64,
    /// Counting period, from 1s to 30d (for example 1s, 1m, 1h, 1d, 30d).
    pub per: Period,
}

/// A number of bytes per period.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BandwidthLimit {
    /// Bytes allowed per period, as a quantity (for example 10Mi).
    #[schemars(schema_with = "quantity_schema")]
    pub bytes: Quantity,
    /// Counting period, from 1s to 30d.
    pub per: Period,
}

/// Whose requests share one counter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum KeyBy {
    /// One counter for the whole API or operation.
    #[default]
    Api,
    /// One counter per subscribed application.
    Consumer,
    /// One counter per client IP address.
    ClientIp,
    /// One counter per value of the request header keyName.
    Header,
    /// One counter per value of the JWT claim keyName.
    Claim,
}

/// Where a counter is kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Scope {
    /// Shared by every gateway pod of the ApiManager (Redis).
    #[default]
    Cluster,
    /// Kept in each gateway pod.
    Replica,
}

/// A limit that applies to requests matching a condition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConditionalLimit {
    /// Which requests this limit applies to (all given criteria must match).
    #[serde(rename = "match")]
    pub match_: RequestMatch,
    /// Limit for matching requests.
    pub limit: RateLimit,
}

/// Request criteria; every listed criterion must match.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "(has(self.ipRanges) && size(self.ipRanges) > 0) || (has(self.headers) && size(self.headers) > 0) || (has(self.claims) && size(self.claims) > 0)",
    "message": "a condition needs at least one of ipRanges, headers or claims"
}]))]
pub struct RequestMatch {
    /// Client address ranges in CIDR notation (for example 203.0.113.0/24).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self.all(r, isCIDR(r))",
        "message": "ipRanges entries must be CIDR ranges such as 203.0.113.0/24 or 2001:db8::/32"
    }]), length(max = 64), inner(length(max = 64)))]
    pub ip_ranges: Vec<String>,
    /// Request headers that must have the given value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub headers: Vec<NameValue>,
    /// JWT claims that must have the given value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub claims: Vec<NameValue>,
}

/// A name and the value it must have.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NameValue {
    /// Header or claim name.
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    /// Required value (exact match).
    #[schemars(length(max = 1024))]
    pub value: String,
}

/// Observed state of a ThrottlePolicy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ThrottlePolicyStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Accepted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}
