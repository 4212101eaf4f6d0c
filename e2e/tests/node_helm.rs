//! On the real node (make e2e-node): the README's "On Kubernetes" steps with
//! real pods, images, volumes, Services and DNS. `helm install` of the chart
//! with the images of `make images`, on hostPath volumes kubelet leaves
//! root-owned (the opt-in fix-permissions steps of the chart and of the
//! ApiManager make them usable); a single-node pattern serves an API through
//! its Service to a backend found by its DNS name; the containers run as the
//! images' user with read-only roots and no capabilities; what the store
//! holds (applications, API keys, the search index) and the key manager's
//! signing key survive the pod; another operator pod takes over from a deleted
//! leader and rewrites nothing; `helm uninstall` leaves what the README says.

mod node_support;

use std::{os::unix::fs::MetadataExt, path::PathBuf};

use k8s_openapi::api::{
    apps::v1::Deployment,
    coordination::v1::Lease,
    core::v1::{PersistentVolume, PersistentVolumeClaim, Pod},
};
use kube::api::{Api, DeleteParams, ListParams};
use node_support::{
    ADMIN_HEADERS, OPERATOR_PODS, WAIT, all_in_one_yaml, api_yaml, backend_yaml, cluster_ip, condition, installed,
    kubectl_apply, ready_pod, uninstall, until_true,
};
use serde_json::Value;
use tollgate_e2e::stack::{artifact_snapshot, eventually};

/// The value of the metric line `name` (exact series), NaN when absent.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

/// The files under `dir`, as paths relative to it.
fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else if let Ok(rel) = p.strip_prefix(dir) {
                out.push(rel.display().to_string());
            }
        }
    }
    out
}

async fn bound_volume(client: &kube::Client, ns: &str, claim: &str) -> PathBuf {
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let volume = eventually(WAIT, &format!("claim {claim} Bound"), || async {
        let pvc = pvcs.get(claim).await.map_err(|e| e.to_string())?;
        pvc.spec.and_then(|s| s.volume_name).filter(|v| !v.is_empty()).ok_or_else(|| "unbound".to_string())
    })
    .await;
    let pv: PersistentVolume = Api::all(client.clone()).get(&volume).await.expect("persistent volume");
    PathBuf::from(pv.spec.and_then(|s| s.host_path).expect("hostPath").path)
}

