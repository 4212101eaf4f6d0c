//! Prometheus metrics. Per-API handles are created when a snapshot is built,
//! so the request path only increments atomics (no map lookups, no locks).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub api: String,
    pub class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabels {
    pub api: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub api: String,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ThrottleLabels {
    pub policy: String,
    /// `rejected` (429) or `flagged` (stopOnQuotaReach false).
    pub action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// Latency buckets in seconds.
const BUCKETS: [f64; 14] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// A histogram whose observations are lock-free atomic increments.
#[derive(Debug, Default)]
pub struct AtomicHistogram {
    buckets: [AtomicU64; 14],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl AtomicHistogram {
    pub fn observe(&self, secs: f64) {
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add((secs * 1e6) as u64, Ordering::Relaxed);
    }
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let mut cumulative = 0;
        let mut buckets: Vec<(f64, u64)> = BUCKETS
            .iter()
            .zip(&self.buckets)
            .map(|(b, c)| {
                cumulative += c.load(Ordering::Relaxed);
                (*b, cumulative)
            })
            .collect();
        let count = self.count.load(Ordering::Relaxed);
        buckets.push((f64::MAX, count));
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }
    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Shared histogram handle.
#[derive(Clone, Debug, Default)]
pub struct Histogram(pub Arc<AtomicHistogram>);

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }
    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Every metric of the gateway.
pub struct Metrics {
    pub registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub latency: Family<ApiLabels, Histogram>,
    pub upstream_errors: Family<UpstreamLabels, Counter>,
    pub throttled: Family<ThrottleLabels, Counter>,
    pub reloads: Family<ResultLabels, Counter>,
    pub reload_duration: Histogram,
    pub snapshot_revision: Gauge,
    pub apis: Gauge,
    pub policies: Gauge,
    pub config_errors: Gauge,
    pub requests_per_second: Gauge<f64, AtomicU64>,
    pub in_flight: Gauge,
    pub total_requests: Counter,
    pub degraded: Family<ResultLabels, Gauge>,
    pub traffic_leases: Counter,
    pub traffic_errors: Counter,
    pub traffic_fallback: Family<ResultLabels, Counter>,
    /// Requests refused with 400 for their path, by reason.
    pub refused_paths: Family<ResultLabels, Counter>,
    /// New throttle keys refused because a counter table was full of keys
    /// at their limit.
    pub throttle_keys_refused: Counter,
    /// API-key lookups that reached the database (cache misses).
    pub store_key_lookups: Counter,
    /// Traffic connections closed because a request head did not arrive
    /// within --header-timeout-seconds.
    pub request_head_timeouts: Counter,
    /// JWK Set fetches of remote KeyManagers, by result (ok, error).
    pub jwks_fetches: Family<ResultLabels, Counter>,
    /// OAuth2 access tokens refused, by reason (expired, bad_signature, ...).
    pub token_rejections: Family<ResultLabels, Counter>,
    /// Client certificates from --client-cert-header refused, by reason.
    pub forwarded_cert_rejections: Family<ResultLabels, Counter>,
    /// Token requests of the built-in key manager, by result (issued, or
    /// the RFC 6749 error: invalid_client, invalid_scope, ...).
    pub tokens_issued: Family<ResultLabels, Counter>,
    /// Analytics events dropped because the recorder's queue was full.
    pub analytics_dropped: Counter,
}

/// Status classes in label order: 1xx..5xx, other.
pub const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];

/// Handles of one API's metrics.
pub struct ApiMetrics {
    pub by_class: [Counter; 6],
    pub latency: Histogram,
    pub connect_errors: Counter,
    pub timeouts: Counter,
    pub other_upstream_errors: Counter,
}

impl ApiMetrics {
    pub fn record(&self, status: u16, secs: f64) {
        let i = match status {
            100..=199 => 0,
            200..=299 => 1,
            300..=399 => 2,
            400..=499 => 3,
            500..=599 => 4,
            _ => 5,
        };
        self.by_class[i].inc();
        self.latency.0.observe(secs);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("tollgate");
        let m = Metrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(Histogram::default),
            upstream_errors: Family::default(),
            throttled: Family::default(),
            reloads: Family::default(),
            reload_duration: Histogram::default(),
            snapshot_revision: Gauge::default(),
            apis: Gauge::default(),
            policies: Gauge::default(),
            config_errors: Gauge::default(),
            requests_per_second: Gauge::default(),
            in_flight: Gauge::default(),
            total_requests: Counter::default(),
            degraded: Family::default(),
            traffic_leases: Counter::default(),
            traffic_errors: Counter::default(),
            traffic_fallback: Family::default(),
            refused_paths: Family::default(),
            throttle_keys_refused: Counter::default(),
            request_head_timeouts: Counter::default(),
            jwks_fetches: Family::default(),
            token_rejections: Family::default(),
            forwarded_cert_rejections: Family::default(),
            tokens_issued: Family::default(),
            analytics_dropped: Counter::default(),
            store_key_lookups: Counter::default(),
            registry: Registry::default(),
        };
        registry.register("requests", "API requests by API and status class", m.requests.clone());
        registry.register("request_duration_seconds", "API request latency by API", m.latency.clone());
        registry.register(
            "upstream_errors",
            "Backend failures by API and kind (connect, timeout, other)",
            m.upstream_errors.clone(),
        );
        registry.register(
            "throttled_requests",
            "Requests over a ThrottlePolicy limit by policy and action",
            m.throttled.clone(),
        );
        registry.register(
            "config_reloads",
            "Configuration reloads by result (applied, unchanged, failed)",
            m.reloads.clone(),
        );
        registry.register(
            "config_reload_duration_seconds",
            "Time to read, parse and compile the configuration folder (unchanged files are not parsed again)",
            m.reload_duration.clone(),
        );
        registry.register(
            "snapshot_generation",
            "Number of the routing snapshot in service (increments on change)",
            m.snapshot_revision.clone(),
        );
        registry.register("apis", "APIs in the routing snapshot", m.apis.clone());
        registry.register("policies", "ThrottlePolicies in the routing snapshot", m.policies.clone());
        registry.register(
            "config_errors",
            "Artifacts or manifests currently rejected (see /status)",
            m.config_errors.clone(),
        );
        registry.register(
            "requests_per_second",
            "API requests per second over the last seconds (for autoscaling)",
            m.requests_per_second.clone(),
        );
        registry.register("requests_in_flight", "API requests being served", m.in_flight.clone());
        registry.register("requests_all", "API requests served, all APIs", m.total_requests.clone());
        registry.register("degraded", "1 while a dependency is unreachable, by dependency", m.degraded.clone());
        registry.register(
            "traffic_manager_leases",
            "Quota leases taken from Redis (cluster-wide throttling round trips)",
            m.traffic_leases.clone(),
        );
        registry.register("traffic_manager_errors", "Failed or timed-out Redis calls", m.traffic_errors.clone());
        registry.register(
            "traffic_manager_fallback",
            "Throttle checks decided without Redis while degraded, by failure mode (open, closed)",
            m.traffic_fallback.clone(),
        );
        registry.register(
            "refused_paths",
            "Requests refused with 400 because of their path, by reason (dot_segment, encoded_separator, ...)",
            m.refused_paths.clone(),
        );
        registry.register(
            "throttle_keys_refused",
            "New throttle keys refused (treated as over the limit) because a counter table was full of keys at their limit",
            m.throttle_keys_refused.clone(),
        );
        registry.register(
            "store_key_lookups",
            "API-key checks that reached the database (the key cache missed)",
            m.store_key_lookups.clone(),
        );
        registry.register(
            "request_head_timeouts",
            "Traffic connections closed because a request head did not arrive within --header-timeout-seconds",
            m.request_head_timeouts.clone(),
        );
        registry.register("jwks_fetches", "JWK Set fetches of remote KeyManagers, by result", m.jwks_fetches.clone());
        registry.register(
            "oauth_token_rejections",
            "OAuth2 access tokens refused, by reason (malformed, expired, bad_signature, unknown_key, wrong_issuer, ...)",
            m.token_rejections.clone(),
        );
        registry.register(
            "forwarded_client_cert_rejections",
            "Client certificates forwarded in --client-cert-header that were refused, by reason",
            m.forwarded_cert_rejections.clone(),
        );
        registry.register(
            "oauth_token_requests",
            "Token requests of the built-in key manager, by result (issued, invalid_client, invalid_scope, ...)",
            m.tokens_issued.clone(),
        );
        registry.register(
            "analytics_events_dropped",
            "Analytics events dropped because the recorder's queue was full (requests are never held up)",
            m.analytics_dropped.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Handles for one API (label `namespace/name`).
    pub fn api(&self, api: &str) -> ApiMetrics {
        let by_class =
            CLASSES.map(|class| self.requests.get_or_create_owned(&RequestLabels { api: api.into(), class }));
        let up = |kind| self.upstream_errors.get_or_create_owned(&UpstreamLabels { api: api.into(), kind });
        ApiMetrics {
            by_class,
            latency: self.latency.get_or_create_owned(&ApiLabels { api: api.into() }),
            connect_errors: up("connect"),
            timeouts: up("timeout"),
            other_upstream_errors: up("other"),
        }
    }

    /// Handle counting throttled requests of a policy.
    pub fn throttled(&self, policy: &str, action: &'static str) -> Counter {
        self.throttled.get_or_create_owned(&ThrottleLabels { policy: policy.into(), action })
    }

    /// Text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("encoding to a String cannot fail");
        out
    }
}
