//! On the real node (make e2e-node): the README's "On Kubernetes" steps with
//! real pods, images, volumes, Services and DNS. `helm install` of the chart
//! with the images of `make images`, on hostPath volumes kubelet leaves
//! root-owned (the opt-in fix-permissions steps of the chart and of the
//! ApiManager make them usable); a single-node pattern serves an API through
//! its Service to a backend found by its DNS name; the containers run as the
//! images' user with read-only roots and no capabilities; what the store
//! holds survives the pod; `helm uninstall` leaves what the README says.

use std::{os::unix::fs::MetadataExt, path::PathBuf, time::Duration};

use k8s_openapi::api::{
    apps::v1::Deployment,
    coordination::v1::Lease,
    core::v1::{PersistentVolume, PersistentVolumeClaim, Pod, Service},
};
use kube::api::{Api, DeleteParams, ListParams};
use serde_json::Value;
use tollgate_e2e::{
    Cluster,
    node::NodeNet,
    repo_root,
    stack::{eventually, run_tool, tool},
    tollgate_resource,
};

const ADMIN_TOKEN: &str = "node-e2e-admin-token-0123456789abcdef";
const OPERATOR_PODS: &str = "app.kubernetes.io/instance=tollgate,app.kubernetes.io/component=operator";
const WAIT: Duration = Duration::from_secs(300);

fn condition(obj: &Value, type_: &str) -> Option<(String, String)> {
    obj.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| (c["status"].as_str().unwrap_or("").to_string(), c["reason"].as_str().unwrap_or("").to_string()))
}

