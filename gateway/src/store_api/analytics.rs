//! `/api/v1/analytics` (role analytics, admin token): usage rows and
//! availability from the rollups every gateway writes.
//!
//! - `GET /api/v1/analytics/usage?from=&to=&granularity=minute|hour|day&api=&application=`
//!   -> `{rows: [{time, api, application, requests, errors, throttled,
//!   latencyMs: {p50, p95, p99}, bytes, bytesIn, bytesOut}]}`, or CSV with a
//!   header row for `Accept: text/csv`. requests: every answer; errors: 5xx;
//!   throttled: 429 from a policy; percentiles from the merged histograms
//!   (the upper bound of the bucket holding them, within a factor of 1.42).
//! - `GET /api/v1/analytics/availability?from=&to=` -> `{apis: [{api,
//!   uptimePercent, requests, serverErrors, faults}]}`: per API the share
//!   of requests answered without a 5xx (caused by the gateway or the
//!   backend), and requests by fault kind (`backend_connect`,
//!   `backend_timeout`, `backend_error`, `backend_5xx`, or the code of the
//!   gateway's own refusal: `unauthorized`, `too_many_requests`, ...).
//!
//! `from`/`to`: RFC 3339 times or Unix seconds (default: the last hour);
//! ranges are bounded by granularity (minute: 1 day, hour: 31 days, day:
//! 731 days). Bad parameters are 400.

use std::collections::BTreeMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State as AxState};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiState, authorize, error, ready, store_error};
use crate::store::analytics::{Coarse, Counts};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    from: Option<String>,
    to: Option<String>,
    granularity: Option<String>,
    api: Option<String>,
    application: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AvailabilityQuery {
    from: Option<String>,
    to: Option<String>,
}

fn bad(message: impl Into<String>) -> Response {
    error(StatusCode::BAD_REQUEST, "bad_request", message)
}

/// A time parameter: RFC 3339 or Unix seconds, as Unix milliseconds.
fn time(name: &str, v: &str) -> Result<i64, String> {
    if let Ok(secs) = v.parse::<i64>() {
        return secs.checked_mul(1000).ok_or_else(|| format!("{name} is out of range"));
    }
    v.parse::<jiff::Timestamp>()
        .map(|t| t.as_millisecond())
        .map_err(|_| format!("{name} must be an RFC 3339 time (2026-11-28T10:00:00Z) or Unix seconds, not {v:?}"))
}

/// The range asked for, `[from, to)` in milliseconds, bounded.
fn range(from: Option<&str>, to: Option<&str>, max_ms: i64) -> Result<(i64, i64), String> {
    let to = match to {
        Some(t) => time("to", t)?,
        None => crate::throttle::now_ms() as i64,
    };
    let from = match from {
        Some(f) => time("from", f)?,
        None => to - 3_600_000,
    };
    if from >= to {
        return Err("from must be before to".into());
    }
    if to - from > max_ms {
        return Err(format!("the range is longer than {} days for this granularity", max_ms / 86_400_000));
    }
    Ok((from, to))
}

fn rfc3339(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map(|t| t.to_string()).unwrap_or_default()
}

