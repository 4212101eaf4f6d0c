//! Reads what each Ready pod of an ApiManager says about its outside
//! services (`GET /status/dependencies` on its plain management port),
//! for `dependency_health`. A pod that does not answer within
//! [`TIMEOUT`] is left out: its readiness speaks for it.

use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;

/// How long one pod gets to answer (its own database check takes at most
/// 1 s).
pub const TIMEOUT: Duration = Duration::from_secs(3);
/// The largest answer read.
const MAX_BODY: usize = 64 * 1024;

fn ready_ip(pod: &Pod) -> Option<String> {
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let status = pod.status.as_ref()?;
    let ready = status.conditions.as_ref()?.iter().any(|c| c.type_ == "Ready" && c.status == "True");
    if !ready {
        return None;
    }
    status.pod_ip.clone().filter(|ip| !ip.is_empty())
}

/// (pod name, answer) of every Ready pod that answered with JSON.
pub async fn dependencies(pods: &[Pod], port: i32) -> Vec<(String, Value)> {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let asks = pods.iter().filter_map(|p| Some((p.metadata.name.clone()?, ready_ip(p)?))).map(|(name, ip)| {
        let client = client.clone();
        async move {
            let host = if ip.contains(':') { format!("[{ip}]") } else { ip };
            let uri: hyper::Uri = format!("http://{host}:{port}/status/dependencies").parse().ok()?;
            let fetch = async {
                let response = client.get(uri).await.ok()?;
                if !response.status().is_success() {
                    return None;
                }
                let body = Limited::new(response.into_body(), MAX_BODY).collect().await.ok()?.to_bytes();
                serde_json::from_slice::<Value>(&body).ok()
            };
            let answer = tokio::time::timeout(TIMEOUT, fetch).await.ok().flatten()?;
            Some((name, answer))
        }
    });
    futures::future::join_all(asks).await.into_iter().flatten().collect()
}
