//! The cluster half of `make bench`, on the local control plane (or the
//! cluster named by KUBECONFIG):
//!
//! - propagation: `kubectl apply` of an ApiDeployment -> first 200 through a
//!   gateway serving the operator's artifact folder, over `--trials` APIs;
//!   then `kubectl patch` of a ThrottlePolicy's limit -> its first 429, and
//!   `kubectl delete` of each of those APIs -> its first 404 (the e2e tests
//!   wait for these conditions; the figures are measured here);
//! - operator scale, once per count in `--apis` (each in its own namespace
//!   with its own operator): that many ApiDeployments created at once (32
//!   requests in flight) -> every one Deployed, the artifacts written, the
//!   last one served; then one of them deleted -> its route answers 404; then
//!   the operator restarted -> artifact files it writes (must be none); the
//!   operator's resident memory throughout.
//!
//! The operator runs as a local process with the chart's RBAC (as in the
//! e2e tests). Prints one JSON object on stdout; progress goes to stderr.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use clap::Parser;
use futures::StreamExt;
use kube::{
    api::{Api, DynamicObject},
    runtime::{WatchStreamExt, watcher},
};
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
    /// ApiDeployments created at once for the operator scale runs (one run per count).
    #[arg(long, value_delimiter = ',', default_value = "1000")]
    apis: Vec<usize>,
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
    let propagation = propagation(&cluster, args.trials).await;
    let mut scale = Vec::new();
    for n in &args.apis {
        scale.push(operator_scale(&cluster, *n).await);
    }
    println!("{}", json!({ "propagation_kubectl": propagation, "operator_scale": scale }));
}

/// A namespace with an operator (chart RBAC, leader election), its artifact
/// volume, an ApiManager `apim`, a backend and a gateway serving the folder.
struct Stage {
    ns: String,
    spec: OperatorSpec,
    operator: Operator,
    gateway: Gateway,
    folder: std::path::PathBuf,
    backend_addr: String,
    _backend: tollgate_e2e::stack::Proc,
    _access: OperatorAccess,
    _volume: ArtifactVolume,
    _ns: tollgate_e2e::TestNamespace,
    // Last: the processes above log into it.
    work: tempfile::TempDir,
}