pub async fn usage(
    AxState(s): AxState<ApiState>,
    headers: HeaderMap,
    q: Result<Query<UsageQuery>, QueryRejection>,
) -> Response {
    if let Err(r) = authorize(&s, &headers) {
        return *r;
    }
    let q = match q {
        Ok(Query(q)) => q,
        Err(e) => return bad(format!("query: {}", e.body_text())),
    };
    let (step, max) = match q.granularity.as_deref().unwrap_or("minute") {
        "minute" => (60_000i64, 86_400_000i64),
        "hour" => (3_600_000, 31 * 86_400_000),
        "day" => (86_400_000, 731 * 86_400_000),
        other => return bad(format!("granularity must be minute, hour or day, not {other:?}")),
    };
    let (from, to) = match range(q.from.as_deref(), q.to.as_deref(), max) {
        Ok(r) => r,
        Err(m) => return bad(m),
    };
    if let Err(r) = ready(&s).await {
        return *r;
    }
    // Each granularity reads its own table (minute rows live 7 days by
    // default, hourly 90, daily 2 years).
    let (api, app) = (q.api.as_deref(), q.application.as_deref());
    let rows = match step {
        60_000 => s.store.db.read_minutes(from, to, api, app).await,
        3_600_000 => s.store.db.read_coarse(Coarse::Hour, from - from.rem_euclid(step), to, api, app).await,
        _ => s.store.db.read_coarse(Coarse::Day, from - from.rem_euclid(step), to, api, app).await,
    };
    let rows = match rows {
        Ok(r) => r,
        Err(e) => return store_error(e),
    };
    let mut sums: BTreeMap<(i64, String, String), Counts> = BTreeMap::new();
    for r in rows {
        let bucket = r.key.minute_ms - r.key.minute_ms.rem_euclid(step);
        sums.entry((bucket, r.key.api, r.key.application)).or_default().add(&r.counts);
    }
    let out: Vec<Value> = sums
        .into_iter()
        .map(|((t, api, app), s)| {
            json!({
                "time": rfc3339(t),
                "api": api,
                "application": if app.is_empty() { Value::Null } else { json!(app) },
                "requests": s.requests,
                "errors": s.errors,
                "throttled": s.throttled,
                "latencyMs": {"p50": s.latency.quantile(0.5), "p95": s.latency.quantile(0.95), "p99": s.latency.quantile(0.99)},
                "bytes": s.bytes_in + s.bytes_out,
                "bytesIn": s.bytes_in,
                "bytesOut": s.bytes_out,
            })
        })
        .collect();
    let wants_csv = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.split(',').any(|m| m.split(';').next().is_some_and(|m| m.trim() == "text/csv")));
    if wants_csv {
        return match csv(&out) {
            Ok(text) => ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], text).into_response(),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e),
        };
    }
    axum::Json(json!({ "rows": out })).into_response()
}

/// The usage rows as CSV with a header row.
fn csv(rows: &[Value]) -> Result<String, String> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "time",
        "api",
        "application",
        "requests",
        "errors",
        "throttled",
        "p50_ms",
        "p95_ms",
        "p99_ms",
        "bytes",
    ])
    .map_err(|e| e.to_string())?;
    for r in rows {
        let text = |v: &Value| match v {
            Value::Null => String::new(),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        w.write_record([
            text(&r["time"]),
            text(&r["api"]),
            text(&r["application"]),
            text(&r["requests"]),
            text(&r["errors"]),
            text(&r["throttled"]),
            text(&r["latencyMs"]["p50"]),
            text(&r["latencyMs"]["p95"]),
            text(&r["latencyMs"]["p99"]),
            text(&r["bytes"]),
        ])
        .map_err(|e| e.to_string())?;
    }
    String::from_utf8(w.into_inner().map_err(|e| e.to_string())?).map_err(|e| e.to_string())
}

pub async fn availability(
    AxState(s): AxState<ApiState>,
    headers: HeaderMap,
    q: Result<Query<AvailabilityQuery>, QueryRejection>,
) -> Response {
    if let Err(r) = authorize(&s, &headers) {
        return *r;
    }
    let q = match q {
        Ok(Query(q)) => q,
        Err(e) => return bad(format!("query: {}", e.body_text())),
    };
    let (from, to) = match range(q.from.as_deref(), q.to.as_deref(), 731 * 86_400_000) {
        Ok(r) => r,
        Err(m) => return bad(m),
    };
    if let Err(r) = ready(&s).await {
        return *r;
    }
    let now = crate::throttle::now_ms() as i64;
    let rows = match s.store.db.rows_by_hour(from, to, now).await {
        Ok(r) => r,
        Err(e) => return store_error(e),
    };
    #[derive(Default)]
    struct Api {
        requests: u64,
        errors: u64,
        faults: BTreeMap<String, u64>,
    }
    let mut per_api: BTreeMap<String, Api> = BTreeMap::new();
    for r in rows {
        let e = per_api.entry(r.key.api).or_default();
        e.requests += r.counts.requests;
        e.errors += r.counts.errors;
        if !r.key.fault.is_empty() {
            *e.faults.entry(r.key.fault).or_default() += r.counts.requests;
        }
    }
    let apis: Vec<Value> = per_api
        .into_iter()
        .map(|(api, a)| {
            let uptime =
                if a.requests == 0 { 100.0 } else { 100.0 * (a.requests - a.errors) as f64 / a.requests as f64 };
            json!({
                "api": api,
                "uptimePercent": (uptime * 1000.0).round() / 1000.0,
                "requests": a.requests,
                "serverErrors": a.errors,
                "faults": a.faults,
            })
        })
        .collect();
    axum::Json(json!({ "apis": apis })).into_response()
}
