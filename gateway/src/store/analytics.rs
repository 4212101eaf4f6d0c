//! Analytics rollups in the store database.

use sqlx::Row;

use super::db::{Db, Result};
use crate::analytics::histogram::Histogram;

/// What a rollup row is about.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct RowKey {
    pub minute_ms: i64,
    pub api: String,
    pub operation: String,
    pub application: String,
    pub environment: String,
    pub status_class: String,
    /// What went wrong (see analytics::Event::fault).
    pub fault: String,
}

/// The numbers of a rollup; rollups of any pods and periods add up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Every answer.
    pub requests: u64,
    /// 5xx answers.
    pub errors: u64,
    /// 429s of a throttling policy.
    pub throttled: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub latency: Histogram,
}

impl Counts {
    pub fn add(&mut self, o: &Counts) {
        self.requests += o.requests;
        self.errors += o.errors;
        self.throttled += o.throttled;
        self.bytes_in += o.bytes_in;
        self.bytes_out += o.bytes_out;
        self.latency.merge(&o.latency);
    }
}

/// A rollup row: one minute (hour, day) of one key, of one pod when written
/// to the minute table, summed over pods otherwise.
#[derive(Clone, Debug)]
pub struct MinuteRow {
    pub key: RowKey,
    pub counts: Counts,
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>;

/// Binds a row's key and numbers, in column order after any leading columns.
fn bind_row<'q>(q: AnyQuery<'q>, r: &'q MinuteRow) -> AnyQuery<'q> {
    let c = &r.counts;
    q.bind(r.key.minute_ms)
        .bind(&r.key.api)
        .bind(&r.key.operation)
        .bind(&r.key.application)
        .bind(&r.key.environment)
        .bind(&r.key.status_class)
        .bind(&r.key.fault)
        .bind(c.requests as i64)
        .bind(c.errors as i64)
        .bind(c.throttled as i64)
        .bind(c.bytes_in as i64)
        .bind(c.bytes_out as i64)
        .bind(c.latency.to_text())
}

/// Coarser rollup tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coarse {
    Hour,
    Day,
}

impl Coarse {
    pub fn millis(self) -> i64 {
        match self {
            Coarse::Hour => 3_600_000,
            Coarse::Day => 86_400_000,
        }
    }
}

/// Upsert (replace) into a coarse table, as a literal (sqlx takes only static SQL).
macro_rules! upsert_coarse {
    ($table:literal) => {
        concat!(
            "INSERT INTO ",
            $table,
            " (bucket_ms, api, operation, application, environment, status_class, fault, requests, errors, \
             throttled, bytes_in, bytes_out, latency) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
             ON CONFLICT (bucket_ms, api, operation, application, environment, status_class, fault) DO UPDATE SET \
             requests = excluded.requests, errors = excluded.errors, throttled = excluded.throttled, \
             bytes_in = excluded.bytes_in, bytes_out = excluded.bytes_out, latency = excluded.latency"
        )
    };
}

macro_rules! select_coarse {
    ($table:literal) => {
        concat!(
            "SELECT bucket_ms AS minute_ms, api, operation, application, environment, status_class, fault, requests, \
             errors, throttled, bytes_in, bytes_out, latency FROM ",
            $table,
            " WHERE bucket_ms >= $1 AND bucket_ms < $2 AND ($3 = '' OR api = $3) AND ($4 = '' OR application = $4)"
        )
    };
}

fn row_of(r: &sqlx::any::AnyRow) -> Result<MinuteRow> {
    let n = |c: &str| r.try_get::<i64, _>(c).map(|v| v.max(0) as u64);
    Ok(MinuteRow {
        key: RowKey {
            minute_ms: r.try_get("minute_ms")?,
            api: r.try_get("api")?,
            operation: r.try_get("operation")?,
            application: r.try_get("application")?,
            environment: r.try_get("environment")?,
            status_class: r.try_get("status_class")?,
            fault: r.try_get("fault")?,
        },
        counts: Counts {
            requests: n("requests")?,
            errors: n("errors")?,
            throttled: n("throttled")?,
            bytes_in: n("bytes_in")?,
            bytes_out: n("bytes_out")?,
            latency: Histogram::from_text(&r.try_get::<String, _>("latency")?),
        },
    })
}

