//! What the real-node tests share: the chart installed as the README says,
//! pods and objects waited for as a user would.

#![allow(dead_code)]

use std::{os::unix::fs::PermissionsExt, path::PathBuf, time::Duration};

use k8s_openapi::api::{
    apps::v1::Deployment,
    coordination::v1::Lease,
    core::v1::{PersistentVolume, Pod, Service},
};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::{Value, json};
use tollgate_e2e::{
    Cluster, repo_root,
    stack::{eventually, run_tool, tool},
    tollgate_resource,
};

pub const OPERATOR_PODS: &str = "app.kubernetes.io/instance=tollgate,app.kubernetes.io/component=operator";
pub const WAIT: Duration = Duration::from_secs(300);

pub fn condition(obj: &Value, type_: &str) -> Option<(String, String)> {
    obj.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| (c["status"].as_str().unwrap_or("").to_string(), c["reason"].as_str().unwrap_or("").to_string()))
}

pub async fn get(client: &kube::Client, ns: &str, kind: &str, name: &str) -> Result<Value, String> {
    let ar = tollgate_resource(kind).expect("kind");
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    let obj = api.get(name).await.map_err(|e| e.to_string())?;
    serde_json::to_value(obj).map_err(|e| e.to_string())
}

/// Waits until the object's condition `type_` is True; returns the object.
pub async fn until_true(client: &kube::Client, ns: &str, kind: &str, name: &str, type_: &str) -> Value {
    eventually(WAIT, &format!("{kind} {name} {type_}"), || async {
        let o = get(client, ns, kind, name).await?;
        match condition(&o, type_) {
            Some((s, _)) if s == "True" => Ok(o),
            other => Err(format!("{other:?} {}", o["status"])),
        }
    })
    .await
}

pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// What a user sees of a pod that is not Ready yet (phase, waiting reasons).
pub fn pod_state(pod: &Pod) -> String {
    let status = pod.status.clone().unwrap_or_default();
    let waiting: Vec<String> = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .filter_map(|c| {
            let w = c.state.as_ref()?.waiting.as_ref()?;
            Some(format!(
                "{}: {} {}",
                c.name,
                w.reason.clone().unwrap_or_default(),
                w.message.clone().unwrap_or_default()
            ))
        })
        .collect();
    format!("{:?} {waiting:?}", status.phase)
}

/// Waits for pod `name` Ready (and, with `not_uid`, for a pod other than
/// that one).
pub async fn ready_pod(pods: &Api<Pod>, name: &str, not_uid: Option<&str>) -> Pod {
    eventually(WAIT, &format!("pod {name} Ready"), || async {
        let pod = pods.get(name).await.map_err(|e| e.to_string())?;
        if not_uid.is_some() && pod.metadata.uid.as_deref() == not_uid {
            return Err("still the deleted pod".into());
        }
        if is_ready(&pod) { Ok(pod) } else { Err(pod_state(&pod)) }
    })
    .await
}

pub async fn cluster_ip(client: &kube::Client, ns: &str, name: &str) -> std::net::IpAddr {
    let svc: Service = Api::namespaced(client.clone(), ns).get(name).await.expect("service");
    svc.spec.and_then(|s| s.cluster_ip).expect("cluster IP").parse().expect("an IP")
}

pub async fn host_path_of(client: &kube::Client, pv: &str) -> PathBuf {
    let pv: PersistentVolume = Api::all(client.clone()).get(pv).await.expect("persistent volume");
    PathBuf::from(pv.spec.and_then(|s| s.host_path).expect("a hostPath volume").path)
}

/// A ReadWriteMany hostPath volume for one release's artifact claim: its
/// folder root-owned with mode 0755, as kubelet makes a new hostPath
/// folder. Removed (object and folder) when dropped.
pub struct ArtifactVolume {
    pub name: String,
    pub dir: PathBuf,
    config: kube::Config,
}

impl ArtifactVolume {
    pub async fn create(cluster: &Cluster, ns: &str) -> ArtifactVolume {
        let name = format!("artifacts-{ns}");
        let dir = std::env::temp_dir().join(format!("tollgate-node-volumes/{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::chown(&dir, Some(0), Some(0)).unwrap();
        let pv: PersistentVolume = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": { "name": name, "labels": { "e2e-volume": ns } },
            "spec": { "storageClassName": "standard", "capacity": { "storage": "1Gi" },
                      "accessModes": ["ReadWriteMany"], "persistentVolumeReclaimPolicy": "Retain",
                      "hostPath": { "path": dir.display().to_string(), "type": "Directory" } }
        }))
        .unwrap();
        Api::<PersistentVolume>::all(cluster.client.clone()).create(&PostParams::default(), &pv).await.expect("pv");
        ArtifactVolume { name, dir, config: cluster.config.clone() }
    }

    /// helm --set arguments that bind the chart's claim to this volume.
    pub fn helm_sets(&self, ns: &str) -> Vec<String> {
        vec!["--set".into(), format!("artifacts.selector.matchLabels.e2e-volume={ns}")]
    }
}

