//! Lease-based leader election: only the holder of the Lease runs the
//! controllers, and it writes only while its hold is fresh.
//!
//! Each replica writes the Lease with its own field manager and an
//! optimistic-concurrency replace (resourceVersion), so two replicas can
//! never both acquire it. A follower takes over a Lease whose record has
//! not changed for `leaseDurationSeconds` of its own (monotonic) time, like
//! client-go's elector, so clocks need not agree. The leader renews every
//! retry period; every write first asks the [`Gate`], which stays open only
//! until the renew deadline (two thirds of the lease duration) after the
//! last successful renewal started. A leader that cannot renew (API server
//! unreachable) or that was stalled (SIGSTOP, a long pause) therefore stops
//! writing before its Lease can expire for anybody else, and stands down
//! (the process exits, a restarted replica starts as a follower).
//!
//! Why not a leader-election crate: kube-lease-manager keeps reporting
//! leadership while renewals fail, which this guarantee rules out; this
//! elector is small and uses kube's typed API.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;

/// Whether this replica may write now.
#[derive(Clone)]
pub struct Gate(Arc<GateInner>);

struct GateInner {
    start: Instant,
    /// Milliseconds after `start` until which writes are allowed; 0: closed;
    /// u64::MAX: always (leader election off).
    open_until_ms: AtomicU64,
}

impl Gate {
    /// A closed gate (a follower, until it leads).
    pub fn closed() -> Gate {
        Gate(Arc::new(GateInner { start: Instant::now(), open_until_ms: AtomicU64::new(0) }))
    }

    /// Always open: leader election is off.
    pub fn always_open() -> Gate {
        Gate(Arc::new(GateInner { start: Instant::now(), open_until_ms: AtomicU64::new(u64::MAX) }))
    }

    fn at(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.0.start).as_millis() as u64
    }

    pub fn may_write(&self) -> bool {
        self.at(Instant::now()) < self.0.open_until_ms.load(Ordering::Acquire)
    }

    /// A renewal that started at `attempt` succeeded.
    fn renewed(&self, attempt: Instant, deadline: Duration) {
        let until = self.at(attempt + deadline);
        self.0.open_until_ms.fetch_max(until, Ordering::AcqRel);
    }

    fn close(&self) {
        self.0.open_until_ms.store(0, Ordering::Release);
    }
}

/// The election's settings.
#[derive(Clone, Debug)]
pub struct Settings {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub duration: Duration,
}

impl Settings {
    /// Writes stop this long after the last renewal started.
    pub fn renew_deadline(&self) -> Duration {
        self.duration * 2 / 3
    }
    /// How often the Lease is tried or renewed.
    pub fn retry(&self) -> Duration {
        (self.duration / 7).max(Duration::from_millis(300))
    }
    fn field_manager(&self) -> String {
        let fm = format!("tollgate-operator-lease-{}", self.identity);
        fm.chars().take(128).collect()
    }
}

/// What this replica last saw of the Lease, and when (its own clock).
struct Observed {
    record: (Option<String>, Option<String>),
    at: Instant,
}

pub struct Elector {
    api: Api<Lease>,
    settings: Settings,
    observed: Option<Observed>,
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

impl Elector {
    pub fn new(client: kube::Client, settings: Settings) -> Elector {
        Elector { api: Api::namespaced(client, &settings.namespace), settings, observed: None }
    }

