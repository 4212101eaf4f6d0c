//! Per-minute rollups of request events, written to the store database.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::Event;
use crate::store::Store;
use crate::store::analytics::{Coarse, Counts, MinuteRow, RowKey};

/// Minutes kept in memory after they end (late events still land in them).
const KEEP_MINUTES: i64 = 2;

/// How often the aggregator empties the event queue.
const DRAIN_EVERY: Duration = Duration::from_millis(20);

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
    pub counts: Counts,
    /// Changed since the last write.
    dirty: bool,
}

/// How long each table keeps its rows.
#[derive(Clone, Copy, Debug)]
pub struct Retention {
    pub minute: Duration,
    pub hour: Duration,
    pub day: Duration,
}

/// Rows summed into `period`-long buckets (pods, minutes or hours merged).
pub fn compact(rows: Vec<MinuteRow>, period_ms: i64) -> Vec<MinuteRow> {
    let mut out: HashMap<RowKey, Counts> = HashMap::new();
    for r in rows {
        let mut key = r.key;
        key.minute_ms -= key.minute_ms.rem_euclid(period_ms);
        out.entry(key).or_default().add(&r.counts);
    }
    out.into_iter().map(|(key, counts)| MinuteRow { key, counts }).collect()
}

/// A rollup's key while it is being counted: the event's shared strings
/// and static labels, so counting an event allocates nothing; the store's
/// [`RowKey`] is made per row when rows are written.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct LiveKey {
    minute_ms: i64,
    api: Arc<str>,
    operation: Option<Arc<str>>,
    application: Option<String>,
    environment: &'static str,
    status_class: &'static str,
    fault: &'static str,
}

impl LiveKey {
    fn row(&self) -> RowKey {
        RowKey {
            minute_ms: self.minute_ms,
            api: self.api.to_string(),
            operation: self.operation.as_deref().unwrap_or("").to_string(),
            application: self.application.clone().unwrap_or_default(),
            environment: self.environment.to_string(),
            status_class: self.status_class.to_string(),
            fault: self.fault.to_string(),
        }
    }
}

/// The aggregator: rollups of the recent minutes, written every flush;
/// every few flushes the hourly and daily rollups of the current and the
/// previous period are recomputed and old rows expired.
pub struct Aggregator {
    pod: String,
    store: Arc<Store>,
    rollups: foldhash::HashMap<LiveKey, Rollup>,
    retention: Retention,
    /// Per-request records exported over OTLP (--otlp-endpoint).
    otlp: Option<super::otlp::Otlp>,
}

impl Aggregator {
    pub fn new(pod: String, store: Arc<Store>, retention: Retention, otlp: Option<super::otlp::Otlp>) -> Aggregator {
        Aggregator { pod, store, rollups: foldhash::HashMap::default(), retention, otlp }
    }

    /// Recomputes the hourly rows of this hour and the last, and the daily
    /// rows of today and yesterday, from the finer tables (idempotent, so
    /// every gateway may run it); deletes rows past their retention.
    pub async fn compact_and_expire(&self) -> Result<(), crate::store::db::StoreError> {
        let db = &self.store.db;
        let now = crate::throttle::now_ms() as i64;
        let hour = Coarse::Hour.millis();
        let from = now - now.rem_euclid(hour) - hour;
        let minutes = db.read_minutes(from, i64::MAX, None, None).await?;
        db.write_coarse(Coarse::Hour, &compact(minutes, hour)).await?;
        let day = Coarse::Day.millis();
        let from = now - now.rem_euclid(day) - day;
        let hours = db.read_coarse(Coarse::Hour, from, i64::MAX, None, None).await?;
        db.write_coarse(Coarse::Day, &compact(hours, day)).await?;
        let before = |d: Duration| now - d.as_millis() as i64;
        let gone = db
            .expire_analytics(before(self.retention.minute), before(self.retention.hour), before(self.retention.day))
            .await?;
        if gone > 0 {
            tracing::info!(rows = gone, "expired analytics rows past their retention");
        }
        Ok(())
    }

