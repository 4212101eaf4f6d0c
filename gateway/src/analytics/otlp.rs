//! Export over OTLP/HTTP (`--otlp-endpoint`), for those who outgrow the
//! database: one log record per request with the event's attributes
//! (`<url>/v1/logs`), and the rollups as metrics (`<url>/v1/metrics`): a
//! request counter, a latency histogram and byte counters per (API,
//! operation, application, environment, status class), summed by the
//! OpenTelemetry SDK and exported every flush interval. The SDK's batch
//! processor and periodic reader send from their own threads (protobuf over
//! HTTP), never on the request path; the records come from the analytics
//! aggregator, after the bounded queue whose drops are counted.

use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::logs::{AnyValue, LogRecord, Logger, LoggerProvider, Severity};
use opentelemetry::metrics::{Counter, Histogram, MeterProvider};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::logs::{SdkLogger, SdkLoggerProvider};
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};

use super::Event;

/// Latency histogram bounds of the exported metric, milliseconds.
const LATENCY_BOUNDS_MS: [f64; 15] =
    [1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0, 60000.0];

/// The exporters and the instruments records go through.
pub struct Otlp {
    logs: SdkLoggerProvider,
    logger: SdkLogger,
    metrics: SdkMeterProvider,
    requests: Counter<u64>,
    duration: Histogram<f64>,
    bytes_in: Counter<u64>,
    bytes_out: Counter<u64>,
}

/// The collector's base URL from `--otlp-endpoint` (which may name the
/// logs path itself).
fn base(endpoint: &str) -> &str {
    let base = endpoint.trim_end_matches('/');
    base.strip_suffix("/v1/logs").unwrap_or(base)
}

impl Otlp {
    /// Exporters to `endpoint` (the collector's base URL); metrics are sent
    /// every `every`.
    pub fn new(endpoint: &str, pod: &str, every: Duration) -> Result<Otlp, String> {
        use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
        let base = base(endpoint);
        let resource = Resource::builder()
            .with_service_name("tollgate-gateway")
            .with_attribute(KeyValue::new("service.instance.id", pod.to_string()))
            .build();
        let log_exporter = opentelemetry_otlp::LogExporter::builder()
            .with_http()
            .with_endpoint(format!("{base}/v1/logs"))
            .with_headers(Default::default())
            .build()
            .map_err(|e| e.to_string())?;
        let logs =
            SdkLoggerProvider::builder().with_batch_exporter(log_exporter).with_resource(resource.clone()).build();
        let logger = logs.logger("tollgate.analytics");
        let metric_exporter = opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .with_endpoint(format!("{base}/v1/metrics"))
            .with_headers(Default::default())
            .build()
            .map_err(|e| e.to_string())?;
        let reader = PeriodicReader::builder(metric_exporter).with_interval(every).build();
        let metrics = SdkMeterProvider::builder().with_reader(reader).with_resource(resource).build();
        let meter = metrics.meter("tollgate.analytics");
        Ok(Otlp {
            logs,
            logger,
            requests: meter
                .u64_counter("tollgate.requests")
                .with_description("Requests answered, by API, operation, application, environment and status class")
                .build(),
            duration: meter
                .f64_histogram("tollgate.request.duration")
                .with_unit("ms")
                .with_description("Time from the request to the end of the answer")
                .with_boundaries(LATENCY_BOUNDS_MS.to_vec())
                .build(),
            bytes_in: meter.u64_counter("tollgate.request.bytes").with_unit("By").build(),
            bytes_out: meter.u64_counter("tollgate.response.bytes").with_unit("By").build(),
            metrics,
        })
    }

    /// Emits one request's record and adds it to the metrics.
    pub fn emit(&self, e: &Event) {
        let mut r = self.logger.create_log_record();
        r.set_severity_number(if e.status >= 500 { Severity::Error } else { Severity::Info });
        r.set_event_name("tollgate.request");
        r.set_body(AnyValue::from(format!("{} {}", e.api, e.status)));
        r.add_attribute("api", e.api.to_string());
        if let Some(op) = &e.operation {
            r.add_attribute("operation", op.to_string());
        }
        if let Some(app) = &e.application {
            r.add_attribute("application", app.clone());
        }
        if let Some(c) = &e.client_id {
            r.add_attribute("client_id", c.clone());
        }
        if let Some(env) = e.environment {
            r.add_attribute("environment", env);
        }
        if let Some(id) = &e.interaction_id {
            r.add_attribute("interaction_id", id.clone());
        }
        r.add_attribute("status", i64::from(e.status));
        if !e.fault.is_empty() {
            r.add_attribute("fault", e.fault);
        }
        r.add_attribute("throttled", e.throttled);
        r.add_attribute("latency_ms", e.latency_ms);
        r.add_attribute("bytes_in", e.bytes_in as i64);
        r.add_attribute("bytes_out", e.bytes_out as i64);
        self.logger.emit(r);

        // The rollup key (no client id or interaction id: bounded series).
        let attrs = [
            KeyValue::new("api", e.api.to_string()),
            KeyValue::new("operation", e.operation.as_deref().unwrap_or("").to_string()),
            KeyValue::new("application", e.application.clone().unwrap_or_default()),
            KeyValue::new("environment", e.environment.unwrap_or("")),
            KeyValue::new("status_class", super::rollup::class(e.status)),
        ];
        let mut counted = attrs.to_vec();
        counted.push(KeyValue::new("fault", e.fault));
        counted.push(KeyValue::new("throttled", e.throttled));
        self.requests.add(1, &counted);
        self.duration.record(e.latency_ms, &attrs);
        self.bytes_in.add(e.bytes_in, &attrs);
        self.bytes_out.add(e.bytes_out, &attrs);
    }

    /// Sends what is batched and stops the exporters.
    pub fn shutdown(&self) {
        if let Err(e) = self.logs.shutdown() {
            tracing::warn!(error = %e, "OTLP log export did not finish");
        }
        if let Err(e) = self.metrics.shutdown() {
            tracing::warn!(error = %e, "OTLP metric export did not finish");
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_base_url_is_the_endpoint_without_the_logs_path() {
        for (given, want) in [
            ("http://c:4318", "http://c:4318"),
            ("http://c:4318/", "http://c:4318"),
            ("http://c:4318/v1/logs", "http://c:4318"),
            ("https://c/otel/v1/logs/", "https://c/otel"),
        ] {
            assert_eq!(super::base(given), want, "{given}");
        }
    }
}
