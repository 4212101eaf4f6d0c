//! The Tollgate processes of an e2e test: the operator (as a local process
//! authenticated as a ServiceAccount that has exactly the chart's RBAC
//! rules), gateways reading its artifact folder, and a sample backend.
//! Everything listens on 127.0.0.1; nothing dials Service or Pod addresses.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    authentication::v1::TokenRequest,
    core::v1::{PersistentVolume, PersistentVolumeClaim, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding},
};
use kube::{
    Api, Client, Config,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

use crate::{Cluster, FIELD_MANAGER, error_message, repo_root, yaml_to_json};

/// ClusterRole holding the chart's operator rules (shared by the tests).
pub const OPERATOR_CLUSTER_ROLE: &str = "tollgate-operator-e2e";
/// Name of the artifact claim the operator tells gateway pods to mount.
pub const ARTIFACT_CLAIM: &str = "tollgate-artifacts";

/// A binary of the workspace, built by `make e2e` before the tests run
/// (the debug build; `TOLLGATE_E2E_PROFILE=release` picks the release
/// build, as the benchmarks do).
pub fn binary(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join("target"));
    let profile = std::env::var("TOLLGATE_E2E_PROFILE").ok().filter(|p| !p.is_empty()).unwrap_or("debug".into());
    let path = target.join(&profile).join(name);
    assert!(
        path.is_file(),
        "{} is missing: build it first (`cargo build -p tollgate-operator -p tollgate-gateway`; `make e2e` does)",
        path.display()
    );
    path
}

/// A TCP port on 127.0.0.1 that nothing listens on, for a child process to
/// bind. Chosen in 10000..20000, below the kernel's ephemeral range
/// (ip_local_port_range, 32768.. by default; the local cluster's own ports
/// are 20000..32000): a port from `bind(0)` can be taken as the local port
/// of some outgoing connection before the child binds it, one from here
/// cannot. Never hands out one port twice in a process.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const BASE: u32 = 10_000;
    const SPAN: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    // Start at a pid- and time-derived offset so that concurrent test
    // processes walk different parts of the range.
    let seed = std::process::id().wrapping_mul(7919)
        ^ std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let _ = NEXT.compare_exchange(u32::MAX, seed % SPAN, Ordering::AcqRel, Ordering::Acquire);
    for _ in 0..SPAN {
        let port = (BASE + NEXT.fetch_add(1, Ordering::AcqRel) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free TCP port in {BASE}..{}", BASE + SPAN)
}

/// A child process, killed when dropped; its output goes to a log file.
pub struct Proc {
    child: Option<Child>,
    pub name: String,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Proc {
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = cmd
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc { child: Some(child), name: name.into(), log }
    }

    /// SIGKILL, no chance to clean up (a crash).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Log lines that contain `needle`.
    pub fn log_lines(&self, needle: &str) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines().filter(|l| l.contains(needle)).collect::<Vec<_>>().join("\n")
    }

    /// The process id (None once killed).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends a signal (by name: STOP, CONT, TERM, ...).
    pub fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let ok = Command::new("kill").arg(format!("-{sig}")).arg(c.id().to_string()).status();
            assert!(ok.is_ok_and(|s| s.success()), "kill -{sig} {}", c.id());
        }
    }

    /// Waits for the process to exit; its exit code (None: still running
    /// after `timeout`, or killed by a signal).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        let c = self.child.as_mut()?;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = c.try_wait() {
                self.child = None;
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The last lines of the log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            // SIGTERM first so the process can release what it holds.
            let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.kill();
    }
}

/// Minimal HTTP/1.1 request to a loopback address: (status, body).
pub fn http(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    request(addr, method, path, &[], "")
}

/// [`http`] with request headers and a body.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    write!(s, "{head}\r\n{body}")?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

/// Status of a GET, 0 when the connection fails.
pub fn get_status(addr: SocketAddr, path: &str) -> u16 {
    http(addr, "GET", path).map(|r| r.0).unwrap_or(0)
}

