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

/// A request to write everything now (at shutdown); answered when done.
pub type FinishRequest = std::sync::mpsc::SyncSender<()>;

/// Where the proxy puts events.
pub struct Recorder {
    tx: tokio::sync::mpsc::Sender<Event>,
    dropped: Counter,
    /// Per-request records are exported (OTLP): events carry their details.
    pub detailed: bool,
    finish: tokio::sync::mpsc::UnboundedSender<FinishRequest>,
}

/// What the aggregator needs to know.
pub struct Settings<'a> {
    /// Events the queue holds; 0 turns recording off.
    pub queue: usize,
    pub flush: Duration,
    pub retention: rollup::Retention,
    pub otlp_endpoint: Option<&'a str>,
}

impl Recorder {
    /// Starts the aggregator thread writing into `store` every flush
    /// interval; None when recording is off (queue 0).
    pub fn start(store: Arc<Store>, settings: Settings<'_>, dropped: Counter) -> Result<Option<Arc<Recorder>>, String> {
        if settings.queue == 0 {
            tracing::info!("analytics recording is off (--analytics-queue-size 0)");
            return Ok(None);
        }
        let (tx, rx) = tokio::sync::mpsc::channel(settings.queue);
        let (finish, finish_rx) = tokio::sync::mpsc::unbounded_channel();
        let pod = pod_id();
        let detailed = settings.otlp_endpoint.is_some();
        let otlp = match settings.otlp_endpoint {
            Some(url) => {
                Some(otlp::Otlp::new(url, &pod, settings.flush).map_err(|e| format!("--otlp-endpoint {url}: {e}"))?)
            }
            None => None,
        };
        let (flush, retention) = (settings.flush, settings.retention);
        std::thread::Builder::new()
            .name("tollgate-analytics".into())
            .spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                    tracing::error!("analytics: no runtime; nothing is recorded");
                    return;
                };
                rt.block_on(Aggregator::new(pod, store, retention, otlp).run(rx, finish_rx, flush));
            })
            .map_err(|e| e.to_string())?;
        Ok(Some(Arc::new(Recorder { tx, dropped, detailed, finish })))
    }

    /// A recorder whose events go nowhere but a test's receiver.
    #[cfg(test)]
    pub fn for_test(capacity: usize) -> (Recorder, tokio::sync::mpsc::Receiver<Event>) {
        let (tx, rx) = tokio::sync::mpsc::channel(capacity);
        let (finish, _) = tokio::sync::mpsc::unbounded_channel();
        (Recorder { tx, dropped: Counter::default(), detailed: false, finish }, rx)
    }

    /// Hands an event over; drops (and counts) it when the queue is full.
    pub fn record(&self, event: Event) {
        if self.tx.try_send(event).is_err() {
            self.dropped.inc();
        }
    }

    /// At shutdown: has the aggregator take every queued event, write its
    /// rollups and send what the exporters hold; waits at most `timeout`.
    /// Returns whether it finished in time.
    pub fn finish(&self, timeout: Duration) -> bool {
        let (done, wait) = std::sync::mpsc::sync_channel(1);
        self.finish.send(done).is_ok() && wait.recv_timeout(timeout).is_ok()
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
