//! Export of per-request records over OTLP/HTTP (`--otlp-endpoint`), for
//! those who outgrow the database: one log record per request with the
//! event's attributes, batched and sent by the OpenTelemetry SDK's batch
//! processor on its own thread (protobuf over HTTP), never on the request
//! path. The records come from the analytics aggregator, after the bounded
//! queue whose drops are counted.

use opentelemetry::KeyValue;
use opentelemetry::logs::{AnyValue, LogRecord, Logger, LoggerProvider, Severity};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::logs::{SdkLogger, SdkLoggerProvider};

use super::Event;

/// The exporter and the logger records are emitted through.
pub struct Otlp {
    provider: SdkLoggerProvider,
    logger: SdkLogger,
}

impl Otlp {
    /// An exporter to `endpoint` (the collector's base URL, or its full
    /// `/v1/logs` URL).
    pub fn new(endpoint: &str, pod: &str) -> Result<Otlp, String> {
        use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
        let base = endpoint.trim_end_matches('/');
        let url = if base.ends_with("/v1/logs") { base.to_string() } else { format!("{base}/v1/logs") };
        let exporter = opentelemetry_otlp::LogExporter::builder()
            .with_http()
            .with_endpoint(url)
            .with_headers(Default::default())
            .build()
            .map_err(|e| e.to_string())?;
        let resource = Resource::builder()
            .with_service_name("tollgate-gateway")
            .with_attribute(KeyValue::new("service.instance.id", pod.to_string()))
            .build();
        let provider = SdkLoggerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build();
        let logger = provider.logger("tollgate.analytics");
        Ok(Otlp { provider, logger })
    }

    /// Emits one request's record.
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
    }
}

impl Drop for Otlp {
    fn drop(&mut self) {
        let _ = self.provider.shutdown();
    }
}