#[tokio::test]
async fn helm_install_and_a_single_node_pattern_serve_from_real_pods_on_root_owned_volumes() {
    // helm install, as the README says, plus the opt-in step for storage
    // that applies no fsGroup (hostPath).
    let t = installed("node-helm").await;
    let (cluster, node, client, ns) = (&t.cluster, t.node.clone(), t.cluster.client.clone(), t.ns.clone());
    let (volume, operator_pods, holder) = (&t.volume, t.operator_pods.clone(), t.holder.clone());
    assert!(operator_pods.contains(&holder), "the lease holder {holder} is one of {operator_pods:?}");
    let meta = std::fs::metadata(&volume.dir).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (65532, 65532), "the chart's step gave the artifact volume to the operator");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);

    // A backend found by its DNS name: busybox httpd serving a ConfigMap.
    let manifests = all_in_one_yaml(&[]);
    kubectl_apply(cluster, &ns, &backend_yaml(1));
    kubectl_apply(cluster, &ns, &manifests);
    kubectl_apply(cluster, &ns, &api_yaml(&ns, "accounts", "/open-banking/aisp", "v3.1", &[]));

    let gateway_pod = ready_pod(&pods, "apim-0", None).await;
    let api = until_true(&client, &ns, "ApiDeployment", "accounts", "Deployed").await;
    assert_eq!(api["status"]["url"], "/open-banking/aisp/v3.1");
    for claim in ["database-apim-0", "search-index-apim-0"] {
        let folder = bound_volume(&client, &ns, claim).await;
        let meta = std::fs::metadata(&folder).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (65532, 65532), "{claim}: the ApiManager's step gave it to the gateway");
    }

    // Through the Service, inside the node's network.
    let gateway_ip = cluster_ip(&client, &ns, "apim").await;
    let body = eventually(WAIT, "an API call through the gateway's Service", || {
        let node = node.clone();
        async move {
            match node.request((gateway_ip, 8280).into(), "GET", "/open-banking/aisp/v3.1/accounts/1", &[], "").await {
                Ok((200, body)) => Ok(body),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    assert!(body.contains(r#""AccountId":"1""#), "{body}");

    // The containers as the node runs them.
    let ours: Vec<String> =
        pods.list(&ListParams::default()).await.unwrap().items.into_iter().filter_map(|p| p.metadata.uid).collect();
    let of_this_test = |program: &str| -> Vec<_> {
        node.container_processes(program).into_iter().filter(|p| ours.iter().any(|uid| p.in_pod(uid))).collect()
    };
    let gateways = of_this_test("/usr/local/bin/tollgate-gateway");
    assert_eq!(gateways.len(), 1, "{gateways:?}");
    let operators = of_this_test("/usr/local/bin/tollgate-operator");
    assert_eq!(operators.len(), 2, "{operators:?}");
    for p in gateways.iter().chain(&operators) {
        assert_eq!((p.uid, p.gid), (65532, 65532), "{p:?}");
        assert!(p.read_only_root, "read-only root file system: {p:?}");
        assert_eq!(p.cap_eff, 0, "no capabilities: {p:?}");
    }

    // The store's data survives the pod.
    let management = std::net::SocketAddr::from((gateway_ip, 9763));
    let auth = ADMIN_HEADERS;
    let created = eventually(WAIT, "an application created", || {
        let node = node.clone();
        async move {
            match node.request(management, "POST", "/api/v1/applications", &auth, r#"{"name":"tpp-one"}"#).await {
                Ok((201, body)) => Ok(body),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    let app: Value = serde_json::from_str(&created).unwrap();
    let app_id = app["id"].as_str().unwrap().to_string();
    let get = |path: String| {
        let node = node.clone();
        async move {
            match node.request(management, "GET", &path, &auth, "").await {
                Ok((200, body)) => Ok(body),
                other => Err(format!("GET {path}: {other:?}")),
            }
        }
    };
    let (status, body) = node
        .request(
            management,
            "POST",
            &format!("/api/v1/applications/{app_id}/keys"),
            &auth,
            r#"{"environment":"production"}"#,
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");
    let key_id = serde_json::from_str::<Value>(&body).unwrap()["id"].as_str().unwrap().to_string();
    // The search index answers and is on its volume; the key manager's key id.
    let found = eventually(WAIT, "the search index finds the API", || get("/api/v1/apis?q=aisp".into())).await;
    assert!(found.contains(&format!("{ns}/accounts")), "{found}");
    let index_folder = bound_volume(&client, &ns, "search-index-apim-0").await;
    let index_files = |dir: &std::path::Path| -> Vec<String> {
        let mut names: Vec<String> = walk(dir).into_iter().filter(|n| !n.ends_with(".lock")).collect();
        names.sort();
        names
    };
    let index_before = index_files(&index_folder);
    assert!(index_before.iter().any(|n| n.ends_with("meta.json")), "a search index on its volume: {index_before:?}");
    let kids = |jwks: &str| -> Vec<String> {
        let v: Value = serde_json::from_str(jwks).unwrap_or_default();
        v["keys"].as_array().into_iter().flatten().filter_map(|k| k["kid"].as_str().map(str::to_string)).collect()
    };
    let kids_before = kids(&eventually(WAIT, "the key manager's keys", || get("/oauth2/jwks".into())).await);
    assert!(!kids_before.is_empty());

    pods.delete("apim-0", &DeleteParams::default()).await.expect("delete the gateway pod");
    ready_pod(&pods, "apim-0", gateway_pod.metadata.uid.as_deref()).await;
    let listed =
        eventually(WAIT, "the application after the pod was replaced", || get("/api/v1/applications".into())).await;
    assert!(listed.contains(&app_id), "{listed}");
    let keys = get(format!("/api/v1/applications/{app_id}/keys")).await.unwrap();
    assert!(keys.contains(&key_id), "the API key survives: {keys}");
    let found = get("/api/v1/apis?q=aisp".into()).await.unwrap();
    assert!(found.contains(&format!("{ns}/accounts")), "{found}");
    let index_after = index_files(&index_folder);
    assert!(
        index_before.iter().all(|f| index_after.contains(f)),
        "the index files were kept, not rebuilt: {index_before:?} -> {index_after:?}"
    );
    let kids_after = kids(&get("/oauth2/jwks".into()).await.unwrap());
    assert_eq!(kids_after, kids_before, "the same signing key after the restart: tokens issued before still verify");
    let manager = until_true(&client, &ns, "ApiManager", "apim", "Ready").await;
    assert_eq!(condition(&manager, "Degraded").map(|c| c.0), Some("False".into()), "{manager}");

    // Operator failover: another pod takes the lease over when the leader's
    // pod is deleted, reconciles everything and rewrites nothing.
    let folder = volume.dir.join(&ns).join("apim");
    let before = artifact_snapshot(&folder);
    assert!(before.keys().any(|p| p.ends_with(format!("apis/{ns}_accounts.yaml"))), "{before:?}");
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let deleted = std::time::Instant::now();
    pods.delete(&holder, &DeleteParams::default()).await.expect("delete the leading operator pod");
    // The standby, or the pod that replaces the deleted one, whichever asks first.
    let leader = eventually(WAIT, "another operator pod leads", || async {
        let lease = leases.get("tollgate-operator").await.map_err(|e| e.to_string())?;
        let now = lease.spec.and_then(|s| s.holder_identity).unwrap_or_default();
        if now.is_empty() || now == holder { Err(format!("holder {now:?}")) } else { Ok(now) }
    })
    .await;
    // Logged, not asserted (a loaded machine may be slow); leaseDurationSeconds is 15.
    eprintln!("operator failover: {leader} leads {:?} after {holder} was deleted", deleted.elapsed());
    let leader_ip: std::net::IpAddr = eventually(WAIT, "the new leader's address", || async {
        let pod = pods.get(&leader).await.map_err(|e| e.to_string())?;
        pod.status.and_then(|s| s.pod_ip).filter(|ip| !ip.is_empty()).ok_or_else(|| "no IP yet".to_string())
    })
    .await
    .parse()
    .unwrap();
    let metrics = std::net::SocketAddr::from((leader_ip, 8080));
    let text = eventually(WAIT, "the new leader reconciled everything and is idle", || {
        let node = node.clone();
        async move {
            let text = node.request(metrics, "GET", "/metrics", &[], "").await.map_err(|e| e.to_string())?.1;
            let reconciled = ["apideployment", "apimanager"]
                .iter()
                .all(|c| metric(&text, &format!("tollgate_operator_reconciles_total{{controller=\"{c}\"}}")) >= 1.0);
            let idle = ["tollgate_operator_queue_depth", "tollgate_operator_reconciles_in_flight"]
                .iter()
                .all(|m| metric(&text, &format!("{m}{{controller=\"apideployment\"}}")) == 0.0);
            if reconciled && idle { Ok(text) } else { Err(text.lines().filter(|l| l.contains("reconcil")).collect()) }
        }
    })
    .await;
    assert_eq!(metric(&text, "tollgate_operator_artifacts_written_total"), 0.0, "nothing rewritten");
    assert_eq!(metric(&text, "tollgate_operator_artifacts_removed_total"), 0.0, "nothing removed");
    assert_eq!(artifact_snapshot(&folder), before, "no artifact changed (same inodes and mtimes)");
    node_support::operators_ready(cluster, &ns).await;

    // Uninstall in the README's order: Tollgate objects while the operator
    // runs, then the release; the claim stays (keepOnUninstall).
    uninstall(cluster, &ns, t.release);
    eventually(WAIT, "the operator pods gone", || async {
        let left =
            pods.list(&ListParams::default().labels(OPERATOR_PODS)).await.map_err(|e| e.to_string())?.items.len();
        if left == 0 { Ok(()) } else { Err(format!("{left} left")) }
    })
    .await;
    assert!(deployments.get_opt("tollgate-operator").await.unwrap().is_none());
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    assert!(pvcs.get_opt("tollgate-artifacts").await.unwrap().is_some(), "the artifact claim is kept");
}
