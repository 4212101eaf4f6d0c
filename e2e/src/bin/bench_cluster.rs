//! The cluster half of `make bench`, on the local control plane (or the
//! cluster named by KUBECONFIG):
//!
//! - propagation: `kubectl apply` of an ApiDeployment -> first 200 through a
//!   gateway serving the operator's artifact folder, over `--trials` APIs;
//! - operator scale: `--apis` ApiDeployments created at once (32 requests in
//!   flight) -> every one Deployed, the artifacts written, the last one
//!   served; the operator's resident memory while doing it and after.
//!
//! The operator runs as a local process with the chart's RBAC (as in the
//! e2e tests). Prints one JSON object on stdout; progress goes to stderr.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use clap::Parser;
use futures::StreamExt;
use kube::api::{Api, DynamicObject, ListParams};
use serde_json::{Value, json};
use tollgate_e2e::{
    Cluster, apply_manifest, install_crds,
    stack::{ArtifactVolume, Gateway, Operator, OperatorAccess, OperatorSpec, backend, eventually, run_tool},
    tollgate_resource,
};

#[derive(Parser)]
struct Args {
    /// kubectl-apply -> served trials.
    #[arg(long, default_value_t = 50)]
    trials: usize,
    /// ApiDeployments created at once for the operator scale run.
    #[arg(long, default_value_t = 1000)]
    apis: usize,
}

