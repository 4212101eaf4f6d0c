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

use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};

use crate::{KubeconfigSource, kubeconfig_source};

/// The real node of the cluster the tests run against.
#[derive(Clone, Debug)]
pub struct NodeNet {
    netns: PathBuf,
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
        let state = kubeconfig.parent().unwrap_or(Path::new(".")).join("state.env");
        let text = std::fs::read_to_string(&state).unwrap_or_default();
        let netns = text.lines().find_map(|l| l.strip_prefix("NETNS=")).unwrap_or_else(|| {
            panic!(
                "{} names no network namespace: these tests need the real node \
                 (make e2e-node, or make cluster-up NODE=real)",
                state.display()
            )
        });
        NodeNet { netns: Path::new("/var/run/netns").join(netns), cgroup_root: format!("/{netns}") }
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
        let headers: Vec<(String, String)> = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
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
            let cgroup = std::fs::read_to_string(dir.join("cgroup")).unwrap_or_default();
            if !cgroup.lines().any(|l| l.split(':').nth(2).is_some_and(|p| p.starts_with(&self.cgroup_root))) {
                continue;
            }
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
            });
        }
        found
    }
}
