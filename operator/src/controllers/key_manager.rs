//! KeyManager reconciler: re-plans the artifact folder of the ApiManager a
//! KeyManager binds to (the plan writes `keymanagers/<ns>_<name>.yaml` there)
//! and reports Accepted. A finalizer takes the artifact out before the
//! object goes, so gateways stop trusting a deleted issuer even when no
//! ApiDeployment names it.

use std::{sync::Arc, time::Duration};

use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        Controller,
        controller::Action,
        reflector::{ObjectRef, Store},
        watcher,
    },
};
use serde_json::json;
use tollgate_crds::{
    API_VERSION, ApiManager, KeyManager,
    conditions::{self, reasons},
    key_manager::KeyManagerStatus,
};

use super::{
    Context, FIELD_MANAGER,
    api_deployment::{manager_uses_selector, sync_manager},
    artifact_error_policy, failure_key, reconcile_with_finalizer, scoped,
};
use crate::{
    artifacts,
    config::Config,
    error::{Error, Result},
    plan::{Key, Verdict, key_manager_file, manager_of},
    status,
};

const CONTROLLER: &str = "keymanager";

/// The KeyManager controller; an ApiManager change (created, deleted,
/// allowedNamespaces edited) re-reconciles the KeyManagers bound to it.
pub fn controller(
    client: &Client,
    config: &Config,
    key_managers: impl futures::Stream<Item = Result<KeyManager, watcher::Error>> + Send + 'static,
    store: Store<KeyManager>,
) -> Controller<KeyManager> {
    let bound = store.clone();
    Controller::for_stream(key_managers, store).watches(
        scoped::<ApiManager>(client, config),
        watcher::Config::default(),
        move |m: ApiManager| {
            let key = (m.namespace().unwrap_or_default(), m.name_any());
            bound.state().into_iter().filter(|k| manager_of(k) == key).map(|k| ObjectRef::from(&*k)).collect::<Vec<_>>()
        },
    )
}

pub async fn reconcile(km: Arc<KeyManager>, ctx: Arc<Context>) -> Result<Action> {
    reconcile_with_finalizer(km, ctx, CONTROLLER, apply, cleanup).await
}

pub fn error_policy(km: Arc<KeyManager>, error: &Error, ctx: Arc<Context>) -> Action {
    artifact_error_policy(&*km, error, &ctx, CONTROLLER, FAILURES)
}

/// Failure-counter prefix.
const FAILURES: &str = "km";

fn key_of(km: &KeyManager) -> Key {
    (km.namespace().unwrap_or_default(), km.name_any())
}

async fn apply(km: &KeyManager, ctx: &Context) -> Result<Action> {
    let target = manager_of(km);
    let planned = sync_manager(&target, ctx, None).await?;
    resync_former_homes(km, Some(&target), ctx).await?;
    let verdict = match planned {
        None => Verdict::no(reasons::API_MANAGER_NOT_FOUND, format!("ApiManager {}/{} not found", target.0, target.1)),
        Some(mut plan) => match plan.key_managers.remove(&key_of(km)) {
            Some(v) => v,
            // The plan was made from a cache that does not show this
            // KeyManager bound to the manager yet: look again shortly.
            None => return Err(Error::Conflict("the KeyManager cache is behind; planning again".into())),
        },
    };
    write_status(km, &verdict, ctx).await?;
    ctx.failures.reset(&failure_key(FAILURES, km));
    // Namespace labels (allowedNamespaces.from=Selector) are not watched: look again now and then.
    let selector = manager_uses_selector(ctx, &target);
    Ok(Action::requeue(if selector { Duration::from_secs(60) } else { Duration::from_secs(600) }))
}

async fn cleanup(km: &KeyManager, ctx: &Context) -> Result<Action> {
    // The plan leaves out objects being deleted, so syncing removes the artifact.
    sync_manager(&manager_of(km), ctx, None).await?;
    resync_former_homes(km, Some(&manager_of(km)), ctx).await?;
    ctx.event(km, false, "ArtifactRemoved", "the gateways no longer trust this issuer".into()).await;
    Ok(Action::await_change())
}

/// Re-plans the folders of other ApiManagers that still hold this
/// KeyManager's artifact: after its apiManagerRef changed, the former
/// manager's gateways must stop trusting the issuer, and nothing else would
/// re-plan that folder when no ApiDeployment there changes.
async fn resync_former_homes(km: &KeyManager, current: Option<&Key>, ctx: &Context) -> Result<()> {
    let (ns, name) = key_of(km);
    let file = key_manager_file(&ns, &name);
    for m in ctx.managers.state() {
        let key = (m.namespace().unwrap_or_default(), m.name_any());
        if Some(&key) == current {
            continue;
        }
        let path = artifacts::manager_dir(&ctx.config.artifact_dir, &key.0, &key.1).join(&file);
        // When the folder cannot be read, re-plan: that is always safe.
        if tokio::fs::try_exists(&path).await.unwrap_or(true) {
            tracing::info!(keymanager = %format!("{ns}/{name}"), manager = %format!("{}/{}", key.0, key.1), "removing a KeyManager from a former ApiManager");
            sync_manager(&key, ctx, None).await?;
        }
    }
    Ok(())
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
    api.patch_status(&km.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch)).await?;
    ctx.metrics.status_writes.get_or_create(&crate::metrics::ControllerLabels { controller: CONTROLLER }).inc();
    let was = status::find(previous, conditions::ACCEPTED);
    if was.is_none_or(|c| c.reason != verdict.reason || (c.status == "True") != verdict.ok) {
        ctx.event(km, !verdict.ok, verdict.reason, verdict.message.clone()).await;
    }
    Ok(())
}