fn wait_port(addr: SocketAddr, what: &str, proc: &mut Proc) {
    let deadline = Instant::now() + CONDITION_FLOOR;
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(proc.is_running(), "{what} exited:\n{}", proc.log_tail());
        assert!(Instant::now() < deadline, "{what} is not listening on {addr}:\n{}", proc.log_tail());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The shortest deadline a condition wait gets.
pub const CONDITION_FLOOR: Duration = Duration::from_secs(120);

/// Polls `check` every 100 ms until it gives a value; panics with `what`
/// (and the last observation) after `timeout`, never sooner than
/// [`CONDITION_FLOOR`]: a deadline only bounds a hang, so a short one cannot
/// fail a test on a loaded machine. How fast a change takes effect is
/// measured by `make bench` (bench_cluster), not here.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let timeout = timeout.max(CONDITION_FLOOR);
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(last) if Instant::now() >= deadline => panic!("{what}: not within {timeout:?}; last: {last}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Waits until events with each of `reasons` exist in `ns` (the operator
/// publishes them off its reconciles, so shortly after what they report).
pub async fn wait_for_events(client: &kube::Client, ns: &str, reasons: &[&str]) {
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), ns);
    eventually(Duration::from_secs(10), "the events", || async {
        let seen: Vec<String> = events
            .list(&Default::default())
            .await
            .map_err(|e| e.to_string())?
            .items
            .into_iter()
            .filter_map(|e| e.reason)
            .collect();
        match reasons.iter().find(|r| !seen.iter().any(|x| x == *r)) {
            None => Ok(()),
            Some(r) => Err(format!("event {r} missing: {seen:?}")),
        }
    })
    .await;
}

/// The sample backend (tollgate-echo) on a free loopback port.
pub fn backend(dir: &Path, name: &str) -> (Proc, SocketAddr) {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let mut cmd = Command::new(binary("tollgate-echo"));
    cmd.args([addr.to_string(), name.to_string()]);
    let mut p = Proc::spawn("tollgate-echo", cmd, dir.join(format!("echo-{}.log", addr.port())));
    wait_port(addr, "tollgate-echo", &mut p);
    (p, addr)
}

/// A gateway process serving `config_dir` (an ApiManager's artifact folder).
pub struct Gateway {
    pub proc: Proc,
    pub http: SocketAddr,
    pub management: SocketAddr,
}

impl Gateway {
    pub fn start(config_dir: &Path, work: &Path, extra: &[&str]) -> Gateway {
        let port = || -> SocketAddr { format!("127.0.0.1:{}", free_port()).parse().expect("addr") };
        let (http_addr, https, management, management_tls) = (port(), port(), port(), port());
        let mut cmd = Command::new(binary("tollgate-gateway"));
        cmd.arg("--config-dir")
            .arg(config_dir)
            .args(["--http", &http_addr.to_string(), "--https", &https.to_string()])
            .args(["--management", &management.to_string(), "--management-tls", &management_tls.to_string()])
            .args(["--threads", "1", "--rescan-interval", "0.5", "--data-dir"])
            .arg(work.join(format!("gateway-data-{}", http_addr.port())))
            .args(extra);
        let mut proc = Proc::spawn("tollgate-gateway", cmd, work.join(format!("gateway-{}.log", http_addr.port())));
        wait_port(management, "tollgate-gateway", &mut proc);
        Gateway { proc, http: http_addr, management }
    }

    pub fn get(&self, path: &str) -> u16 {
        get_status(self.http, path)
    }
}

/// Deletes cluster-scoped objects when dropped (best effort, own runtime).
struct ClusterScoped {
    config: Config,
    items: Vec<(&'static str, String)>,
}

impl Drop for ClusterScoped {
    fn drop(&mut self) {
        if std::env::var(crate::KEEP_NAMESPACES_ENV).is_ok_and(|v| v == "1") || self.items.is_empty() {
            return;
        }
        let (config, items) = (self.config.clone(), std::mem::take(&mut self.items));
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            rt.block_on(async move {
                let client = Client::try_from(config).ok()?;
                for (kind, name) in items {
                    let dp = DeleteParams::background();
                    let r = match kind {
                        "ClusterRoleBinding" => {
                            Api::<ClusterRoleBinding>::all(client.clone()).delete(&name, &dp).await.map(|_| ())
                        }
                        _ => Api::<PersistentVolume>::all(client.clone()).delete(&name, &dp).await.map(|_| ()),
                    };
                    if let Err(e) = r {
                        eprintln!("warning: could not delete {kind} {name}: {}", error_message(&e));
                    }
                }
                Some(())
            })
        })
        .join();
    }
}

