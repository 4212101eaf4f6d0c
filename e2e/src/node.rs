//! The real node (`make cluster-up NODE=real`, e2e/cluster/node.sh): its
//! pods and Services have addresses that exist only inside the cluster's
//! network namespace. Tests reach them from a thread that joined that
//! namespace (nothing is sent anywhere else), and look at the containers'
//! processes the way an operator on the node would (/proc).

use std::{
    fs::File,
    net::SocketAddr,
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::TcpStream,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};

use crate::{KubeconfigSource, kubeconfig_source};

/// The real node of the cluster the tests run against.
#[derive(Clone, Debug)]
pub struct NodeNet {
    netns: PathBuf,
    /// The cluster's state folder (target/cluster).
    state_dir: PathBuf,
    /// kubelet's cgroup root: every container process of the node is below it.
    cgroup_root: String,
}

/// What /proc says about one container process.
#[derive(Clone, Debug)]
pub struct ContainerProcess {
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    /// The root file system is mounted read-only.
    pub read_only_root: bool,
    /// Effective capabilities (hex mask from /proc/PID/status).
    pub cap_eff: u64,
    /// Its cgroup path (it holds the pod's uid: `.../pod<uid>/<container>`).
    pub cgroup: String,
}

impl ContainerProcess {
    /// The process belongs to the pod with this uid.
    pub fn in_pod(&self, pod_uid: &str) -> bool {
        self.cgroup.contains(&format!("pod{pod_uid}"))
    }
}

impl NodeNet {
    /// The node of the cluster the kubeconfig names; panics with what to do
    /// when that cluster has no real node.
    pub fn of_cluster() -> NodeNet {
        let kubeconfig = match kubeconfig_source() {
            Ok(KubeconfigSource::Env(v)) => PathBuf::from(v.split(':').next().unwrap_or_default()),
            Ok(KubeconfigSource::Local(p)) => p,
            Err(e) => panic!("{e}"),
        };
        let state_dir = kubeconfig.parent().unwrap_or(Path::new(".")).to_path_buf();
        let state = state_dir.join("state.env");
        let text = std::fs::read_to_string(&state).unwrap_or_default();
        let netns = text.lines().find_map(|l| l.strip_prefix("NETNS=")).unwrap_or_else(|| {
            panic!(
                "{} names no network namespace: these tests need the real node \
                 (make e2e-node, or make cluster-up NODE=real)",
                state.display()
            )
        });
        NodeNet { netns: Path::new("/var/run/netns").join(netns), state_dir, cgroup_root: format!("/{netns}") }
    }