impl Drop for ArtifactVolume {
    fn drop(&mut self) {
        let (name, config) = (self.name.clone(), self.config.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            rt.block_on(async move {
                let client = kube::Client::try_from(config).ok()?;
                Api::<PersistentVolume>::all(client).delete(&name, &DeleteParams::default()).await.ok()
            })
        })
        .join();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The installed release: uninstalled (without waiting) when dropped
/// before [`uninstall`] ran, so a failed test leaves no cluster-wide RBAC of
/// its release behind.
pub struct Release {
    ns: String,
    kubeconfig: String,
    armed: bool,
}

impl Drop for Release {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let _ = std::process::Command::new("helm")
            .args(["uninstall", "tollgate", "-n", &self.ns, "--ignore-not-found"])
            .env("KUBECONFIG", &self.kubeconfig)
            .output();
    }
}

/// `helm install tollgate charts/tollgate -n <ns>` with the artifact claim
/// on `volume` and the opt-in fix-permissions step, plus `extra` helm
/// arguments; waits for both operator replicas Ready and a lease holder.
/// Returns the release, the operator pods' names and the holder.
pub async fn install_chart(
    cluster: &Cluster,
    ns: &str,
    volume: &ArtifactVolume,
    extra: &[&str],
) -> (Release, Vec<String>, String) {
    let chart = repo_root().join("charts/tollgate").display().to_string();
    let mut args: Vec<String> = ["install", "tollgate", &chart, "-n", ns, "--set", "artifacts.fixPermissions=true"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(volume.helm_sets(ns));
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    tool(cluster, "helm", &args);
    let kubeconfig = match &cluster.source {
        tollgate_e2e::KubeconfigSource::Env(v) => v.clone(),
        tollgate_e2e::KubeconfigSource::Local(p) => p.display().to_string(),
    };
    let release = Release { ns: ns.to_string(), kubeconfig, armed: true };
    let (pods, holder) = operators_ready(cluster, ns).await;
    (release, pods, holder)
}

/// What every real-node test starts from: its namespace, an artifact
/// volume, and the chart installed there as the README says. Fields drop
/// in order: the release (uninstalled unless [`uninstall`] ran), the
/// volume, the namespace.
pub struct Installed {
    pub release: Release,
    pub volume: ArtifactVolume,
    pub ns_guard: tollgate_e2e::TestNamespace,
    pub ns: String,
    pub node: tollgate_e2e::node::NodeNet,
    /// The operator pods and the one holding the lease.
    pub operator_pods: Vec<String>,
    pub holder: String,
    pub cluster: Cluster,
}

/// Connects, makes the namespace `tg-e2e-<test>-*` and installs the chart.
pub async fn installed(test: &str) -> Installed {
    let cluster = Cluster::connect().await;
    let node = tollgate_e2e::node::NodeNet::of_cluster();
    let ns_guard = cluster.namespace(test).await;
    let ns = ns_guard.name().to_string();
    let volume = ArtifactVolume::create(&cluster, &ns).await;
    let (release, operator_pods, holder) = install_chart(&cluster, &ns, &volume, &[]).await;
    Installed { release, volume, ns_guard, ns, node, operator_pods, holder, cluster }
}

/// Both operator replicas Ready and one holding the lease.
pub async fn operators_ready(cluster: &Cluster, ns: &str) -> (Vec<String>, String) {
    let client = cluster.client.clone();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let names = eventually(WAIT, "both operator replicas Ready", || async {
        let d = deployments.get("tollgate-operator").await.map_err(|e| e.to_string())?;
        let list = pods.list(&ListParams::default().labels(OPERATOR_PODS)).await.map_err(|e| e.to_string())?.items;
        let ready: Vec<String> = list
            .iter()
            .filter(|p| is_ready(p) && p.metadata.deletion_timestamp.is_none())
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        let updated = d.status.as_ref().and_then(|s| s.updated_replicas).unwrap_or(0);
        if ready.len() == 2 && list.len() == 2 && updated == 2 {
            return Ok(ready);
        }
        let states: Vec<String> =
            list.iter().map(|p| format!("{}: {}", p.metadata.name.clone().unwrap_or_default(), pod_state(p))).collect();
        Err(format!("{} ready; {states:?}", ready.len()))
    })
    .await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
    let holder = eventually(WAIT, "an operator pod holds the lease", || async {
        let lease = leases.get("tollgate-operator").await.map_err(|e| e.to_string())?;
        let holder = lease.spec.and_then(|s| s.holder_identity).unwrap_or_default();
        if names.contains(&holder) { Ok(holder) } else { Err(format!("holder {holder:?}, pods {names:?}")) }
    })
    .await;
    (names, holder)
}

/// `kubectl apply -f -` of `yaml` in `ns`.
pub fn kubectl_apply(cluster: &Cluster, ns: &str, yaml: &str) {
    let (ok, out) = run_tool(cluster, "kubectl", &["-n", ns, "apply", "-f", "-"], Some(yaml));
    assert!(ok, "kubectl apply: {out}");
}

/// A backend found by its DNS name (`bank-backend.<ns>.svc`): busybox
/// httpd serving `{"AccountId":"1",...}` at /bank/accounts/1.
pub fn backend_yaml(replicas: u32) -> String {
    format!(
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
  replicas: {replicas}
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
"#
    )
}

/// The admin token every real-node test's ApiManager uses.
pub const ADMIN_TOKEN: &str = "node-e2e-admin-token-0123456789abcdef";
/// Headers of a JSON call to the management API with that token.
pub const ADMIN_HEADERS: [(&str, &str); 2] =
    [("Authorization", "Bearer node-e2e-admin-token-0123456789abcdef"), ("Content-Type", "application/json")];

/// An ApiDeployment of the manager `apim` whose backend is the bank backend
/// of `ns` (found by its Service's DNS name); `extra`: further lines of its
/// spec (YAML, at the spec's indentation).
pub fn api_yaml(ns: &str, name: &str, context: &str, version: &str, extra: &[&str]) -> String {
    let mut spec = format!("  apiManagerRef: {{name: apim}}\n  context: {context}\n  version: \"{version}\"\n");
    for line in extra {
        spec.push_str(&format!("  {line}\n"));
    }
    format!(
        "---\napiVersion: tollgate.dev/v1alpha1\nkind: ApiDeployment\nmetadata: {{name: {name}}}\nspec:\n{spec}  \
         backend: {{endpoints: [{{url: \"http://bank-backend.{ns}.svc.cluster.local:8080/bank\"}}]}}\n"
    )
}

/// The admin token's Secret (`tollgate-admin`, key `token`).
pub fn admin_secret_yaml() -> String {
    format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: tollgate-admin}}\nstringData: {{token: {ADMIN_TOKEN}}}"
    )
}