/// Resident and peak resident memory of a process, in MiB.
fn memory_mib(pid: u32) -> (f64, f64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn api_manifest(name: &str, context: &str, backend: &str) -> Value {
    json!({ "apiVersion": "tollgate.dev/v1alpha1", "kind": "ApiDeployment", "metadata": { "name": name },
            "spec": { "apiManagerRef": { "name": "apim" }, "context": context, "version": "v1",
                      "operations": [{ "method": "GET", "path": "/accounts" }, { "method": "GET", "path": "/accounts/{id}" }],
                      "backend": { "endpoints": [{ "url": format!("http://{backend}") }] } } })
}

fn deployed(obj: &DynamicObject) -> bool {
    let generation = obj.metadata.generation;
    obj.data
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Deployed" && c["status"] == "True"))
        && obj.data.pointer("/status/observedGeneration").and_then(Value::as_i64) == generation
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let cluster = Cluster::connect().await;
    install_crds(&cluster.client).await;
    let ns = cluster.namespace("bench").await;
    let ns = ns.name().to_string();
    let client = cluster.client.clone();
    let work = tempfile::tempdir().expect("tempdir");
    let artifacts = work.path().join("artifacts");
    std::fs::create_dir_all(&artifacts).expect("artifacts folder");

    let access = OperatorAccess::create(&cluster, &[&ns], false, work.path()).await;
    let _volume = ArtifactVolume::create(&cluster, &ns, &artifacts).await;
    let operator = Operator::start(&OperatorSpec {
        kubeconfig: access.kubeconfig.clone(),
        artifact_dir: artifacts.clone(),
        namespaces: vec![ns.clone()],
        identity: "bench".into(),
        leader_election: true,
        work: work.path().to_path_buf(),
    });
    let operator_pid = operator.proc.pid().expect("operator pid");
    let (_backend, backend_addr) = backend(work.path(), "bench-backend");
    let backend_addr = backend_addr.to_string();

    apply_manifest(
        &client,
        &ns,
        &json!({ "apiVersion": "tollgate.dev/v1alpha1", "kind": "ApiManager", "metadata": { "name": "apim" },
                 "spec": { "pattern": "AllInOne" } }),
    )
    .await
    .expect("ApiManager");
    let folder = artifacts.join(&ns).join("apim");
    eventually(Duration::from_secs(60), "artifact folder", || async {
        if folder.is_dir() { Ok(()) } else { Err(String::new()) }
    })
    .await;
    let gateway = Gateway::start(&folder, work.path(), &["--access-log", "false"]);
    let rss_idle = memory_mib(operator_pid).0;

    // 1. kubectl apply -> served. One untimed apply first fills kubectl's
    // discovery and OpenAPI caches, as on any machine that has used
    // kubectl before.
    let warmup = api_manifest("warmup", "/warmup", &backend_addr);
    let (ok, out) = run_tool(&cluster, "kubectl", &["apply", "-n", &ns, "-f", "-"], Some(&warmup.to_string()));
    assert!(ok, "kubectl apply failed: {out}");
    eprintln!("bench-cluster: {} kubectl-apply trials", args.trials);
    let mut apply_ms = Vec::new();
    let mut served_ms = Vec::new();
    for i in 0..args.trials {
        let manifest = api_manifest(&format!("prop-{i}"), &format!("/prop{i}"), &backend_addr);
        let started = Instant::now();
        let (ok, out) = run_tool(&cluster, "kubectl", &["apply", "-n", &ns, "-f", "-"], Some(&manifest.to_string()));
        assert!(ok, "kubectl apply failed: {out}");
        apply_ms.push(started.elapsed().as_secs_f64() * 1e3);
        let path = format!("/prop{i}/v1/accounts");
        let deadline = Instant::now() + Duration::from_secs(30);
        while gateway.get(&path) != 200 {
            assert!(Instant::now() < deadline, "{path} not served within 30 s:\n{}", operator.proc.log_tail());
            std::thread::sleep(Duration::from_millis(5));
        }
        served_ms.push(started.elapsed().as_secs_f64() * 1e3);
    }
    apply_ms.sort_by(f64::total_cmp);
    served_ms.sort_by(f64::total_cmp);

    // 2. Many ApiDeployments at once.
    eprintln!("bench-cluster: {} ApiDeployments at once", args.apis);
    let ar = tollgate_resource("ApiDeployment").expect("kind");
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
    let names: BTreeSet<String> = (0..args.apis).map(|i| format!("scale-{i}")).collect();
    let started = Instant::now();
    let sampler = {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut peak: f64 = 0.0;
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(memory_mib(operator_pid).0);
                std::thread::sleep(Duration::from_millis(100));
            }
            peak
        });
        (stop, handle)
    };
    let results: Vec<_> = futures::stream::iter(names.iter().enumerate())
        .map(|(i, name)| {
            let client = client.clone();
            let ns = ns.clone();
            let manifest = api_manifest(name, &format!("/scale/{i}"), &backend_addr);
            async move { apply_manifest(&client, &ns, &manifest).await.map_err(|e| e.to_string()) }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let created = started.elapsed();
    let failures: Vec<_> = results.into_iter().filter_map(Result::err).collect();
    assert!(failures.is_empty(), "{} creates failed, first: {}", failures.len(), failures[0]);
    let all_deployed = eventually(Duration::from_secs(600), "every ApiDeployment Deployed", || async {
        let list = api.list(&ListParams::default()).await.map_err(|e| e.to_string())?;
        let done = list
            .items
            .iter()
            .filter(|o| o.metadata.name.as_ref().is_some_and(|n| names.contains(n)) && deployed(o))
            .count();
        if done == names.len() { Ok(started.elapsed()) } else { Err(format!("{done}/{} Deployed", names.len())) }
    })
    .await;
    let last = format!("/scale/{}/v1/accounts", args.apis - 1);
    let deadline = Instant::now() + Duration::from_secs(60);
    while gateway.get(&last) != 200 {
        assert!(Instant::now() < deadline, "{last} not served");
        std::thread::sleep(Duration::from_millis(20));
    }
    let all_served = started.elapsed();
    sampler.0.store(true, std::sync::atomic::Ordering::Relaxed);
    let rss_peak_sampled = sampler.1.join().unwrap_or(0.0);
    let (rss_after, rss_hwm) = memory_mib(operator_pid);
    let written = std::fs::read_dir(folder.join("apis")).map(|d| d.count()).unwrap_or(0);
    let unexpected_errors = operator.unexpected_errors();

    let out = json!({
        "propagation_kubectl": {
            "trials": args.trials,
            "apply_p50_ms": percentile(&apply_ms, 0.5), "apply_p99_ms": percentile(&apply_ms, 0.99),
            "served_p50_ms": percentile(&served_ms, 0.5), "served_p99_ms": percentile(&served_ms, 0.99),
            "served_max_ms": served_ms.last().copied().unwrap_or(0.0),
        },
        "operator_scale": {
            "apis": args.apis,
            "create_s": created.as_secs_f64(),
            "all_deployed_s": all_deployed.as_secs_f64(),
            "last_served_s": all_served.as_secs_f64(),
            "artifact_files": written,
            "rss_idle_mib": rss_idle,
            "rss_peak_mib": rss_peak_sampled.max(rss_after),
            "rss_hwm_mib": rss_hwm,
            "rss_after_mib": rss_after,
            "unexpected_reconcile_errors": unexpected_errors,
        },
    });
    println!("{out}");
}