    /// Runs `f` on a thread of its own inside the node's network namespace,
    /// on a current-thread runtime there; returns its result.
    pub async fn run<T, F, Fut>(&self, f: F) -> T
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = T>,
        T: Send + 'static,
    {
        let netns = self.netns.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let ns = File::open(&netns).unwrap_or_else(|e| panic!("{}: {e}", netns.display()));
            move_into_link_name_space(ns.as_fd(), Some(LinkNameSpaceType::Network))
                .unwrap_or_else(|e| panic!("joining {}: {e} (needs root)", netns.display()));
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            let _ = tx.send(rt.block_on(f()));
        });
        rx.await.expect("the thread in the node's namespace panicked (see above)")
    }

    /// The node's address: pods reach services the tests start on the node
    /// (databases, as a managed one would be) at this address.
    pub const ADDRESS: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 99, 0, 1);

    /// Gives the node's image `from` the further name `to` (`ctr images
    /// tag`, in the node's containerd): an image "of another tag".
    pub fn tag_image(&self, from: &str, to: &str) {
        let sock = self.state_dir.join("node/containerd.sock");
        let out = std::process::Command::new("ctr")
            .arg("--address")
            .arg(&sock)
            .args(["-n", "k8s.io", "images", "tag", "--force", from, to])
            .output()
            .expect("ctr");
        assert!(out.status.success(), "ctr images tag {from} {to}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// The network namespace file (for `nsenter --net=`).
    pub fn netns_path(&self) -> &Path {
        &self.netns
    }

    /// A command that runs `program` inside the node's namespace.
    pub fn command(&self, program: &str) -> std::process::Command {
        let mut cmd = std::process::Command::new("nsenter");
        cmd.arg(format!("--net={}", self.netns.display())).arg("--").arg(program);
        cmd
    }

    /// Runs the blocking `f` on a thread of its own inside the namespace.
    pub fn spawn<T, F>(&self, f: F) -> std::thread::JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let netns = self.netns.clone();
        std::thread::spawn(move || {
            let ns = File::open(&netns).unwrap_or_else(|e| panic!("{}: {e}", netns.display()));
            move_into_link_name_space(ns.as_fd(), Some(LinkNameSpaceType::Network))
                .unwrap_or_else(|e| panic!("joining {}: {e} (needs root)", netns.display()));
            f()
        })
    }

    /// Steady load: `clients` threads in the namespace each send GET `path`
    /// to `addr` one after another (a new connection each) until stopped.
    pub fn load(&self, addr: SocketAddr, path: &str, headers: &[(&str, &str)], clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let handles = (0..clients)
            .map(|_| {
                let (stop, path, answered) = (stop.clone(), path.to_string(), answered.clone());
                let headers = owned(headers);
                self.spawn(move || {
                    let mut counts = LoadCounts::default();
                    while !stop.load(Ordering::Relaxed) {
                        let outcome = one_request(addr, &path, &headers);
                        if outcome == Outcome::Status(200) {
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                        counts.add(outcome);
                    }
                    counts
                })
            })
            .collect();
        Load { stop, answered, handles }
    }

    /// [`crate::stack::request`] from inside the node's namespace.
    pub async fn request(
        &self,
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> std::io::Result<(u16, String)> {
        let (method, path, body) = (method.to_string(), path.to_string(), body.to_string());
        let headers = owned(headers);
        self.run(move || async move {
            let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            crate::stack::request(addr, &method, &path, &headers, &body)
        })
        .await
    }

    /// The node's container processes whose program is `program` (the
    /// path the container runs, e.g. /usr/local/bin/tollgate-gateway).
    pub fn container_processes(&self, program: &str) -> Vec<ContainerProcess> {
        let mut found = Vec::new();
        let Ok(entries) = std::fs::read_dir("/proc") else { return found };
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
            let dir = entry.path();
            let Ok(cmdline) = std::fs::read(dir.join("cmdline")) else { continue };
            if cmdline.split(|b| *b == 0).next() != Some(program.as_bytes()) {
                continue;
            }
            let cgroups = std::fs::read_to_string(dir.join("cgroup")).unwrap_or_default();
            let Some(cgroup) = cgroups
                .lines()
                .filter_map(|l| l.splitn(3, ':').nth(2))
                .find(|p| p.starts_with(&self.cgroup_root))
                .map(str::to_string)
            else {
                continue;
            };
            let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
            let field = |name: &str| -> Vec<String> {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.split_whitespace().map(str::to_string).collect())
                    .unwrap_or_default()
            };
            let ids = |v: Vec<String>| v.first().and_then(|s| s.parse().ok()).unwrap_or(u32::MAX);
            let cap_eff = field("CapEff:").first().and_then(|h| u64::from_str_radix(h, 16).ok()).unwrap_or(u64::MAX);
            let mountinfo = std::fs::read_to_string(dir.join("mountinfo")).unwrap_or_default();
            // Fields: id parent major:minor root mount-point options ...
            let read_only_root = mountinfo.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 5 && f[4] == "/" && f[5].split(',').any(|o| o == "ro")
            });
            found.push(ContainerProcess {
                pid,
                uid: ids(field("Uid:")),
                gid: ids(field("Gid:")),
                read_only_root,
                cap_eff,
                cgroup,
            });
        }
        found
    }
}

/// Request headers a thread of its own can take along.
fn owned(headers: &[(&str, &str)]) -> Vec<(String, String)> {
    headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// What happened to one request of a [`Load`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The connection was refused or timed out: the request never left the
    /// client, which tries again (any HTTP client may). The error, and when.
    NotConnected(String),
    /// Connected and sent, then the connection broke before an answer: a
    /// request lost in flight.
    Lost,
    /// An answer with this status.
    Status(u16),
}

fn one_request(addr: SocketAddr, path: &str, headers: &[(String, String)]) -> Outcome {
    let mut s = match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
        Ok(s) => s,
        Err(e) => {
            std::thread::sleep(Duration::from_millis(20));
            let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            return Outcome::NotConnected(format!("{:.3}: {e}", at.as_secs_f64()));
        }
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    if s.write_all(head.as_bytes()).is_err() {
        return Outcome::Lost;
    }
    let mut buf = Vec::new();
    if s.read_to_end(&mut buf).is_err() && buf.is_empty() {
        return Outcome::Lost;
    }
    let text = String::from_utf8_lossy(&buf);
    match text.split(' ').nth(1).and_then(|c| c.parse().ok()) {
        Some(status) if text.starts_with("HTTP/1.1 ") => Outcome::Status(status),
        _ => Outcome::Lost,
    }
}