    /// One attempt to acquire or renew; Ok(true) when this replica holds
    /// the Lease now.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let me = &self.settings.identity;
        let pp = PostParams { field_manager: Some(self.settings.field_manager()), ..Default::default() };
        let seconds = self.settings.duration.as_secs().max(1) as i32;
        let Some(mut lease) = self.api.get_opt(&self.settings.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(self.settings.name.clone()), ..Default::default() },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(now()),
                    renew_time: Some(now()),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&pp, &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let record = (spec.holder_identity.clone(), spec.renew_time.as_ref().map(|t| t.0.to_string()));
        if self.observed.as_ref().is_none_or(|o| o.record != record) {
            self.observed = Some(Observed { record, at: Instant::now() });
        }
        let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty());
        let their_duration = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(seconds).max(1) as u64);
        let expired = self.observed.as_ref().is_some_and(|o| o.at.elapsed() > their_duration);
        let mut new_spec = spec.clone();
        match holder {
            Some(h) if h == me => {}
            Some(_) if !expired => return Ok(false),
            _ => {
                new_spec.holder_identity = Some(me.clone());
                new_spec.acquire_time = Some(now());
                new_spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            }
        }
        new_spec.renew_time = Some(now());
        new_spec.lease_duration_seconds = Some(seconds);
        lease.spec = Some(new_spec);
        // Replace carries the resourceVersion read above: of two replicas
        // racing for it, one gets 409.
        match self.api.replace(&self.settings.name, &pp, &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up (clean shutdown): followers take over at once.
    pub async fn release(&mut self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.settings.name).await else { return };
        let Some(spec) = lease.spec.as_mut() else { return };
        if spec.holder_identity.as_deref() != Some(self.settings.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.renew_time = Some(now());
        let pp = PostParams { field_manager: Some(self.settings.field_manager()), ..Default::default() };
        if let Err(e) = self.api.replace(&self.settings.name, &pp, &lease).await {
            tracing::warn!(error = %e, "could not release the Lease");
        }
    }

    /// Tries and renews for ever: `leading` says whether this replica
    /// holds the Lease, `gate` whether it may write.
    pub async fn run(mut self, gate: Gate, leading: watch::Sender<bool>) {
        let deadline = self.settings.renew_deadline();
        loop {
            let attempt = Instant::now();
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    gate.renewed(attempt, deadline);
                    leading.send_if_modified(|l| !std::mem::replace(l, true));
                }
                Ok(false) => {
                    gate.close();
                    leading.send_if_modified(|l| std::mem::replace(l, false));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not renew or acquire the Lease");
                    if !gate.may_write() {
                        leading.send_if_modified(|l| std::mem::replace(l, false));
                    }
                }
            }
            // A leader whose hold went stale (no renewal within the
            // deadline: errors, or this process was stalled) has lost it.
            if *leading.borrow() && !gate.may_write() {
                leading.send_if_modified(|l| std::mem::replace(l, false));
            }
            tokio::time::sleep(self.settings.retry()).await;
        }
    }
}

/// Wait until this replica leads.
pub async fn until_leading(changes: &mut watch::Receiver<bool>) -> anyhow::Result<()> {
    while !*changes.borrow_and_update() {
        changes.changed().await.map_err(|_| anyhow::anyhow!("leader election stopped"))?;
    }
    Ok(())
}

/// Resolves when leadership is lost, or the gate closes (stale hold).
pub async fn until_lost(changes: &mut watch::Receiver<bool>, gate: &Gate) {
    loop {
        tokio::select! {
            c = changes.changed() => {
                if c.is_err() || !*changes.borrow_and_update() {
                    return;
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                if !gate.may_write() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_opens_until_the_deadline_after_the_renewal_started() {
        let g = Gate::closed();
        assert!(!g.may_write());
        g.renewed(Instant::now(), Duration::from_secs(10));
        assert!(g.may_write());
        // A renewal that started long ago (the process was stalled) does not reopen it.
        g.close();
        g.renewed(Instant::now() - Duration::from_secs(11), Duration::from_secs(10));
        assert!(!g.may_write());
        assert!(Gate::always_open().may_write());
    }

    #[test]
    fn timings_follow_the_lease_duration() {
        let s = Settings {
            namespace: "n".into(),
            name: "l".into(),
            identity: "x".repeat(200),
            duration: Duration::from_secs(15),
        };
        assert_eq!(s.renew_deadline(), Duration::from_secs(10));
        assert_eq!(s.retry().as_millis(), 2142);
        assert_eq!(s.field_manager().len(), 128);
    }
}