/// The operator's rules from the chart (`charts/tollgate/files/operator-rules.yaml`).
pub struct OperatorRules {
    /// Bound cluster-wide or per watched namespace.
    pub rules: Value,
    pub read_rules: Value,
    pub namespace_rules: Value,
    /// Secret existence checks, bound per namespace.
    pub secret_rules: Value,
    /// Leader election, in the operator's namespace.
    pub lease_rules: Value,
}

pub fn operator_rules() -> OperatorRules {
    let path = repo_root().join("charts/tollgate/files/operator-rules.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let doc = yaml_to_json(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    OperatorRules {
        rules: doc["rules"].clone(),
        read_rules: doc["readRules"].clone(),
        namespace_rules: doc["namespaceRules"].clone(),
        secret_rules: doc["secretRules"].clone(),
        lease_rules: doc["leaseRules"].clone(),
    }
}

async fn apply<K>(api: &Api<K>, name: &str, obj: Value)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&obj))
        .await
        .unwrap_or_else(|e| panic!("apply {name}: {}", error_message(&e)));
}

/// Binds `role_kind`/`role` to `subjects` in `ns` with a RoleBinding named `name`.
async fn role_binding(client: &Client, ns: &str, name: &str, role_kind: &str, role: &str, subjects: &Value) {
    apply(
        &Api::<RoleBinding>::namespaced(client.clone(), ns),
        name,
        json!({ "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": { "name": name, "namespace": ns },
                "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role },
                "subjects": subjects }),
    )
    .await;
}

/// A Role named `name` with `rules` in `ns`, bound to `subjects`.
async fn bound_role(client: &Client, ns: &str, name: &str, rules: &Value, subjects: &Value) {
    apply(
        &Api::<Role>::namespaced(client.clone(), ns),
        name,
        json!({ "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": { "name": name, "namespace": ns }, "rules": rules }),
    )
    .await;
    role_binding(client, ns, name, "Role", name, subjects).await;
}

/// A ServiceAccount with the operator's RBAC and a kubeconfig that
/// authenticates as it (TokenRequest), so the operator process is held to
/// exactly the rules the chart ships.
pub struct OperatorAccess {
    pub kubeconfig: PathBuf,
    _cleanup: ClusterScoped,
}