async fn get(client: &kube::Client, ns: &str, kind: &str, name: &str) -> Result<Value, String> {
    let ar = tollgate_resource(kind).expect("kind");
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    let obj = api.get(name).await.map_err(|e| e.to_string())?;
    serde_json::to_value(obj).map_err(|e| e.to_string())
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// What a user sees of a pod that is not Ready yet (phase, waiting reasons).
fn pod_state(pod: &Pod) -> String {
    let status = pod.status.clone().unwrap_or_default();
    let waiting: Vec<String> = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .filter_map(|c| {
            let w = c.state.as_ref()?.waiting.as_ref()?;
            Some(format!("{}: {} {}", c.name, w.reason.clone().unwrap_or_default(), w.message.clone().unwrap_or_default()))
        })
        .collect();
    format!("{:?} {waiting:?}", status.phase)
}

async fn ready_pod(pods: &Api<Pod>, name: &str, not_uid: Option<&str>) -> Pod {
    eventually(WAIT, &format!("pod {name} Ready"), || async {
        let pod = pods.get(name).await.map_err(|e| e.to_string())?;
        if not_uid.is_some() && pod.metadata.uid.as_deref() == not_uid {
            return Err("still the deleted pod".into());
        }
        if is_ready(&pod) { Ok(pod) } else { Err(pod_state(&pod)) }
    })
    .await
}

async fn cluster_ip(client: &kube::Client, ns: &str, name: &str) -> std::net::IpAddr {
    let svc: Service = Api::namespaced(client.clone(), ns).get(name).await.expect("service");
    svc.spec.and_then(|s| s.cluster_ip).expect("cluster IP").parse().expect("an IP")
}

/// The host folder of a hostPath PersistentVolume, given back to root with
/// mode 0755 and emptied: what kubelet makes of a new hostPath volume.
async fn root_owned(client: &kube::Client, pv: &str) -> PathBuf {
    let pv: PersistentVolume = Api::all(client.clone()).get(pv).await.expect("persistent volume");
    let path = PathBuf::from(pv.spec.and_then(|s| s.host_path).expect("a hostPath volume").path);
    let _ = std::fs::remove_dir_all(&path);
    std::fs::create_dir_all(&path).unwrap();
    std::os::unix::fs::chown(&path, Some(0), Some(0)).unwrap();
    path
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
    let cluster = Cluster::connect().await;
    let node = NodeNet::of_cluster();
    let client = cluster.client.clone();
    let ns_guard = cluster.namespace("node-helm").await;
    let ns = ns_guard.name().to_string();
    let artifacts = root_owned(&client, "pv-artifacts").await;

    // helm install, as the README says, plus the opt-in step for storage
    // that applies no fsGroup (hostPath).
    let chart = repo_root().join("charts/tollgate").display().to_string();
    tool(&cluster, "helm", &["install", "tollgate", &chart, "-n", &ns, "--set", "artifacts.fixPermissions=true"]);

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    eventually(WAIT, "both operator replicas Ready", || async {
        let d = deployments.get("tollgate-operator").await.map_err(|e| e.to_string())?;
        let ready = d.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0);
        if ready == 2 {
            return Ok(());
        }
        let states: Vec<String> = pods
            .list(&ListParams::default().labels(OPERATOR_PODS))
            .await
            .map_err(|e| e.to_string())?
            .items
            .iter()
            .map(|p| format!("{}: {}", p.metadata.name.clone().unwrap_or_default(), pod_state(p)))
            .collect();
        Err(format!("{ready} ready; {states:?}"))
    })
    .await;
    let operator_pods: Vec<String> = pods
        .list(&ListParams::default().labels(OPERATOR_PODS))
        .await
        .unwrap()
        .items
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    assert_eq!(operator_pods.len(), 2, "{operator_pods:?}");
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let holder = eventually(WAIT, "one operator leads", || async {
        let lease = leases.get("tollgate-operator").await.map_err(|e| e.to_string())?;
        lease.spec.and_then(|s| s.holder_identity).filter(|h| !h.is_empty()).ok_or_else(|| "no holder".into())
    })
    .await;
    assert!(operator_pods.contains(&holder), "the lease holder {holder} is one of {operator_pods:?}");
    let meta = std::fs::metadata(&artifacts).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (65532, 65532), "the chart's step gave the artifact volume to the operator");

    // A backend found by its DNS name: busybox httpd serving a ConfigMap.
    let backend = format!(
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {{name: bank-data}}
data: {{"1": '{{"AccountId":"1","Currency":"GBP"}}'}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: bank-backend}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: bank-backend}}}}
  template:
    metadata: {{labels: {{app: bank-backend}}}}
    spec:
      securityContext: {{runAsUser: 65532, runAsGroup: 65532, runAsNonRoot: true}}
      containers:
      - name: httpd
        image: tollgate.test/busybox:1
        imagePullPolicy: Never
        command: [httpd, -f, -p, "8080", -h, /www]
        ports: [{{containerPort: 8080}}]
        readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 2}}
        volumeMounts: [{{name: data, mountPath: /www/bank/accounts}}]
      volumes: [{{name: data, configMap: {{name: bank-data}}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: bank-backend}}
spec:
  selector: {{app: bank-backend}}
  ports: [{{port: 8080, targetPort: 8080}}]
---
apiVersion: v1
kind: Secret
metadata: {{name: tollgate-admin}}
stringData: {{token: {ADMIN_TOKEN}}}
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiManager
metadata: {{name: apim}}
spec:
  pattern: AllInOne
  adminTokenSecretRef: {{name: tollgate-admin, key: token}}
  persistence: {{fixPermissions: true}}
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiDeployment
metadata: {{name: accounts}}
spec:
  apiManagerRef: {{name: apim}}
  context: /open-banking/aisp
  version: v3.1
  backend:
    endpoints: [{{url: "http://bank-backend.{ns}.svc.cluster.local:8080/bank"}}]
"#
    );
    let (ok, out) = run_tool(&cluster, "kubectl", &["-n", &ns, "apply", "-f", "-"], Some(&backend));
    assert!(ok, "kubectl apply: {out}");

    let gateway_pod = ready_pod(&pods, "apim-0", None).await;
    let api = eventually(WAIT, "ApiDeployment Deployed", || async {
        let a = get(&client, &ns, "ApiDeployment", "accounts").await?;
        match condition(&a, "Deployed") {
            Some((s, _)) if s == "True" => Ok(a),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
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
            match node.request((gateway_ip, 8280).into(), "GET", "/open-banking/aisp/v3.1/accounts/1", &[], "").await
            {
                Ok((200, body)) => Ok(body),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    assert!(body.contains(r#""AccountId":"1""#), "{body}");

    // The containers as the node runs them.
    let gateways = node.container_processes("/usr/local/bin/tollgate-gateway");
    assert_eq!(gateways.len(), 1, "{gateways:?}");
    let operators = node.container_processes("/usr/local/bin/tollgate-operator");
    assert_eq!(operators.len(), 2, "{operators:?}");
    for p in gateways.iter().chain(&operators) {
        assert_eq!((p.uid, p.gid), (65532, 65532), "{p:?}");
        assert!(p.read_only_root, "read-only root file system: {p:?}");
        assert_eq!(p.cap_eff, 0, "no capabilities: {p:?}");
    }

    // The store's data survives the pod.
    let management = std::net::SocketAddr::from((gateway_ip, 9763));
    let auth = [("Authorization", "Bearer node-e2e-admin-token-0123456789abcdef"), ("Content-Type", "application/json")];
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
    pods.delete("apim-0", &DeleteParams::default()).await.expect("delete the gateway pod");
    ready_pod(&pods, "apim-0", gateway_pod.metadata.uid.as_deref()).await;
    let listed = eventually(WAIT, "the application after the pod was replaced", || {
        let node = node.clone();
        async move {
            match node.request(management, "GET", "/api/v1/applications", &auth, "").await {
                Ok((200, body)) => Ok(body),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    assert!(listed.contains(app["id"].as_str().unwrap()), "{listed}");
    let manager = eventually(WAIT, "ApiManager Ready", || async {
        let m = get(&client, &ns, "ApiManager", "apim").await?;
        match condition(&m, "Ready") {
            Some((s, _)) if s == "True" => Ok(m),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(condition(&manager, "Degraded").map(|c| c.0), Some("False".into()), "{manager}");

    // Uninstall in the README's order: Tollgate objects while the operator
    // runs, then the release; the claim stays (keepOnUninstall).
    tool(&cluster, "kubectl", &["-n", &ns, "delete", "apideployment", "accounts", "--wait=true", "--timeout=300s"]);
    tool(&cluster, "kubectl", &["-n", &ns, "delete", "apimanager", "apim", "--wait=true", "--timeout=300s"]);
    tool(&cluster, "helm", &["uninstall", "tollgate", "-n", &ns, "--wait", "--timeout", "300s"]);
    eventually(WAIT, "the operator pods gone", || async {
        let left = pods
            .list(&ListParams::default().labels(OPERATOR_PODS))
            .await
            .map_err(|e| e.to_string())?
            .items
            .len();
        if left == 0 { Ok(()) } else { Err(format!("{left} left")) }
    })
    .await;
    assert!(deployments.get_opt("tollgate-operator").await.unwrap().is_none());
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    assert!(pvcs.get_opt("tollgate-artifacts").await.unwrap().is_some(), "the artifact claim is kept");
}
