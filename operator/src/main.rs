//! tollgate-operator binary: flags, tracing, health endpoints, leader
//! election, then the controllers.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use clap::Parser;
use mimalloc::MiMalloc;
use tollgate_operator::{config::Config, controllers, http, leader, metrics::Metrics};

/// Planning renders many small documents; mimalloc keeps that cheap.
#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

fn main() -> anyhow::Result<()> {
    // `tollgate-operator fix-permissions ...`: the chart's opt-in init step
    // for an artifact volume that applies no fsGroup (exits when asked for).
    tollgate_volumes::run_if_invoked();
    run()
}

#[tokio::main]
async fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let config = Config::parse();
    let identity = config.identity();
    tracing::info!(
        artifact_dir = %config.artifact_dir.display(),
        artifact_claim = %config.artifact_claim,
        watch_namespaces = ?config.watch_namespaces,
        leader_election = config.leader_election,
        %identity,
        "starting tollgate-operator"
    );
    std::fs::create_dir_all(&config.artifact_dir)
        .map_err(|e| anyhow::anyhow!("artifact dir {}: {e}", config.artifact_dir.display()))?;

    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let health = http::Health { metrics: metrics.clone(), ready: ready.clone() };
    let addr = config.metrics;
    tokio::spawn(async move {
        if let Err(e) = http::serve(addr, health).await {
            tracing::error!(error = %e, "metrics endpoint failed");
            std::process::exit(1);
        }
    });

    let client = kube::Client::try_default().await?;
    // Fail fast with a clear message when the cluster is unreachable.
    let version = client.apiserver_version().await?;
    tracing::info!(kubernetes = %version.git_version, "connected to the API server");
    ready.store(true, Ordering::Release);

    if config.leader_election {
        let settings = leader::Settings {
            namespace: config.lease_namespace(),
            name: config.lease_name.clone(),
            identity: identity.clone(),
            duration: std::time::Duration::from_secs(config.lease_duration_seconds),
        };
        let gate = leader::Gate::closed();
        let (tx, mut changes) = tokio::sync::watch::channel(false);
        let elector = leader::Elector::new(client.clone(), settings.clone());
        let election = tokio::spawn(elector.run(gate.clone(), tx));
        tracing::info!(lease = %format!("{}/{}", settings.namespace, settings.name), "waiting for leadership");
        leader::until_leading(&mut changes).await?;
        tracing::info!("leading: starting controllers");
        metrics.leader.set(1);
        ready.store(false, Ordering::Release);
        tokio::select! {
            r = controllers::run(client.clone(), config, metrics.clone(), identity, gate.clone(), ready.clone()) => r?,
            _ = leader::until_lost(&mut changes, &gate) => {
                metrics.leader.set(0);
                tracing::error!("leadership lost (or not renewed within the renew deadline): exiting so that only the new leader acts");
                std::process::exit(2);
            }
        }
        election.abort();
        leader::Elector::new(client, settings).release().await;
    } else {
        metrics.leader.set(1);
        ready.store(false, Ordering::Release);
        controllers::run(client, config, metrics, identity, leader::Gate::always_open(), ready).await?;
    }
    tracing::info!("tollgate-operator stopped");
    Ok(())
}