impl OperatorAccess {
    /// `namespaces[0]` holds the ServiceAccount and the Lease. With
    /// `cluster_wide` the rules are bound cluster-wide (ClusterRoleBinding),
    /// else by a RoleBinding in each namespace.
    pub async fn create(cluster: &Cluster, namespaces: &[&str], cluster_wide: bool, work: &Path) -> OperatorAccess {
        let client = &cluster.client;
        let home = namespaces[0];
        let rules = operator_rules();
        let read_role = format!("{OPERATOR_CLUSTER_ROLE}-read");
        let ns_role = format!("{OPERATOR_CLUSTER_ROLE}-namespaces");
        for (name, r) in
            [(OPERATOR_CLUSTER_ROLE, &rules.rules), (&read_role, &rules.read_rules), (&ns_role, &rules.namespace_rules)]
        {
            apply(
                &Api::<ClusterRole>::all(client.clone()),
                name,
                json!({ "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                        "metadata": { "name": name }, "rules": r }),
            )
            .await;
        }
        let sa = "tollgate-operator";
        apply(
            &Api::<ServiceAccount>::namespaced(client.clone(), home),
            sa,
            json!({ "apiVersion": "v1", "kind": "ServiceAccount", "metadata": { "name": sa, "namespace": home } }),
        )
        .await;
        let subject = json!([{ "kind": "ServiceAccount", "name": sa, "namespace": home }]);
        let mut cleanup = ClusterScoped { config: cluster.config.clone(), items: vec![] };
        if cluster_wide {
            // Everything cluster-wide, namespace labels included.
            for role in [OPERATOR_CLUSTER_ROLE, &read_role, &ns_role] {
                let name = format!("{home}-{role}");
                apply(
                    &Api::<ClusterRoleBinding>::all(client.clone()),
                    &name,
                    json!({ "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                            "metadata": { "name": name },
                            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role },
                            "subjects": subject }),
                )
                .await;
                cleanup.items.push(("ClusterRoleBinding", name));
            }
        } else {
            for ns in namespaces {
                role_binding(client, ns, "tollgate-operator", "ClusterRole", OPERATOR_CLUSTER_ROLE, &subject).await;
                role_binding(client, ns, "tollgate-operator-read", "ClusterRole", &read_role, &subject).await;
            }
        }
        for ns in namespaces {
            bound_role(client, ns, "tollgate-operator-secrets", &rules.secret_rules, &subject).await;
        }
        bound_role(client, home, "tollgate-operator-lease", &rules.lease_rules, &subject).await;

        let tr: TokenRequest = serde_json::from_value(json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": { "expirationSeconds": 3600 }
        }))
        .expect("TokenRequest");
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), home);
        let token = sas
            .create_token_request(sa, &PostParams::default(), &tr)
            .await
            .unwrap_or_else(|e| panic!("TokenRequest for {home}/{sa}: {}", error_message(&e)))
            .status
            .expect("a token")
            .token;
        let kubeconfig = work.join(format!("operator-{home}.kubeconfig"));
        write_token_kubeconfig(&cluster.config, &token, &kubeconfig);
        OperatorAccess { kubeconfig, _cleanup: cleanup }
    }
}

fn write_token_kubeconfig(admin: &Config, token: &str, path: &Path) {
    use base64::Engine;
    let ca: String = admin
        .root_cert
        .iter()
        .flatten()
        .map(|der| {
            let b64 = base64::engine::general_purpose::STANDARD.encode(der);
            let lines: Vec<String> =
                b64.as_bytes().chunks(64).map(|c| String::from_utf8_lossy(c).into_owned()).collect();
            format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n", lines.join("\n"))
        })
        .collect();
    let mut cluster = json!({ "server": admin.cluster_url.to_string().trim_end_matches('/') });
    if ca.is_empty() {
        cluster["insecure-skip-tls-verify"] = json!(admin.accept_invalid_certs);
    } else {
        cluster["certificate-authority-data"] = json!(base64::engine::general_purpose::STANDARD.encode(ca));
    }
    let doc = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{ "name": "e2e", "cluster": cluster }],
        "users": [{ "name": "tollgate-operator", "user": { "token": token } }],
        "contexts": [{ "name": "operator", "context": { "cluster": "e2e", "user": "tollgate-operator" } }],
        "current-context": "operator",
    });
    std::fs::write(path, serde_json::to_string_pretty(&doc).expect("json")).expect("write kubeconfig");
}

/// A ReadWriteMany PersistentVolume on the host folder the operator writes,
/// pre-bound to the claim [`ARTIFACT_CLAIM`] in `namespace` (one such PV per
/// namespace, all on the same folder: how shared NFS storage is offered to
/// several namespaces).
pub struct ArtifactVolume {
    _cleanup: ClusterScoped,
}

impl ArtifactVolume {
    /// Only the PersistentVolume, pre-bound to `claim` in `namespace` (for a
    /// claim someone else creates, e.g. the Helm chart).
    pub async fn volume_only(cluster: &Cluster, namespace: &str, claim: &str, host_dir: &Path) -> ArtifactVolume {
        let pv_name = format!("{namespace}-artifacts");
        apply(
            &Api::<PersistentVolume>::all(cluster.client.clone()),
            &pv_name,
            json!({ "apiVersion": "v1", "kind": "PersistentVolume",
                    "metadata": { "name": pv_name, "labels": { "tollgate.dev/e2e": "true" } },
                    "spec": { "capacity": { "storage": "1Gi" }, "accessModes": ["ReadWriteMany"],
                              "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                              "hostPath": { "path": host_dir.to_string_lossy(), "type": "DirectoryOrCreate" },
                              "claimRef": { "namespace": namespace, "name": claim } } }),
        )
        .await;
        ArtifactVolume {
            _cleanup: ClusterScoped { config: cluster.config.clone(), items: vec![("PersistentVolume", pv_name)] },
        }
    }

