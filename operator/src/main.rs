//! tollgate-operator: reconciles ApiManager, ApiDeployment and ThrottlePolicy.
//!
//! The reconcilers land with the operator milestone; today the binary parses
//! its configuration, checks it and exits.

use std::path::PathBuf;

use clap::Parser;

/// Command-line flags; every flag also reads its environment variable.
#[derive(Debug, Parser)]
#[command(name = "tollgate-operator", version, about = "Tollgate Kubernetes operator")]
struct Args {
    /// Folder behind the ReadWriteMany artifact volume; artifacts are written
    /// to <artifact-dir>/<namespace>/<apimanager>/.
    #[arg(long, env = "TOLLGATE_ARTIFACT_DIR", default_value = "/var/lib/tollgate/artifacts")]
    artifact_dir: PathBuf,
    /// Name of the artifact PersistentVolumeClaim the gateways mount.
    #[arg(long, env = "TOLLGATE_ARTIFACT_CLAIM", default_value = "tollgate-artifacts")]
    artifact_claim: String,
    /// Namespaces to watch (comma separated); all when empty.
    #[arg(long, env = "TOLLGATE_WATCH_NAMESPACES", value_delimiter = ',')]
    watch_namespaces: Vec<String>,
    /// Default gateway image for ApiManagers that set none.
    #[arg(long, env = "TOLLGATE_GATEWAY_IMAGE", default_value = "ghcr.io/tollgate-dev/tollgate-gateway:latest")]
    gateway_image: String,
    /// Take a Lease before writing, so only one replica acts.
    #[arg(long, env = "TOLLGATE_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Address of the metrics and health endpoints.
    #[arg(long, env = "TOLLGATE_METRICS", default_value = "0.0.0.0:8080")]
    metrics: std::net::SocketAddr,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().json().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    let args = Args::parse();
    tracing::info!(?args, "tollgate-operator configuration parsed; reconcilers are not part of this build yet");
    Ok(())
}