    pub fn add(&mut self, e: Event) {
        if let Some(o) = &self.otlp {
            o.emit(&e);
        }
        let key = LiveKey {
            minute_ms: e.at_ms - e.at_ms.rem_euclid(60_000),
            api: e.api,
            // Empty is the same as none (as in the store's rows, where two
            // keys naming one row would overwrite each other).
            operation: e.operation.filter(|o| !o.is_empty()),
            application: e.application.filter(|a| !a.is_empty()),
            environment: e.environment.unwrap_or(""),
            status_class: class(e.status),
            fault: e.fault,
        };
        let r = self.rollups.entry(key).or_default();
        let c = &mut r.counts;
        c.requests += 1;
        c.errors += u64::from(e.status >= 500);
        c.throttled += u64::from(e.throttled);
        c.bytes_in += e.bytes_in;
        c.bytes_out += e.bytes_out;
        c.latency.record(e.latency_ms);
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
            .map(|(k, r)| MinuteRow { key: k.row(), counts: r.counts.clone() })
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

    /// Takes events until the recorder goes away, writing every `every`
    /// and compacting every sixth write; on a finish request takes what is
    /// queued, writes it, stops the exporters and answers.
    pub async fn run(
        mut self,
        mut rx: tokio::sync::mpsc::Receiver<Event>,
        mut finish: tokio::sync::mpsc::UnboundedReceiver<super::FinishRequest>,
        every: Duration,
    ) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The queue is emptied in batches: the aggregator never waits on it,
        // so a request's hand-over never has to wake this thread (no system
        // call per request); DRAIN_EVERY at the default queue size bounds
        // the rate before drops at over a million events a second.
        let mut drain = tokio::time::interval(DRAIN_EVERY);
        drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks = 0u64;
        loop {
            tokio::select! {
                _ = drain.tick() => {
                    if !self.drain(&mut rx) {
                        self.flush().await;
                        return;
                    }
                },
                Some(done) = finish.recv() => {
                    self.drain(&mut rx);
                    if self.store.ensure_migrated().await.is_ok() {
                        self.flush().await;
                    }
                    if let Some(o) = self.otlp.take() {
                        o.shutdown();
                    }
                    let _ = done.send(());
                },
                _ = tick.tick() => {
                    self.drain(&mut rx);
                    if self.store.ensure_migrated().await.is_ok() {
                        self.flush().await;
                        ticks += 1;
                        if ticks % 6 == 1
                            && let Err(e) = self.compact_and_expire().await
                        {
                            tracing::warn!(error = %e, "analytics compaction failed; retrying with a later flush");
                        }
                    }
                }
            }
        }
    }

