//! KeyManager reconciler: the status writer. The artifact controller plans
//! the folder of the ApiManager a KeyManager binds to (the plan writes
//! `keymanagers/<ns>_<name>.yaml` there) and publishes the KeyManager's
//! Accepted verdict; this controller writes it. A finalizer keeps the
//! object until its artifact is out of the folder, so gateways stop
//! trusting a deleted issuer even when no ApiDeployment names it.

use std::{sync::Arc, time::Duration};

use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
    runtime::controller::Action,
};
use serde_json::json;
use tollgate_crds::{
    API_VERSION, KeyManager,
    conditions::{self, reasons},
    key_manager::KeyManagerStatus,
};

use super::{
    Context, FIELD_MANAGER, error_policy as shared_error_policy, failure_key, manager_ref, reconcile_with_finalizer,
};
use crate::{
    artifacts,
    error::{Error, Result},
    plan::{Verdict, key_manager_file, manager_of},
    status,
};

const CONTROLLER: &str = "keymanager";

pub async fn reconcile(km: Arc<KeyManager>, ctx: Arc<Context>) -> Result<Action> {
    reconcile_with_finalizer(km, ctx, CONTROLLER, apply, cleanup).await
}

pub fn error_policy(km: Arc<KeyManager>, error: &Error, ctx: Arc<Context>) -> Action {
    shared_error_policy(&*km, error, &ctx, CONTROLLER, FAILURES)
}

/// Failure-counter prefix.
const FAILURES: &str = "km";

async fn apply(km: &KeyManager, ctx: &Context) -> Result<Action> {
    let target = manager_of(km);
    let key = (km.namespace().unwrap_or_default(), km.name_any());
    if ctx.managers.get(&manager_ref(&target)).is_none_or(|m| m.metadata.deletion_timestamp.is_some()) {
        let verdict =
            Verdict::no(reasons::API_MANAGER_NOT_FOUND, format!("ApiManager {}/{} not found", target.0, target.1));
        write_status(km, &verdict, ctx).await?;
        ctx.failures.reset(&failure_key(FAILURES, km));
        return Ok(Action::requeue(Duration::from_secs(600)));
    }
    match ctx.decisions.key_manager(&key) {
        Some(d) if d.is_for(km.uid().as_deref(), km.metadata.generation, &target) => {
            write_status(km, &d.value, ctx).await?;
            ctx.failures.reset(&failure_key(FAILURES, km));
            Ok(Action::requeue(Duration::from_secs(600)))
        }
        // Not planned at this generation yet: the event that made this
        // generation has the artifact controller plan it, and it queues this
        // object once it has published. (Asking it again here would only
        // postpone a debounced burst.)
        _ => Ok(Action::requeue(Duration::from_secs(30))),
    }
}

async fn cleanup(km: &KeyManager, ctx: &Context) -> Result<Action> {
    let target = manager_of(km);
    let (ns, name) = (km.namespace().unwrap_or_default(), km.name_any());
    if ctx.managers.get(&manager_ref(&target)).is_none() {
        return Ok(Action::await_change());
    }
    let dir = artifacts::manager_dir(&ctx.config.artifact_dir, &target.0, &target.1);
    let lock = ctx.folders.lock_for(&dir);
    let holds = lock.lock().await.holds(&key_manager_file(&ns, &name));
    match holds {
        Some(false) => {
            let accepted = km
                .status
                .as_ref()
                .and_then(|s| status::find(&s.conditions, conditions::ACCEPTED))
                .is_some_and(|c| c.status == "True");
            if accepted {
                ctx.event(km, false, "ArtifactRemoved", "the gateways no longer trust this issuer".into()).await;
            }
            Ok(Action::await_change())
        }
        _ => Err(Error::Pending(format!(
            "the artifact of KeyManager {ns}/{name} is still in the folder of {}/{}",
            target.0, target.1
        ))),
    }
}

async fn write_status(km: &KeyManager, verdict: &Verdict, ctx: &Context) -> Result<()> {
    let previous = km.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    let generation = km.metadata.generation;
    let new = KeyManagerStatus {
        observed_generation: generation,
        conditions: vec![status::condition(previous, conditions::ACCEPTED, verdict, generation)],
    };
    let unchanged = km.status.as_ref().is_some_and(|s| {
        s.observed_generation == new.observed_generation && status::same_conditions(&s.conditions, &new.conditions)
    });
    if unchanged {
        return Ok(());
    }
    let api: Api<KeyManager> = Api::namespaced(ctx.client.clone(), &km.namespace().unwrap_or_default());
    let patch = json!({ "apiVersion": API_VERSION, "kind": "KeyManager", "status": new });
    ctx.may_write()?;
    api.patch_status(&km.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch)).await?;
    ctx.metrics.status_writes.get_or_create(&crate::metrics::ControllerLabels { controller: CONTROLLER }).inc();
    let was = status::find(previous, conditions::ACCEPTED);
    if was.is_none_or(|c| c.reason != verdict.reason || (c.status == "True") != verdict.ok) {
        ctx.event(km, !verdict.ok, verdict.reason, verdict.message.clone()).await;
    }
    Ok(())
}