/// Counts of a [`Load`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadCounts {
    /// Requests sent (connected and written).
    pub sent: u64,
    /// Answered 200.
    pub ok: u64,
    /// Connection attempts refused (retried; not sent).
    pub not_connected: u64,
    /// The first few of those errors, with the time (seconds since the epoch).
    pub connect_errors: Vec<String>,
    /// Sent, no answer.
    pub lost: u64,
    /// Other statuses and how often.
    pub other: BTreeMap<u16, u64>,
}

impl LoadCounts {
    fn add(&mut self, o: Outcome) {
        match o {
            Outcome::NotConnected(e) => {
                self.not_connected += 1;
                if self.connect_errors.len() < 8 {
                    self.connect_errors.push(e);
                }
            }
            Outcome::Lost => {
                self.sent += 1;
                self.lost += 1;
            }
            Outcome::Status(s) => {
                self.sent += 1;
                if s == 200 {
                    self.ok += 1;
                } else {
                    *self.other.entry(s).or_default() += 1;
                }
            }
        }
    }

    fn merge(&mut self, o: LoadCounts) {
        self.sent += o.sent;
        self.ok += o.ok;
        self.not_connected += o.not_connected;
        self.connect_errors.extend(o.connect_errors);
        self.lost += o.lost;
        for (s, n) in o.other {
            *self.other.entry(s).or_default() += n;
        }
    }

    /// Sent requests that got no 200.
    pub fn failed(&self) -> u64 {
        self.sent - self.ok
    }
}

/// Running client threads of [`NodeNet::load`].
pub struct Load {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    handles: Vec<std::thread::JoinHandle<LoadCounts>>,
}

impl Load {
    /// Requests answered 200 so far.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    /// Waits (a condition, polled) until `more` further requests were
    /// answered 200.
    pub async fn until_more_answered(&self, more: u64) {
        let target = self.answered() + more;
        crate::stack::eventually(Duration::from_secs(300), &format!("{more} more requests answered"), || async {
            let now = self.answered();
            if now >= target { Ok(()) } else { Err(format!("{now} of {target}")) }
        })
        .await
    }