    /// Takes every queued event; false once the recorder is gone.
    fn drain(&mut self, rx: &mut tokio::sync::mpsc::Receiver<Event>) -> bool {
        loop {
            match rx.try_recv() {
                Ok(e) => self.add(e),
                Err(tokio::sync::mpsc::error::TryRecvError::Empty) => return true,
                Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => return false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analytics::histogram::Histogram;

    impl Store {
        async fn store_rows(&self, pod: &str, rows: &[MinuteRow]) {
            self.db.write_minutes(pod, rows).await.unwrap();
        }
    }

    fn row(minute_ms: i64, app: &str, requests: u64, ms: f64) -> MinuteRow {
        let mut latency = Histogram::default();
        for _ in 0..requests {
            latency.record(ms);
        }
        MinuteRow {
            key: RowKey {
                minute_ms,
                api: "ns/a".into(),
                operation: String::new(),
                application: app.into(),
                environment: String::new(),
                status_class: "2xx".into(),
                fault: String::new(),
            },
            counts: Counts { requests, errors: 0, throttled: 0, bytes_in: requests, bytes_out: 10 * requests, latency },
        }
    }

    #[tokio::test]
    async fn compaction_fills_the_hour_and_day_tables_and_retention_expires_old_rows() {
        let tmp = tempfile::tempdir().unwrap();
        let store =
            Arc::new(Store::open(tmp.path(), None, None, Duration::from_secs(5), Default::default()).await.unwrap());
        let now = crate::throttle::now_ms() as i64;
        let minute = now - now.rem_euclid(60_000);
        let old = minute - 10 * 86_400_000;
        store.store_rows("pod-a", &[row(minute, "x", 2, 5.0), row(old, "x", 7, 5.0)]).await;
        store.store_rows("pod-b", &[row(minute, "x", 3, 5.0)]).await;
        let day = Duration::from_secs(86_400);
        let agg = Aggregator::new(
            "pod-a".into(),
            store.clone(),
            Retention { minute: 7 * day, hour: 90 * day, day: 730 * day },
            None,
        );
        agg.compact_and_expire().await.unwrap();
        let minutes = store.db.read_minutes(0, i64::MAX, None, None).await.unwrap();
        assert_eq!(minutes.iter().map(|r| r.counts.requests).sum::<u64>(), 5, "the 10-day-old minute row is gone");
        let hours = store.db.read_coarse(Coarse::Hour, 0, i64::MAX, None, None).await.unwrap();
        assert_eq!(hours.len(), 1);
        assert_eq!(
            (hours[0].key.minute_ms, hours[0].counts.requests),
            (now - now.rem_euclid(3_600_000), 5),
            "both pods summed"
        );
        let days = store.db.read_coarse(Coarse::Day, 0, i64::MAX, None, None).await.unwrap();
        assert_eq!(days.iter().map(|r| r.counts.requests).sum::<u64>(), 5);
        // Run again: the same numbers (recomputed, not added).
        agg.compact_and_expire().await.unwrap();
        let hours = store.db.read_coarse(Coarse::Hour, 0, i64::MAX, None, None).await.unwrap();
        assert_eq!(hours[0].counts.requests, 5);
    }

    #[test]
    fn compaction_sums_pods_and_minutes_into_their_hour() {
        let h = 3_600_000;
        // Two pods' rows of the same minute, another minute, the next hour, another application.
        let rows = vec![
            row(h, "x", 2, 5.0),
            row(h, "x", 3, 50.0),
            row(h + 60_000, "x", 1, 500.0),
            row(2 * h, "x", 4, 5.0),
            row(h, "y", 1, 5.0),
        ];
        let mut out = compact(rows, h);
        out.sort_by_key(|r| (r.key.minute_ms, r.key.application.clone()));
        let summary: Vec<(i64, &str, u64, u64)> = out
            .iter()
            .map(|r| (r.key.minute_ms, r.key.application.as_str(), r.counts.requests, r.counts.latency.count()))
            .collect();
        assert_eq!(summary, [(h, "x", 6, 6), (h, "y", 1, 1), (2 * h, "x", 4, 4)]);
        assert_eq!(out[0].counts.bytes_out, 60);
        assert!(out[0].counts.latency.quantile(1.0).unwrap() >= 500.0);
    }

    fn event(at_ms: i64, operation: Option<&str>, application: Option<&str>, status: u16) -> Event {
        Event {
            at_ms,
            api: "ns/a".into(),
            operation: operation.map(Arc::from),
            application: application.map(str::to_string),
            environment: application.filter(|a| !a.is_empty()).map(|_| "production"),
            client_id: None,
            interaction_id: None,
            status,
            fault: if status >= 500 { "backend_5xx" } else { "" },
            throttled: false,
            latency_ms: 3.0,
            bytes_in: 1,
            bytes_out: 10,
        }
    }

    #[tokio::test]
    async fn events_are_counted_into_one_row_per_key_and_written_once_per_change() {
        let tmp = tempfile::tempdir().unwrap();
        let store =
            Arc::new(Store::open(tmp.path(), None, None, Duration::from_secs(5), Default::default()).await.unwrap());
        store.ensure_migrated().await.unwrap();
        let day = Duration::from_secs(86_400);
        let mut agg = Aggregator::new("pod-a".into(), store.clone(), Retention { minute: day, hour: day, day }, None);
        let now = crate::throttle::now_ms() as i64;
        let minute = now - now.rem_euclid(60_000);
        agg.add(event(minute + 1, Some("GET /x"), Some("app"), 200));
        agg.add(event(minute + 2, Some("GET /x"), Some("app"), 204));
        agg.add(event(minute + 3, Some("GET /x"), Some("app"), 503));
        agg.add(event(minute + 4, Some("GET /x"), Some("other"), 200));
        // No operation and no application, spelt either way: one row.
        agg.add(event(minute + 5, None, None, 200));
        agg.add(event(minute + 6, Some(""), Some(""), 200));
        agg.flush().await;
        let mut rows = store.db.read_minutes(0, i64::MAX, None, None).await.unwrap();
        rows.sort_by(|a, b| (&a.key.application, &a.key.status_class).cmp(&(&b.key.application, &b.key.status_class)));
        let summary: Vec<(&str, &str, &str, &str, u64, u64)> = rows
            .iter()
            .map(|r| {
                let k = &r.key;
                (
                    k.operation.as_str(),
                    k.application.as_str(),
                    k.status_class.as_str(),
                    k.fault.as_str(),
                    r.counts.requests,
                    r.counts.errors,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("", "", "2xx", "", 2, 0),
                ("GET /x", "app", "2xx", "", 2, 0),
                ("GET /x", "app", "5xx", "backend_5xx", 1, 1),
                ("GET /x", "other", "2xx", "", 1, 0),
            ]
        );
        assert_eq!(rows[1].key.environment, "production");
        assert_eq!(rows[1].counts.bytes_out, 20);
        // A later event of the minute replaces its row with the new total.
        agg.add(event(minute + 7, Some("GET /x"), Some("other"), 200));
        agg.flush().await;
        let rows = store.db.read_minutes(0, i64::MAX, None, Some("other")).await.unwrap();
        assert_eq!(rows.iter().map(|r| r.counts.requests).collect::<Vec<_>>(), [2]);
    }
}