/// The admin Secret and an AllInOne ApiManager `apim` using it, with the
/// fix-permissions step (hostPath storage) and `extra` spec lines.
pub fn all_in_one_yaml(extra: &[&str]) -> String {
    let mut spec = String::from(
        "  pattern: AllInOne\n  adminTokenSecretRef: {name: tollgate-admin, key: token}\n  persistence: {fixPermissions: true}\n",
    );
    for line in extra {
        spec.push_str(&format!("  {line}\n"));
    }
    format!(
        "{}\n---\napiVersion: tollgate.dev/v1alpha1\nkind: ApiManager\nmetadata: {{name: apim}}\nspec:\n{spec}",
        admin_secret_yaml()
    )
}

/// The Secrets of the multi-pod patterns: the database and Redis URLs, the
/// admin token and a shared signing key (keys `url`, `url`, `token`,
/// `signing-key.pem`).
pub fn secrets_yaml(db: &str, redis: &str, signing_key: &str) -> String {
    let key = signing_key.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n");
    let admin = admin_secret_yaml();
    format!(
        r#"
---
apiVersion: v1
kind: Secret
metadata: {{name: tollgate-db}}
stringData: {{url: "{db}"}}
---
apiVersion: v1
kind: Secret
metadata: {{name: tollgate-redis}}
stringData: {{url: "{redis}"}}
{admin}
---
apiVersion: v1
kind: Secret
metadata: {{name: tollgate-signing-key}}
stringData:
  signing-key.pem: |
{key}
"#
    )
}

/// Uninstall in the README's order: Tollgate objects while the operator
/// runs, then the release.
pub fn uninstall(cluster: &Cluster, ns: &str, mut release: Release) {
    release.armed = false;
    tool(
        cluster,
        "kubectl",
        &["-n", ns, "delete", "apideployments,keymanagers,throttlepolicies", "--all", "--wait=true", "--timeout=300s"],
    );
    tool(cluster, "kubectl", &["-n", ns, "delete", "apimanagers", "--all", "--wait=true", "--timeout=300s"]);
    tool(cluster, "helm", &["uninstall", "tollgate", "-n", ns, "--wait", "--timeout", "300s"]);
}