    pub async fn create(cluster: &Cluster, namespace: &str, host_dir: &Path) -> ArtifactVolume {
        let pv_name = format!("{namespace}-artifacts");
        let pvs: Api<PersistentVolume> = Api::all(cluster.client.clone());
        apply(
            &pvs,
            &pv_name,
            json!({ "apiVersion": "v1", "kind": "PersistentVolume",
                    "metadata": { "name": pv_name, "labels": { "tollgate.dev/e2e": "true" } },
                    "spec": { "capacity": { "storage": "1Gi" }, "accessModes": ["ReadWriteMany"],
                              "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                              "hostPath": { "path": host_dir.to_string_lossy(), "type": "DirectoryOrCreate" },
                              "claimRef": { "namespace": namespace, "name": ARTIFACT_CLAIM } } }),
        )
        .await;
        let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(cluster.client.clone(), namespace);
        apply(
            &pvcs,
            ARTIFACT_CLAIM,
            json!({ "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                    "metadata": { "name": ARTIFACT_CLAIM, "namespace": namespace },
                    "spec": { "accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": pv_name,
                              "resources": { "requests": { "storage": "1Gi" } } } }),
        )
        .await;
        ArtifactVolume {
            _cleanup: ClusterScoped { config: cluster.config.clone(), items: vec![("PersistentVolume", pv_name)] },
        }
    }
}

/// The gateway image the operator puts in pod specs: `TOLLGATE_E2E_GATEWAY_IMAGE`,
/// else a placeholder (kwok never pulls images).
pub fn gateway_image() -> String {
    std::env::var("TOLLGATE_E2E_GATEWAY_IMAGE")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "registry.local/tollgate-gateway:e2e".into())
}

/// Runs `program args...` with the cluster's kubeconfig; returns (success, stdout + stderr).
pub fn run_tool(cluster: &Cluster, program: &str, args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let kubeconfig = match &cluster.source {
        crate::KubeconfigSource::Env(v) => v.clone(),
        crate::KubeconfigSource::Local(p) => p.display().to_string(),
    };
    let mut cmd = Command::new(program);
    cmd.args(args).env("KUBECONFIG", kubeconfig).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = cmd.spawn().unwrap_or_else(|e| {
        panic!("cannot run {program}: {e} (the local control plane's tools are put on PATH by `make e2e`)")
    });
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(input.as_bytes()).expect("write stdin");
    }
    let out = child.wait_with_output().expect("wait");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// [`run_tool`] that must succeed; returns its output.
pub fn tool(cluster: &Cluster, program: &str, args: &[&str]) -> String {
    let (ok, out) = run_tool(cluster, program, args, None);
    assert!(ok, "{program} {} failed:\n{out}", args.join(" "));
    out
}

/// A tollgate-operator process.
pub struct Operator {
    pub proc: Proc,
    pub metrics: SocketAddr,
}

/// One operator (held to the chart's RBAC, no leader election) watching
/// one namespace and writing artifacts under `<work>/artifacts`; the guards
/// clean up when it is dropped.
pub struct WatchingOperator {
    pub operator: Operator,
    pub artifacts: PathBuf,
    _access: OperatorAccess,
    _volume: Option<ArtifactVolume>,
}

impl WatchingOperator {
    pub async fn start(cluster: &Cluster, ns: &str, work: &Path) -> WatchingOperator {
        Self::start_with(cluster, ns, work, true).await
    }

