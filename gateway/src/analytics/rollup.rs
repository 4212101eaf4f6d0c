//! Per-minute rollups of request events, written to the store database.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::Event;
use super::histogram::Histogram;
use crate::store::Store;
use crate::store::analytics::{MinuteRow, RowKey};

/// Minutes kept in memory after they end (late events still land in them).
const KEEP_MINUTES: i64 = 2;

/// Status class of a status code.
pub fn class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    }
}

/// One minute's numbers for one key.
#[derive(Clone, Debug, Default)]
pub struct Rollup {
    pub requests: u64,
    pub errors: u64,
    pub throttled: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub latency: Histogram,
    /// Changed since the last write.
    dirty: bool,
}

/// The aggregator: rollups of the recent minutes, written every flush.
pub struct Aggregator {
    pod: String,
    store: Arc<Store>,
    rollups: HashMap<RowKey, Rollup>,
}

impl Aggregator {
    pub fn new(pod: String, store: Arc<Store>) -> Aggregator {
        Aggregator { pod, store, rollups: HashMap::new() }
    }

    pub fn add(&mut self, e: &Event) {
        let key = RowKey {
            minute_ms: e.at_ms - e.at_ms.rem_euclid(60_000),
            api: e.api.to_string(),
            operation: e.operation.as_deref().unwrap_or("").to_string(),
            application: e.application.clone().unwrap_or_default(),
            environment: e.environment.unwrap_or("").to_string(),
            status_class: class(e.status).to_string(),
        };
        let r = self.rollups.entry(key).or_default();
        r.requests += 1;
        r.errors += u64::from(e.status >= 500);
        r.throttled += u64::from(e.throttled);
        r.bytes_in += e.bytes_in;
        r.bytes_out += e.bytes_out;
        r.latency.record(e.latency_ms);
        r.dirty = true;
    }

    /// Writes every changed rollup (the whole minute so far: a row is
    /// replaced, never added to); forgets minutes that ended long enough
    /// ago and were written.
    pub async fn flush(&mut self) {
        let rows: Vec<MinuteRow> = self
            .rollups
            .iter()
            .filter(|(_, r)| r.dirty)
            .map(|(k, r)| MinuteRow {
                key: k.clone(),
                requests: r.requests,
                errors: r.errors,
                throttled: r.throttled,
                bytes_in: r.bytes_in,
                bytes_out: r.bytes_out,
                latency: r.latency.clone(),
            })
            .collect();
        if !rows.is_empty() {
            match self.store.db.write_minutes(&self.pod, &rows).await {
                Ok(()) => {
                    for r in self.rollups.values_mut() {
                        r.dirty = false;
                    }
                }
                // Kept dirty: written with the next flush.
                Err(e) => {
                    tracing::warn!(error = %e, rows = rows.len(), "analytics rollups could not be written; retrying")
                }
            }
        }
        let now = crate::throttle::now_ms() as i64;
        let cutoff = now - now.rem_euclid(60_000) - KEEP_MINUTES * 60_000;
        self.rollups.retain(|k, r| r.dirty || k.minute_ms >= cutoff);
    }

    /// Takes events until the recorder goes away, writing every `every`.
    pub async fn run(mut self, mut rx: tokio::sync::mpsc::Receiver<Event>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ev = rx.recv() => match ev {
                    Some(e) => self.add(&e),
                    None => {
                        self.flush().await;
                        return;
                    }
                },
                _ = tick.tick() => {
                    if self.store.ensure_migrated().await.is_ok() {
                        self.flush().await;
                    }
                }
            }
        }
    }
}
