//! Analytics: one event per request, recorded off the request path.
//!
//! The proxy's logging phase hands an [`Event`] to the [`Recorder`]: a
//! bounded channel; when it is full the event is dropped and counted
//! (`tollgate_analytics_events_dropped_total`), never blocking a request.
//! An aggregator thread keeps per-minute rollups per (API, operation,
//! application, environment, status class) with log-scale latency
//! histograms and writes them to the store database every flush interval
//! (10 s by default): one row per gateway process per minute and key, so
//! gateways never contend and queries sum their rows.

pub mod histogram;
pub mod otlp;
pub mod rollup;

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;

use crate::store::Store;
use rollup::Aggregator;

/// Events waiting for the aggregator.
const QUEUE: usize = 65_536;

/// What one request did.
#[derive(Clone, Debug)]
pub struct Event {
    /// When it ended, Unix milliseconds.
    pub at_ms: i64,
    /// `namespace/name`.
    pub api: Arc<str>,
    /// `METHOD /path/template` of the declared operation, if any.
    pub operation: Option<Arc<str>>,
    /// The caller's application (None without authentication).
    pub application: Option<String>,
    /// production or sandbox (None without authentication).
    pub environment: Option<&'static str>,
    /// The OAuth2 client and the interaction id: filled only when records
    /// are exported (--otlp-endpoint); the rollups do not keep them.
    pub client_id: Option<String>,
    pub interaction_id: Option<String>,
    pub status: u16,
    /// What went wrong: `backend_connect`, `backend_timeout`,
    /// `backend_error`, `backend_5xx`, or the code of the gateway's own
    /// answer (`unauthorized`, `forbidden`, `too_many_requests`, ...); empty
    /// when nothing did.
    pub fault: &'static str,
    /// Refused by a throttling policy (a 429 of the gateway's).
    pub throttled: bool,
    pub latency_ms: f64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// Where the proxy puts events.
pub struct Recorder {
    tx: tokio::sync::mpsc::Sender<Event>,
    dropped: Counter,
    /// Per-request records are exported (OTLP): events carry their details.
    pub detailed: bool,
}

impl Recorder {
    /// Starts the aggregator thread writing into `store` every `flush`.
    pub fn start(
        store: Arc<Store>,
        flush: Duration,
        retention: rollup::Retention,
        otlp_endpoint: Option<&str>,
        dropped: Counter,
    ) -> Result<Arc<Recorder>, String> {
        let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
        let pod = pod_id();
        let detailed = otlp_endpoint.is_some();
        let endpoint = otlp_endpoint.map(str::to_string);
        let otlp = match &endpoint {
            Some(url) => Some(otlp::Otlp::new(url, &pod).map_err(|e| format!("--otlp-endpoint {url}: {e}"))?),
            None => None,
        };
        std::thread::Builder::new()
            .name("tollgate-analytics".into())
            .spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                    tracing::error!("analytics: no runtime; nothing is recorded");
                    return;
                };
                rt.block_on(Aggregator::new(pod, store, retention, otlp).run(rx, flush));
            })
            .map_err(|e| e.to_string())?;
        Ok(Arc::new(Recorder { tx, dropped, detailed }))
    }

    /// A recorder whose events go nowhere but a test's receiver.
    #[cfg(test)]
    pub fn for_test(capacity: usize) -> (Recorder, tokio::sync::mpsc::Receiver<Event>) {
        let (tx, rx) = tokio::sync::mpsc::channel(capacity);
        (Recorder { tx, dropped: Counter::default(), detailed: false }, rx)
    }

    /// Hands an event over; drops (and counts) it when the queue is full.
    pub fn record(&self, event: Event) {
        if self.tx.try_send(event).is_err() {
            self.dropped.inc();
        }
    }
}

/// This process among the gateways writing rollups: the pod name (or host
/// name) and the start time, so a restarted pod never replaces the rows of
/// its earlier life.
fn pod_id() -> String {
    let host = std::env::var("POD_NAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|h| h.trim().to_string()))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "gateway".into());
    format!("{host}-{}-{}", crate::throttle::now_ms(), std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> Event {
        Event {
            at_ms: 0,
            api: "ns/a".into(),
            operation: None,
            application: None,
            environment: None,
            client_id: None,
            interaction_id: None,
            status: 200,
            fault: "",
            throttled: false,
            latency_ms: 1.0,
            bytes_in: 0,
            bytes_out: 0,
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let (rec, mut rx) = Recorder::for_test(2);
        for _ in 0..5 {
            rec.record(event());
        }
        assert_eq!(rec.dropped.get(), 3);
        assert!(rx.try_recv().is_ok() && rx.try_recv().is_ok() && rx.try_recv().is_err());
    }
}
