//! Prometheus metrics of the operator (prometheus-client, text format).

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub controller: &'static str,
    pub reason: &'static str,
}

pub struct Metrics {
    pub registry: Registry,
    pub reconciles: Family<ControllerLabels, Counter>,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Family<ControllerLabels, Histogram>,
    pub in_flight: Family<ControllerLabels, Gauge>,
    pub artifacts_written: Counter,
    pub artifacts_removed: Counter,
    pub leader: Gauge<i64, std::sync::atomic::AtomicI64>,
    pub status_writes: Family<ControllerLabels, Counter<u64, AtomicU64>>,
    pub queue_depth: Family<ControllerLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tollgate_operator");
        let reconciles = Family::<ControllerLabels, Counter>::default();
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        let reconcile_duration = Family::<ControllerLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
        });
        let in_flight = Family::<ControllerLabels, Gauge>::default();
        let artifacts_written = Counter::default();
        let artifacts_removed = Counter::default();
        let leader = Gauge::default();
        let status_writes = Family::default();
        let queue_depth = Family::<ControllerLabels, Gauge>::default();
        registry.register("reconciles", "Reconciliations run", reconciles.clone());
        registry.register("reconcile_errors", "Reconciliations that failed, by reason", reconcile_errors.clone());
        registry.register("reconcile_duration_seconds", "Time spent per reconciliation", reconcile_duration.clone());
        registry.register(
            "reconciles_in_flight",
            "Reconciliations running now (the part of the work queue being worked on)",
            in_flight.clone(),
        );
        registry.register("artifacts_written", "Artifact files written", artifacts_written.clone());
        registry.register("artifacts_removed", "Artifact files removed", artifacts_removed.clone());
        registry.register("leader", "1 while this replica holds the leader Lease", leader.clone());
        registry.register("status_writes", "Status updates sent to the API server", status_writes.clone());
        registry.register(
            "queue_depth",
            "Objects queued for a reconcile that has not started yet, per controller",
            queue_depth.clone(),
        );
        Metrics {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            in_flight,
            artifacts_written,
            artifacts_removed,
            leader,
            status_writes,
            queue_depth,
        }
    }
}

impl Metrics {
    /// Start timing one reconciliation; the guard records on drop.
    pub fn start(&self, controller: &'static str) -> ReconcileTimer<'_> {
        let labels = ControllerLabels { controller };
        self.reconciles.get_or_create(&labels).inc();
        self.in_flight.get_or_create(&labels).inc();
        ReconcileTimer { metrics: self, labels, start: std::time::Instant::now() }
    }

    pub fn error(&self, controller: &'static str, reason: &'static str) {
        self.reconcile_errors.get_or_create(&ErrorLabels { controller, reason }).inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    labels: ControllerLabels,
    start: std::time::Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics.reconcile_duration.get_or_create(&self.labels).observe(self.start.elapsed().as_secs_f64());
        self.metrics.in_flight.get_or_create(&self.labels).dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timer_counts_and_observes() {
        let m = Metrics::default();
        {
            let _t = m.start("apideployment");
            assert!(m.encode().contains("tollgate_operator_reconciles_in_flight{controller=\"apideployment\"} 1"));
        }
        m.error("apideployment", "api_error");
        let text = m.encode();
        assert!(text.contains("tollgate_operator_reconciles_in_flight{controller=\"apideployment\"} 0"));
        assert!(text.contains("tollgate_operator_reconciles_total{controller=\"apideployment\"} 1"));
        assert!(text.contains("tollgate_operator_reconcile_duration_seconds_count{controller=\"apideployment\"} 1"));
        assert!(
            text.contains(
                "tollgate_operator_reconcile_errors_total{controller=\"apideployment\",reason=\"api_error\"} 1"
            )
        );
    }
}
