//! Condition types and reasons used in the `status.conditions` of every
//! resource, kept in one place so operator, gateway and tests agree.

/// ApiManager: every component is ready.
pub const READY: &str = "Ready";
/// ApiManager: a rollout or scale is under way.
pub const PROGRESSING: &str = "Progressing";
/// ApiManager: something is wrong that needs attention.
pub const DEGRADED: &str = "Degraded";
/// ApiDeployment / ThrottlePolicy: the spec was accepted.
pub const ACCEPTED: &str = "Accepted";
/// ApiDeployment: every reference (ApiManager, policies, definition) resolved.
pub const RESOLVED_REFS: &str = "ResolvedRefs";
/// ApiDeployment: the artifact is written and served by the gateways.
pub const DEPLOYED: &str = "Deployed";

/// Reasons carried by conditions. One constant per reason so the strings are
/// stable and greppable.
pub mod reasons {
    pub const ACCEPTED: &str = "Accepted";
    pub const INVALID: &str = "Invalid";
    pub const CONFLICT: &str = "Conflict";
    pub const NOT_ALLOWED: &str = "NotAllowed";
    pub const API_MANAGER_NOT_FOUND: &str = "ApiManagerNotFound";
    pub const POLICY_NOT_FOUND: &str = "PolicyNotFound";
    pub const KEY_MANAGER_NOT_FOUND: &str = "KeyManagerNotFound";
    pub const GATEWAY_NOT_FOUND: &str = "GatewayNotFound";
    pub const DEFINITION_NOT_FOUND: &str = "DefinitionNotFound";
    pub const INVALID_DEFINITION: &str = "InvalidDefinition";
    pub const RESOLVED: &str = "Resolved";
    pub const DEPLOYED: &str = "Deployed";
    pub const NOT_SERVED: &str = "NotServed";
    pub const RETIRED: &str = "Retired";
    pub const ARTIFACT_WRITE_FAILED: &str = "ArtifactWriteFailed";
    pub const ALL_READY: &str = "AllComponentsReady";
    pub const COMPONENTS_NOT_READY: &str = "ComponentsNotReady";
    pub const ROLLING_OUT: &str = "RollingOut";
    pub const STABLE: &str = "Stable";
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    pub const CONFIG_MAP_NOT_FOUND: &str = "ConfigMapNotFound";
    /// ApiManager: more than one pod runs the built-in key manager and no
    /// shared signing key is set, so each signs with its own key.
    pub const SIGNING_KEY_SECRET_REQUIRED: &str = "SigningKeySecretRequired";
    pub const APPLY_FAILED: &str = "ApplyFailed";
    /// The artifact claim (`--artifact-claim`) is missing in the
    /// ApiManager's namespace, is not ReadWriteMany, or is not Bound: the
    /// gateway pods cannot start.
    pub const ARTIFACT_CLAIM_NOT_FOUND: &str = "ArtifactClaimNotFound";
    pub const ARTIFACT_CLAIM_NOT_READ_WRITE_MANY: &str = "ArtifactClaimNotReadWriteMany";
    pub const ARTIFACT_CLAIM_NOT_BOUND: &str = "ArtifactClaimNotBound";
    /// ApiManager: pods of its StatefulSets cannot run (crash loop, image
    /// pull, container creation, scheduling); the message names each.
    pub const PODS_FAILING: &str = "PodsFailing";
    /// ApiManager: Ready pods report an outside service they depend on (the
    /// external database, Redis) unreachable; the message names each pod,
    /// the service and its error.
    pub const DEPENDENCY_UNREACHABLE: &str = "DependencyUnreachable";
    pub const AS_EXPECTED: &str = "AsExpected";
}
