//! The long-lived services the request path and reloads use: throttle
//! counters, backend health, metrics, the store, the traffic manager, the
//! DNS cache, and the OAuth2 key sets and token cache. Built once by the
//! server; snapshots reference none of it, so a reload swaps routing without
//! touching a service.

use std::sync::Arc;

use crate::metrics::Metrics;
use crate::throttle::Registry;
use crate::upstream::HealthRegistry;

/// Long-lived state that snapshots share across reloads.
pub struct Shared {
    pub counters: Registry,
    pub health: HealthRegistry,
    pub metrics: Arc<Metrics>,
    pub max_keys: usize,
    /// Applications, keys and subscriptions (None only in unit tests).
    pub store: Option<Arc<crate::store::Store>>,
    /// Cluster-wide throttling (None without --redis-url).
    pub traffic: Option<Arc<crate::traffic::TrafficManager>>,
    /// Backend host names and their addresses.
    pub dns: Arc<crate::dns::DnsCache>,
    /// This process's gateway group; APIs targeting other groups are skipped.
    pub gateway_group: Option<String>,
    /// Environments whose credentials are accepted (others: 403).
    pub environments: Vec<crate::store::keys::Environment>,
    /// Remote JWK Sets of the KeyManagers.
    pub jwks: Arc<crate::oauth::jwks::JwksCache>,
    /// Verified access tokens.
    pub tokens: Arc<crate::oauth::Verifier>,
    /// The built-in key manager as a trusted issuer (its keys in this
    /// process, or fetched from --key-manager-jwks-uri); trusted by every API.
    pub builtin: Option<Arc<crate::oauth::Issuer>>,
    /// The analytics queries are served (role analytics).
    pub analytics_api: bool,
    /// The developer portal is served (role store), with these settings.
    pub portal: Option<crate::portal::Settings>,
    /// Analytics events of this process (None only in unit tests).
    pub analytics: Option<Arc<crate::analytics::Recorder>>,
    /// OAuth2 clients' public keys (request signatures).
    pub client_keys: Arc<crate::oauth::client_keys::ClientKeys>,
    /// The built-in key manager's keys and settings: with the key-manager
    /// role it serves the /oauth2 endpoints; without it (given
    /// --signing-key-file) it only signs answers.
    pub key_manager_endpoints: bool,
    /// The built-in key manager itself (role key-manager), or its signing keys.
    pub key_manager: Option<Arc<crate::key_manager::KeyManager>>,
}