    /// With `claim` false the namespace gets no artifact claim (the
    /// ApiManager reports it missing).
    pub async fn start_with(cluster: &Cluster, ns: &str, work: &Path, claim: bool) -> WatchingOperator {
        let artifacts = work.join("artifacts");
        let access = OperatorAccess::create(cluster, &[ns], false, work).await;
        let volume = if claim { Some(ArtifactVolume::create(cluster, ns, &artifacts).await) } else { None };
        let operator = Operator::start(&OperatorSpec {
            kubeconfig: access.kubeconfig.clone(),
            artifact_dir: artifacts.clone(),
            namespaces: vec![ns.to_string()],
            identity: "op".into(),
            leader_election: false,
            work: work.to_path_buf(),
        });
        WatchingOperator { operator, artifacts, _access: access, _volume: volume }
    }
}

/// How to run an operator process.
#[derive(Clone)]
pub struct OperatorSpec {
    pub kubeconfig: PathBuf,
    pub artifact_dir: PathBuf,
    pub namespaces: Vec<String>,
    pub identity: String,
    pub leader_election: bool,
    pub work: PathBuf,
}

impl Operator {
    pub fn start(spec: &OperatorSpec) -> Operator {
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let mut cmd = Command::new(binary("tollgate-operator"));
        cmd.env("KUBECONFIG", &spec.kubeconfig)
            .env(
                "RUST_LOG",
                // The benchmarks log what a production operator would.
                std::env::var("TOLLGATE_E2E_OPERATOR_LOG").unwrap_or_else(|_| "info,tollgate_operator=debug".into()),
            )
            .arg("--artifact-dir")
            .arg(&spec.artifact_dir)
            .args(["--watch-namespaces", &spec.namespaces.join(",")])
            .args(["--lease-namespace", &spec.namespaces[0], "--lease-duration-seconds", "4"])
            .args(["--identity", &spec.identity, "--metrics", &metrics.to_string()])
            .args(["--leader-election", if spec.leader_election { "true" } else { "false" }])
            .args(["--gateway-image", &gateway_image()])
            // kwok's pods have addresses that lead nowhere: nothing may be sent there.
            .args(["--pod-status-probes", "false"]);
        let log = spec.work.join(format!("operator-{}-{}.log", spec.identity, metrics.port()));
        let mut proc = Proc::spawn("tollgate-operator", cmd, log);
        wait_port(metrics, "tollgate-operator", &mut proc);
        Operator { proc, metrics }
    }

    /// Reconcile errors other than conflicts with a concurrent writer (a
    /// stale cache: retried at once, part of normal operation).
    pub fn unexpected_errors(&self) -> f64 {
        self.metric("tollgate_operator_reconcile_errors_total") - self.metric_matching("reason=\"conflict\"")
    }

    /// The /metrics text. Panics (with the log tail) when the process does
    /// not answer: a dead operator must not read as "0 errors".
    fn metrics_text(&self) -> String {
        match http(self.metrics, "GET", "/metrics") {
            Ok((200, body)) => body,
            Ok((status, body)) => panic!("operator /metrics answered {status}: {body}"),
            Err(e) => panic!("operator /metrics unreachable ({e}); exited? log:\n{}", self.proc.log_tail()),
        }
    }

    fn metric_matching(&self, needle: &str) -> f64 {
        let body = self.metrics_text();
        body.lines()
            .filter(|l| l.starts_with("tollgate_operator_reconcile_errors_total") && l.contains(needle))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// The value of a metric line that starts with `prefix` (0 when absent).
    pub fn metric(&self, prefix: &str) -> f64 {
        let body = self.metrics_text();
        body.lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
    }
}

/// The artifacts of a manager's folder (`apis/`, `policies/`): inode and
/// modification time of each file, to tell "rewritten" from "left alone".
pub fn artifact_snapshot(dir: &Path) -> std::collections::BTreeMap<PathBuf, (u64, i128)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = std::collections::BTreeMap::new();
    for sub in ["apis", "policies"] {
        for e in std::fs::read_dir(dir.join(sub)).into_iter().flatten().flatten() {
            let Ok(m) = e.metadata() else { continue };
            out.insert(e.path(), (m.ino(), i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec())));
        }
    }
    out
}