impl Db {
    /// Replaces coarse rows (summed over pods; `key.minute_ms` is the bucket start).
    pub async fn write_coarse(&self, table: Coarse, rows: &[MinuteRow]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for r in rows {
            let sql = match table {
                Coarse::Hour => upsert_coarse!("analytics_hour"),
                Coarse::Day => upsert_coarse!("analytics_day"),
            };
            bind_row(sqlx::query(sql), r).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Coarse rows with `from_ms <= bucket < to_ms`.
    pub async fn read_coarse(
        &self,
        table: Coarse,
        from_ms: i64,
        to_ms: i64,
        api: Option<&str>,
        application: Option<&str>,
    ) -> Result<Vec<MinuteRow>> {
        let sql = match table {
            Coarse::Hour => select_coarse!("analytics_hour"),
            Coarse::Day => select_coarse!("analytics_day"),
        };
        let rows = sqlx::query(sql)
            .bind(from_ms)
            .bind(to_ms)
            .bind(api.unwrap_or(""))
            .bind(application.unwrap_or(""))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(row_of).collect()
    }

    /// Deletes rows older than each table's retention.
    pub async fn expire_analytics(&self, minute_before: i64, hour_before: i64, day_before: i64) -> Result<u64> {
        let mut n = 0;
        n += sqlx::query("DELETE FROM analytics_minute WHERE minute_ms < $1")
            .bind(minute_before)
            .execute(&self.pool)
            .await?
            .rows_affected();
        n += sqlx::query("DELETE FROM analytics_hour WHERE bucket_ms < $1")
            .bind(hour_before)
            .execute(&self.pool)
            .await?
            .rows_affected();
        n += sqlx::query("DELETE FROM analytics_day WHERE bucket_ms < $1")
            .bind(day_before)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n)
    }

    /// Writes (replaces) a pod's rows, in one transaction.
    pub async fn write_minutes(&self, pod: &str, rows: &[MinuteRow]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for r in rows {
            let q = sqlx::query(
                "INSERT INTO analytics_minute (pod, minute_ms, api, operation, application, environment, status_class, \
                 fault, requests, errors, throttled, bytes_in, bytes_out, latency) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
                 ON CONFLICT (pod, minute_ms, api, operation, application, environment, status_class, fault) DO UPDATE SET \
                 requests = excluded.requests, errors = excluded.errors, throttled = excluded.throttled, \
                 bytes_in = excluded.bytes_in, bytes_out = excluded.bytes_out, latency = excluded.latency",
            )
            .bind(pod);
            bind_row(q, r).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Every pod's rows with `from_ms <= minute < to_ms`, optionally of one
    /// API and one application.
    pub async fn read_minutes(
        &self,
        from_ms: i64,
        to_ms: i64,
        api: Option<&str>,
        application: Option<&str>,
    ) -> Result<Vec<MinuteRow>> {
        let rows = sqlx::query(
            "SELECT minute_ms, api, operation, application, environment, status_class, fault, requests, errors, \
             throttled, bytes_in, bytes_out, latency FROM analytics_minute \
             WHERE minute_ms >= $1 AND minute_ms < $2 AND ($3 = '' OR api = $3) AND ($4 = '' OR application = $4)",
        )
        .bind(from_ms)
        .bind(to_ms)
        .bind(api.unwrap_or(""))
        .bind(application.unwrap_or(""))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(row_of).collect()
    }

    /// Rows of every hour from the hour of `from_ms` to `to_ms`, as
    /// availability sums them: the hourly rollups for hours that are final,
    /// and the minute rows themselves for this hour and the last (their
    /// hourly rollups are recomputed only every few flushes, so requests
    /// already counted in the minutes would be missing for up to a minute).
    pub async fn rows_by_hour(&self, from_ms: i64, to_ms: i64, now_ms: i64) -> Result<Vec<MinuteRow>> {
        let hour = Coarse::Hour.millis();
        let from = from_ms - from_ms.rem_euclid(hour);
        let recent = now_ms - now_ms.rem_euclid(hour) - hour;
        let mut rows = Vec::new();
        if from < recent.min(to_ms) {
            rows.extend(self.read_coarse(Coarse::Hour, from, recent.min(to_ms), None, None).await?);
        }
        if from.max(recent) < to_ms {
            rows.extend(self.read_minutes(from.max(recent), to_ms, None, None).await?);
        }
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(minute_ms: i64, api: &str, requests: u64, errors: u64) -> MinuteRow {
        MinuteRow {
            key: RowKey { minute_ms, api: api.into(), ..Default::default() },
            counts: Counts { requests, errors, ..Default::default() },
        }
    }

    #[tokio::test]
    async fn recent_minutes_count_before_their_hour_is_rolled_up() {
        let (_tmp, db) = super::super::db::test_db().await;
        let hour = Coarse::Hour.millis();
        let now = 1_800_000_000_000 - 1_800_000_000_000i64.rem_euclid(hour) + 10 * 60_000;
        // Three hours ago: rolled up (and its minutes expired); this hour:
        // minutes only, no hourly row yet.
        db.write_coarse(Coarse::Hour, &[row(now - 3 * hour - 10 * 60_000, "bank/a", 5, 1)]).await.unwrap();
        db.write_minutes("pod-1", &[row(now - 60_000, "bank/a", 7, 0), row(now - 60_000, "bank/b", 2, 2)])
            .await
            .unwrap();
        db.write_minutes("pod-2", &[row(now - 60_000, "bank/a", 1, 0)]).await.unwrap();
        let rows = db.rows_by_hour(now - 24 * hour, now + 60_000, now).await.unwrap();
        let sum = |api: &str| -> (u64, u64) {
            rows.iter()
                .filter(|r| r.key.api == api)
                .fold((0, 0), |(n, e), r| (n + r.counts.requests, e + r.counts.errors))
        };
        assert_eq!(sum("bank/a"), (13, 1), "the rolled-up hour and this hour's minutes of both pods");
        assert_eq!(sum("bank/b"), (2, 2));
        // Once this hour is rolled up too, nothing is counted twice.
        db.write_coarse(Coarse::Hour, &[row(now - now.rem_euclid(hour), "bank/a", 8, 0)]).await.unwrap();
        let rows = db.rows_by_hour(now - 24 * hour, now + 60_000, now).await.unwrap();
        assert_eq!(rows.iter().filter(|r| r.key.api == "bank/a").map(|r| r.counts.requests).sum::<u64>(), 13);
    }
}