    /// Stops the clients and adds up what they saw.
    pub fn stop(mut self) -> LoadCounts {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = LoadCounts::default();
        for h in std::mem::take(&mut self.handles) {
            total.merge(h.join().expect("a load client panicked"));
        }
        total
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Redis on the node's address (a process in the namespace, reached by the
/// pods like a managed Redis); stopped when dropped.
pub struct NodeRedis {
    pub url: String,
    _proc: crate::stack::Proc,
}

impl NodeRedis {
    pub fn start(node: &NodeNet, work: &Path) -> NodeRedis {
        let port = crate::stack::free_port();
        let mut cmd = node.command("redis-server");
        cmd.args(["--bind", &NodeNet::ADDRESS.to_string(), "--port", &port.to_string()]).args([
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
        ]);
        let mut proc = crate::stack::Proc::spawn("redis-server", cmd, work.join("redis.log"));
        let addr = SocketAddr::from((NodeNet::ADDRESS, port));
        let node2 = node.clone();
        let up = node2
            .spawn(move || {
                let deadline = std::time::Instant::now() + crate::stack::CONDITION_FLOOR;
                while std::time::Instant::now() < deadline {
                    if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
                        return true;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                false
            })
            .join()
            .unwrap();
        assert!(up && proc.is_running(), "redis-server did not start:\n{}", proc.log_tail());
        NodeRedis { url: format!("redis://{addr}/0"), _proc: proc }
    }
}

/// PostgreSQL on the node's address, trusting the pods' addresses (a
/// namespace of the test's own); stopped and removed when dropped.
pub struct NodePostgres {
    pub url: String,
    dir: PathBuf,
    node: NodeNet,
}

fn pg_bin(name: &str) -> PathBuf {
    for d in std::fs::read_dir("/usr/lib/postgresql").into_iter().flatten().flatten() {
        let p = d.path().join("bin").join(name);
        if p.exists() {
            return p;
        }
    }
    PathBuf::from(name)
}

impl NodePostgres {
    pub fn start(node: &NodeNet) -> NodePostgres {
        let port = crate::stack::free_port();
        let dir = std::env::temp_dir().join(format!("tollgate-node-pg-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let chown = std::process::Command::new("chown").args(["-R", "postgres:postgres"]).arg(&dir).status();
        assert!(chown.is_ok_and(|s| s.success()), "chown to postgres (make deps installs postgresql)");
        let data = dir.join("data");
        let out = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(pg_bin("initdb"))
            .args(["-D", data.to_str().unwrap(), "-A", "trust", "-U", "tollgate", "--no-sync"])
            .output()
            .expect("initdb");
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        let mut hba = std::fs::OpenOptions::new().append(true).open(data.join("pg_hba.conf")).unwrap();
        writeln!(hba, "host all all 10.0.0.0/8 trust").unwrap();
        let opts = format!(
            "-p {port} -k {} -c listen_addresses={} -c fsync=off -c max_connections=200",
            dir.display(),
            NodeNet::ADDRESS
        );
        let log = dir.join("pg.log");
        let out = node
            .command("runuser")
            .args(["-u", "postgres", "--"])
            .arg(pg_bin("pg_ctl"))
            .args(["-D", data.to_str().unwrap(), "-o", &opts, "-l", log.to_str().unwrap(), "-w", "start"])
            .output()
            .expect("pg_ctl");
        assert!(
            out.status.success(),
            "pg_ctl start: {}{}",
            String::from_utf8_lossy(&out.stdout),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        NodePostgres {
            url: format!("postgres://tollgate@{}:{port}/postgres", NodeNet::ADDRESS),
            dir,
            node: node.clone(),
        }
    }
}

impl Drop for NodePostgres {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let _ = self
            .node
            .command("runuser")
            .args(["-u", "postgres", "--"])
            .arg(pg_bin("pg_ctl"))
            .args(["-D", data.to_str().unwrap(), "-m", "immediate", "-w", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TLS client identity for [`NodeNet::https`]: PEM certificate chain and
/// PEM (PKCS#8) key.
#[derive(Clone, Debug)]
pub struct ClientIdentity {
    pub cert_pem: String,
    pub key_pem: String,
}

impl NodeNet {
    /// One HTTPS/1.1 request from inside the node's namespace to `addr`,
    /// verifying the server as `server_name` against `ca_pem`, presenting
    /// `client` when given: (status, body).
    #[allow(clippy::too_many_arguments)]
    pub async fn https(
        &self,
        addr: SocketAddr,
        server_name: &str,
        ca_pem: &str,
        client: Option<&ClientIdentity>,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Result<(u16, String), String> {
        let (server_name, ca_pem, client) = (server_name.to_string(), ca_pem.to_string(), client.cloned());
        let (method, path, body) = (method.to_string(), path.to_string(), body.to_string());
        let headers = owned(headers);
        self.run(move || async move {
            https_once(addr, &server_name, &ca_pem, client.as_ref(), &method, &path, &headers, &body).await
        })
        .await
    }
}

#[allow(clippy::too_many_arguments)]
async fn https_once(
    addr: SocketAddr,
    server_name: &str,
    ca_pem: &str,
    client: Option<&ClientIdentity>,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: &str,
) -> Result<(u16, String), String> {
    use http_body_util::{BodyExt, Full};
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(c.map_err(|e| err(&e))?).map_err(|e| err(&e))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| err(&e))?
        .with_root_certificates(roots);
    let config = match client {
        Some(id) => {
            let certs = rustls_pemfile::certs(&mut id.cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| err(&e))?;
            let key = rustls_pemfile::private_key(&mut id.key_pem.as_bytes())
                .map_err(|e| err(&e))?
                .ok_or("no private key in the client identity")?;
            builder.with_client_auth_cert(certs, key).map_err(|e| err(&e))?
        }
        None => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::time::timeout(Duration::from_secs(10), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| err(&e))?;
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string()).map_err(|e| err(&e))?;
    let tls = connector.connect(name, tcp).await.map_err(|e| format!("TLS: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await.map_err(|e| err(&e))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = hyper::Request::builder().method(method).uri(path).header(hyper::header::HOST, server_name);
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let req = req.body(Full::new(hyper::body::Bytes::from(body.to_string()))).map_err(|e| err(&e))?;
    let resp = tokio::time::timeout(Duration::from_secs(60), sender.send_request(req))
        .await
        .map_err(|_| "no answer within 60 s".to_string())?
        .map_err(|e| err(&e))?;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.map_err(|e| err(&e))?.to_bytes();
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}