async fn stage(cluster: &Cluster, prefix: &str) -> Stage {
    let guard = cluster.namespace(prefix).await;
    let ns = guard.name().to_string();
    let work = tempfile::tempdir().expect("tempdir");
    let artifacts = work.path().join("artifacts");
    std::fs::create_dir_all(&artifacts).expect("artifacts folder");
    let access = OperatorAccess::create(cluster, &[&ns], false, work.path()).await;
    let volume = ArtifactVolume::create(cluster, &ns, &artifacts).await;
    let spec = OperatorSpec {
        kubeconfig: access.kubeconfig.clone(),
        artifact_dir: artifacts.clone(),
        namespaces: vec![ns.clone()],
        identity: "bench".into(),
        leader_election: true,
        work: work.path().to_path_buf(),
    };
    let operator = Operator::start(&spec);
    let (backend_proc, backend_addr) = backend(work.path(), "bench-backend");
    apply_manifest(
        &cluster.client,
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
    Stage {
        ns,
        work,
        spec,
        operator,
        gateway,
        folder,
        backend_addr: backend_addr.to_string(),
        _backend: backend_proc,
        _access: access,
        _volume: volume,
        _ns: guard,
    }
}

/// `kubectl apply` -> first 200 through the gateway, over `trials` APIs.
async fn propagation(cluster: &Cluster, trials: usize) -> Value {
    let s = stage(cluster, "bench-prop").await;
    // One untimed apply first fills kubectl's discovery and OpenAPI caches,
    // as on any machine that has used kubectl before.
    let warmup = api_manifest("warmup", "/warmup", &s.backend_addr);
    let (ok, out) = run_tool(cluster, "kubectl", &["apply", "-n", &s.ns, "-f", "-"], Some(&warmup.to_string()));
    assert!(ok, "kubectl apply failed: {out}");
    eprintln!("bench-cluster: {trials} kubectl-apply trials");
    let mut apply_ms = Vec::new();
    let mut served_ms = Vec::new();
    for i in 0..trials {
        let manifest = api_manifest(&format!("prop-{i}"), &format!("/prop{i}"), &s.backend_addr);
        let started = Instant::now();
        let (ok, out) = run_tool(cluster, "kubectl", &["apply", "-n", &s.ns, "-f", "-"], Some(&manifest.to_string()));
        assert!(ok, "kubectl apply failed: {out}");
        apply_ms.push(started.elapsed().as_secs_f64() * 1e3);
        let path = format!("/prop{i}/v1/accounts");
        let deadline = Instant::now() + Duration::from_secs(30);
        while s.gateway.get(&path) != 200 {
            assert!(Instant::now() < deadline, "{path} not served within 30 s:\n{}", s.operator.proc.log_tail());
            std::thread::sleep(Duration::from_millis(5));
        }
        served_ms.push(started.elapsed().as_secs_f64() * 1e3);
    }
    apply_ms.sort_by(f64::total_cmp);
    served_ms.sort_by(f64::total_cmp);
    let enforced_ms = policy_patches(cluster, &s, trials.clamp(1, 10)).await;
    // Each API of the trials deleted -> 404.
    let mut deleted_ms = Vec::new();
    for i in 0..trials {
        let started = Instant::now();
        let (ok, out) = run_tool(cluster, "kubectl", &["delete", "-n", &s.ns, "apid", &format!("prop-{i}")], None);
        assert!(ok, "kubectl delete failed: {out}");
        until_status(&s.gateway, &format!("/prop{i}/v1/accounts"), 404, Duration::from_secs(60));
        deleted_ms.push(started.elapsed().as_secs_f64() * 1e3);
    }
    deleted_ms.sort_by(f64::total_cmp);
    json!({
        "trials": trials,
        "apply_p50_ms": percentile(&apply_ms, 0.5), "apply_p99_ms": percentile(&apply_ms, 0.99),
        "served_p50_ms": percentile(&served_ms, 0.5), "served_p99_ms": percentile(&served_ms, 0.99),
        "served_max_ms": served_ms.last().copied().unwrap_or(0.0),
        "policy_trials": enforced_ms.len(),
        "policy_enforced_p50_ms": percentile(&enforced_ms, 0.5),
        "policy_enforced_max_ms": enforced_ms.last().copied().unwrap_or(0.0),
        "deleted_404_p50_ms": percentile(&deleted_ms, 0.5), "deleted_404_p99_ms": percentile(&deleted_ms, 0.99),
    })
}

/// `kubectl patch` of a ThrottlePolicy's limit down to 1 request a minute ->
/// the first 429 of the API using it, `trials` times (the limit raised again
/// and served with 200 between trials).
async fn policy_patches(cluster: &Cluster, s: &Stage, trials: usize) -> Vec<f64> {
    let policy = |requests: u32| {
        json!({ "apiVersion": "tollgate.dev/v1alpha1", "kind": "ThrottlePolicy", "metadata": { "name": "bench-limit" },
                "spec": { "limit": { "requests": requests, "per": "1m" } } })
    };
    apply_manifest(&cluster.client, &s.ns, &policy(1_000_000)).await.expect("ThrottlePolicy");
    let mut api = api_manifest("limited", "/limited", &s.backend_addr);
    api["spec"]["throttling"] = json!({ "policy": "bench-limit" });
    apply_manifest(&cluster.client, &s.ns, &api).await.expect("ApiDeployment");
    let path = "/limited/v1/accounts";
    until_status(&s.gateway, path, 200, Duration::from_secs(60));
    let mut out = Vec::new();
    for limit in [1u32, 1_000_000].repeat(trials) {
        let patch = json!({ "spec": { "limit": { "requests": limit } } }).to_string();
        let started = Instant::now();
        let args: [&str; 9] = ["patch", "-n", &s.ns, "tp", "bench-limit", "--type", "merge", "-p", &patch];
        let (ok, text) = run_tool(cluster, "kubectl", &args, None);
        assert!(ok, "kubectl patch failed: {text}");
        if limit == 1 {
            until_status(&s.gateway, path, 429, Duration::from_secs(60));
            out.push(started.elapsed().as_secs_f64() * 1e3);
        } else {
            until_status(&s.gateway, path, 200, Duration::from_secs(60));
        }
    }
    out.sort_by(f64::total_cmp);
    out
}

/// Polls `path` on the gateway until it answers `status`; the time it took.
fn until_status(gateway: &Gateway, path: &str, status: u16, within: Duration) -> Duration {
    let started = Instant::now();
    while gateway.get(path) != status {
        assert!(started.elapsed() < within, "{path} did not answer {status} within {within:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
    started.elapsed()
}

/// `n` ApiDeployments at once, one deletion among them, an operator restart.
async fn operator_scale(cluster: &Cluster, n: usize) -> Value {
    let mut s = stage(cluster, "bench-scale").await;
    let operator_pid = s.operator.proc.pid().expect("operator pid");
    let rss_idle = memory_mib(operator_pid).0;
    eprintln!("bench-cluster: {n} ApiDeployments at once");
    let ar = tollgate_resource("ApiDeployment").expect("kind");
    let api: Api<DynamicObject> = Api::namespaced_with(cluster.client.clone(), &s.ns, &ar);
    let names: BTreeSet<String> = (0..n).map(|i| format!("scale-{i}")).collect();
    let started = Instant::now();
    let sampler = {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let st = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut peak: f64 = 0.0;
            while !st.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(memory_mib(operator_pid).0);
                std::thread::sleep(Duration::from_millis(100));
            }
            peak
        });
        (stop, handle)
    };
    // Deployed is counted from a watch (a list of thousands of objects every
    // few milliseconds would load the API server more than the operator does).
    let deployed_at = {
        let (api, names) = (api.clone(), names.clone());
        tokio::spawn(async move {
            let mut done = BTreeSet::new();
            let mut events = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
            while let Some(ev) = events.next().await {
                let objs = match ev {
                    Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => vec![o],
                    _ => continue,
                };
                for o in objs {
                    let Some(name) = o.metadata.name.clone().filter(|n| names.contains(n)) else { continue };
                    if deployed(&o) {
                        done.insert(name);
                    } else {
                        done.remove(&name);
                    }
                }
                if done.len() == names.len() {
                    return Instant::now();
                }
            }
            panic!("the ApiDeployment watch ended");
        })
    };
    let results: Vec<_> = futures::stream::iter(names.iter().map(|name| {
        let i: usize = name.trim_start_matches("scale-").parse().expect("index");
        (name.clone(), i)
    }))
    .map(|(name, i)| {
        let client = cluster.client.clone();
        let ns = s.ns.clone();
        let manifest = api_manifest(&name, &format!("/scale/{i}"), &s.backend_addr);
        async move { apply_manifest(&client, &ns, &manifest).await.map_err(|e| e.to_string()) }
    })
    .buffer_unordered(32)
    .collect()
    .await;
    let created = started.elapsed();
    let failures: Vec<_> = results.into_iter().filter_map(Result::err).collect();
    assert!(failures.is_empty(), "{} creates failed, first: {}", failures.len(), failures[0]);
    let all_deployed = tokio::time::timeout(Duration::from_secs(900), deployed_at)
        .await
        .unwrap_or_else(|_| panic!("not every ApiDeployment Deployed within 15 min:\n{}", s.operator.proc.log_tail()))
        .expect("watch task")
        - started;
    let last = format!("/scale/{}/v1/accounts", n - 1);
    until_status(&s.gateway, &last, 200, Duration::from_secs(60));
    let all_served = started.elapsed();
    let rss_loaded = memory_mib(operator_pid).0;

    // One deletion among them: until its route answers 404.
    let victim = n / 2;
    let path = format!("/scale/{victim}/v1/accounts");
    assert_eq!(s.gateway.get(&path), 200, "{path} served before the deletion");
    let t = Instant::now();
    api.delete(&format!("scale-{victim}"), &Default::default()).await.expect("delete");
    until_status(&s.gateway, &path, 404, Duration::from_secs(60));
    let delete_to_404 = t.elapsed();

    sampler.0.store(true, std::sync::atomic::Ordering::Relaxed);
    let rss_peak_sampled = sampler.1.join().unwrap_or(0.0);
    let (rss_after, rss_hwm) = memory_mib(operator_pid);
    let written = std::fs::read_dir(s.folder.join("apis")).map(|d| d.count()).unwrap_or(0);
    let unexpected_errors = s.operator.unexpected_errors();

    // A restart over a folder that already holds the plan writes nothing.
    s.operator.proc.signal("TERM");
    assert_eq!(s.operator.proc.wait_exit(Duration::from_secs(30)), Some(0), "operator exit");
    let restarted = Instant::now();
    s.operator = Operator::start(&s.spec);
    let replanned = eventually(Duration::from_secs(300), "the restarted operator planned the folder", || async {
        let planned = s.operator.metric("tollgate_operator_reconciles_total{controller=\"artifacts\"}");
        let busy = s.operator.metric("tollgate_operator_reconciles_in_flight{controller=\"artifacts\"}");
        if planned >= 1.0 && busy == 0.0 {
            Ok(restarted.elapsed())
        } else {
            Err(format!("planned {planned}, busy {busy}"))
        }
    })
    .await;
    let restart_written = s.operator.metric("tollgate_operator_artifacts_written_total")
        + s.operator.metric("tollgate_operator_artifacts_removed_total");
    let _ = &s.work;
    json!({
        "apis": n,
        "create_s": created.as_secs_f64(),
        "all_deployed_s": all_deployed.as_secs_f64(),
        "deployed_after_last_create_s": (all_deployed - created).as_secs_f64(),
        "last_served_s": all_served.as_secs_f64(),
        "delete_to_404_ms": delete_to_404.as_secs_f64() * 1e3,
        "artifact_files": written,
        "rss_idle_mib": rss_idle,
        "rss_loaded_mib": rss_loaded,
        "rss_peak_mib": rss_peak_sampled.max(rss_after),
        "rss_hwm_mib": rss_hwm,
        "rss_after_mib": rss_after,
        "unexpected_reconcile_errors": unexpected_errors,
        "restart_replanned_s": replanned.as_secs_f64(),
        "restart_artifact_writes": restart_written,
    })
}
