//! Lease-based leader election: only the holder of the Lease runs the
//! controllers. Losing the Lease ends the process, so a restarted replica
//! starts again as a follower with clean state.

use std::time::Duration;

use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;

pub struct Leadership {
    pub changes: watch::Receiver<bool>,
    pub task: tokio::task::JoinHandle<kube_lease_manager::Result<kube_lease_manager::LeaseManager>>,
}

pub async fn elect(
    client: Client,
    namespace: &str,
    name: &str,
    identity: &str,
    duration_seconds: u64,
) -> anyhow::Result<Leadership> {
    let manager = LeaseManagerBuilder::new(client, name)
        .with_namespace(namespace)
        .with_identity(identity)
        .with_duration(duration_seconds)
        .with_grace((duration_seconds / 3).max(1))
        .with_field_manager("tollgate-operator-lease")
        .build()
        .await?;
    let (changes, task) = manager.watch().await;
    Ok(Leadership { changes, task })
}

/// Wait until this replica leads.
pub async fn until_leading(changes: &mut watch::Receiver<bool>) -> anyhow::Result<()> {
    while !*changes.borrow_and_update() {
        changes.changed().await.map_err(|_| anyhow::anyhow!("leader election stopped"))?;
    }
    Ok(())
}

/// Resolves when leadership is lost (or the election task ends).
pub async fn until_lost(changes: &mut watch::Receiver<bool>) {
    loop {
        if changes.changed().await.is_err() {
            return;
        }
        if !*changes.borrow_and_update() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
