//! Operator configuration: command-line flags, each with an environment
//! variable fallback.

use std::{net::SocketAddr, path::PathBuf};

use clap::Parser;

/// The gateway image of this release: the chart's default repository, the
/// workspace version as the tag (also the chart's appVersion).
pub const DEFAULT_GATEWAY_IMAGE: &str = concat!("ghcr.io/tollgate-dev/tollgate-gateway:", env!("CARGO_PKG_VERSION"));

/// Command-line flags; every flag also reads its environment variable.
#[derive(Debug, Clone, Parser)]
#[command(name = "tollgate-operator", version, about = "Tollgate Kubernetes operator")]
pub struct Config {
    /// Folder behind the ReadWriteMany artifact volume; artifacts are written
    /// to <artifact-dir>/<namespace>/<apimanager>/.
    #[arg(long, env = "TOLLGATE_ARTIFACT_DIR", default_value = "/var/lib/tollgate/artifacts")]
    pub artifact_dir: PathBuf,
    /// Name of the artifact PersistentVolumeClaim the gateway pods mount
    /// (read-only). It must exist in every namespace that holds an ApiManager.
    #[arg(long, env = "TOLLGATE_ARTIFACT_CLAIM", default_value = "tollgate-artifacts")]
    pub artifact_claim: String,
    /// Namespaces to watch (comma separated); all namespaces when empty.
    #[arg(long, env = "TOLLGATE_WATCH_NAMESPACES", value_delimiter = ',')]
    pub watch_namespaces: Vec<String>,
    /// Gateway image (repository:tag) for ApiManagers that set no spec.image.
    #[arg(long, env = "TOLLGATE_GATEWAY_IMAGE", default_value = DEFAULT_GATEWAY_IMAGE)]
    pub gateway_image: String,
    /// Take a Lease before acting, so only one operator replica writes.
    #[arg(long, env = "TOLLGATE_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// Namespace of the leader-election Lease (default: the pod's namespace,
    /// from POD_NAMESPACE, else "default").
    #[arg(long, env = "TOLLGATE_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// Name of the leader-election Lease.
    #[arg(long, env = "TOLLGATE_LEASE_NAME", default_value = "tollgate-operator")]
    pub lease_name: String,
    /// Seconds the Lease stays valid without renewal; a new leader takes over
    /// at most this long after the old one stops.
    #[arg(long, env = "TOLLGATE_LEASE_DURATION_SECONDS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(2..=300))]
    pub lease_duration_seconds: u64,
    /// Identity in the Lease (default: the pod name from POD_NAME, else the host name and process id).
    #[arg(long, env = "TOLLGATE_IDENTITY")]
    pub identity: Option<String>,
    /// Address of the metrics and health endpoints (/metrics, /healthz, /readyz).
    #[arg(long, env = "TOLLGATE_METRICS", default_value = "0.0.0.0:8080")]
    pub metrics: SocketAddr,
    /// Objects of each kind reconciled at the same time.
    #[arg(long, env = "TOLLGATE_CONCURRENCY", default_value_t = 4)]
    pub concurrency: u16,
    /// Seconds the gateways get to drain on shutdown (their --drain-seconds);
    /// pods get a 5 s preStop pause, then this, plus 5 s of margin.
    #[arg(long, env = "TOLLGATE_GATEWAY_DRAIN_SECONDS", default_value_t = 20)]
    pub gateway_drain_seconds: u32,

    /// Ask each Ready pod of an ApiManager (its plain management port,
    /// `GET /status/dependencies`) whether it reaches its database and
    /// Redis, and say so in the ApiManager's conditions. Turn off where the
    /// operator may not connect to the pods (a NetworkPolicy) or the pods'
    /// addresses lead nowhere (fake nodes).
    #[arg(long, env = "TOLLGATE_POD_STATUS_PROBES", default_value_t = true, action = clap::ArgAction::Set)]
    pub pod_status_probes: bool,
}

impl Config {
    pub fn lease_namespace(&self) -> String {
        self.lease_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok().filter(|s| !s.is_empty()))
            .unwrap_or_else(|| "default".to_string())
    }

    pub fn identity(&self) -> String {
        self.identity.clone().or_else(|| std::env::var("POD_NAME").ok().filter(|s| !s.is_empty())).unwrap_or_else(
            || {
                let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
                format!("{}-{}", host.trim(), std::process::id())
            },
        )
    }

    /// Splits `repository:tag` (a registry port is not mistaken for a tag).
    pub fn default_image(&self) -> (String, String) {
        split_image(&self.gateway_image)
    }
}

pub fn split_image(image: &str) -> (String, String) {
    match image.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo.to_string(), tag.to_string()),
        _ => (image.to_string(), "latest".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_split_keeps_registry_port() {
        assert_eq!(split_image("reg:5000/tollgate/gw:1.2"), ("reg:5000/tollgate/gw".into(), "1.2".into()));
        assert_eq!(split_image("reg:5000/tollgate/gw"), ("reg:5000/tollgate/gw".into(), "latest".into()));
        assert_eq!(split_image("gw"), ("gw".into(), "latest".into()));
    }

    #[test]
    fn flags_and_defaults() {
        let c = Config::try_parse_from(["op", "--artifact-dir", "/a", "--watch-namespaces", "x,y"]).unwrap();
        assert_eq!(c.artifact_dir, PathBuf::from("/a"));
        assert_eq!(c.watch_namespaces, vec!["x", "y"]);
        assert!(c.leader_election);
        let c = Config::try_parse_from(["op", "--leader-election", "false"]).unwrap();
        assert!(!c.leader_election);
        assert!(Config::try_parse_from(["op", "--metrics", "nope"]).is_err());
    }

    /// The release version lives in one place (the workspace's Cargo.toml):
    /// the chart's appVersion, which tags its images, must match it, and so
    /// must the operator's default gateway image.
    #[test]
    fn chart_app_version_and_default_image_follow_the_workspace_version() {
        let chart =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/tollgate/Chart.yaml")).unwrap();
        let app_version = chart
            .lines()
            .find_map(|l| l.strip_prefix("appVersion:"))
            .map(|v| v.trim().trim_matches('"').to_string())
            .expect("appVersion in Chart.yaml");
        assert_eq!(app_version, env!("CARGO_PKG_VERSION"), "charts/tollgate/Chart.yaml appVersion");
        let values =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/tollgate/values.yaml")).unwrap();
        assert!(
            values.contains("repository: ghcr.io/tollgate-dev/tollgate-gateway\n"),
            "the chart's gateway repository"
        );
        assert_eq!(split_image(DEFAULT_GATEWAY_IMAGE), ("ghcr.io/tollgate-dev/tollgate-gateway".into(), app_version));
        let c = Config::try_parse_from(["op"]).unwrap();
        assert_eq!(c.gateway_image, DEFAULT_GATEWAY_IMAGE);
    }
}
