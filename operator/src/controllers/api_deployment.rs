//! ApiDeployment reconciler: the status writer. It writes what the artifact
//! controller decided for this ApiDeployment (published after the folder
//! write that made it true), or "ApiManager not found"; a finalizer keeps
//! the object until its artifact is out of the folder.

use std::{sync::Arc, time::Duration};

use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
    runtime::controller::Action,
};
use serde_json::json;
use tollgate_crds::{
    API_VERSION, ApiDeployment,
    api_deployment::ApiDeploymentStatus,
    conditions::{self, reasons},
};

use super::{
    Context, FIELD_MANAGER, error_policy as shared_error_policy, failure_key, manager_ref, reconcile_with_finalizer,
};
use crate::{
    artifacts,
    error::{Error, Result},
    plan::{Outcome, api_file, manager_key},
    status,
};

const CONTROLLER: &str = "apideployment";

pub async fn reconcile(api: Arc<ApiDeployment>, ctx: Arc<Context>) -> Result<Action> {
    reconcile_with_finalizer(api, ctx, CONTROLLER, apply, cleanup).await
}

pub fn error_policy(api: Arc<ApiDeployment>, error: &Error, ctx: Arc<Context>) -> Action {
    shared_error_policy(&*api, error, &ctx, CONTROLLER, FAILURES)
}

/// Failure-counter prefix.
const FAILURES: &str = "apid";

async fn apply(api: &ApiDeployment, ctx: &Context) -> Result<Action> {
    let key = manager_key(api);
    let api_key = (api.namespace().unwrap_or_default(), api.name_any());
    if ctx.managers.get(&manager_ref(&key)).is_none_or(|m| m.metadata.deletion_timestamp.is_some()) {
        write_status(api, &Outcome::manager_not_found(api), ctx).await?;
        ctx.failures.reset(&failure_key(FAILURES, api));
        return Ok(Action::requeue(Duration::from_secs(600)));
    }
    match ctx.decisions.api(&api_key) {
        Some(d) if d.is_for(api.uid().as_deref(), api.metadata.generation, &key) => {
            write_status(api, &d.value, ctx).await?;
            ctx.failures.reset(&failure_key(FAILURES, api));
            Ok(Action::requeue(Duration::from_secs(600)))
        }
        // Not planned at this generation yet: the event that made this
        // generation has the artifact controller plan it, and it queues this
        // object once it has published. (Asking it again here would only
        // postpone a debounced burst.)
        _ => Ok(Action::requeue(Duration::from_secs(30))),
    }
}

async fn cleanup(api: &ApiDeployment, ctx: &Context) -> Result<Action> {
    let key = manager_key(api);
    let (ns, name) = (api.namespace().unwrap_or_default(), api.name_any());
    if ctx.managers.get(&manager_ref(&key)).is_none() {
        // No manager, no folder of it to clean (the sweeper removes orphans).
        return Ok(Action::await_change());
    }
    let dir = artifacts::manager_dir(&ctx.config.artifact_dir, &key.0, &key.1);
    let lock = ctx.folders.lock_for(&dir);
    let holds = lock.lock().await.holds(&api_file(&ns, &name));
    match holds {
        Some(false) => {
            let had = api.status.as_ref().is_some_and(|s| s.artifact.is_some());
            if had {
                ctx.event(api, false, "ArtifactRemoved", "artifact removed from the gateways".into()).await;
            }
            Ok(Action::await_change())
        }
        // The plan leaves out objects being deleted: the deletion event has
        // it run; look again shortly.
        _ => {
            // A folder that refuses writes is reported, not waited on in silence.
            if let Some(d) = ctx.decisions.api(&(ns.clone(), name.clone()))
                && d.value.deployed.reason == reasons::ARTIFACT_WRITE_FAILED
            {
                write_status(api, &d.value, ctx).await?;
                return Err(Error::Blocked(d.value.deployed.message));
            }
            Err(Error::Pending(format!("the artifact of {ns}/{name} is still in the folder of {}/{}", key.0, key.1)))
        }
    }
}

fn desired_status(api: &ApiDeployment, o: &Outcome) -> ApiDeploymentStatus {
    let previous = api.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    let generation = api.metadata.generation;
    ApiDeploymentStatus {
        observed_generation: generation,
        conditions: vec![
            status::condition(previous, conditions::ACCEPTED, &o.accepted, generation),
            status::condition(previous, conditions::RESOLVED_REFS, &o.resolved_refs, generation),
            status::condition(previous, conditions::DEPLOYED, &o.deployed, generation),
        ],
        url: o.url.clone(),
        artifact: o.revision.clone().map(|r| tollgate_crds::api_deployment::ArtifactStatus { revision: Some(r) }),
    }
}

fn status_matches(api: &ApiDeployment, o: &Outcome) -> bool {
    let want = desired_status(api, o);
    api.status.as_ref().is_some_and(|have| {
        have.observed_generation == want.observed_generation
            && have.url == want.url
            && have.artifact == want.artifact
            && status::same_conditions(&have.conditions, &want.conditions)
    })
}

async fn write_status(api: &ApiDeployment, o: &Outcome, ctx: &Context) -> Result<()> {
    if status_matches(api, o) {
        return Ok(());
    }
    let before = api.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
    let status = desired_status(api, o);
    let ns = api.namespace().unwrap_or_default();
    let client: Api<ApiDeployment> = Api::namespaced(ctx.client.clone(), &ns);
    let patch = json!({ "apiVersion": API_VERSION, "kind": "ApiDeployment", "status": status });
    ctx.may_write()?;
    client.patch_status(&api.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch)).await?;
    ctx.metrics.status_writes.get_or_create(&crate::metrics::ControllerLabels { controller: CONTROLLER }).inc();

    // Events on transitions of Accepted and Deployed. A new API that is
    // simply accepted and deployed raises none (its status says so; a burst
    // of thousands would otherwise be thousands of events); a refusal does.
    let first = before.is_empty();
    for (type_, verdict) in [(conditions::ACCEPTED, &o.accepted), (conditions::DEPLOYED, &o.deployed)] {
        let old = status::find(&before, type_);
        let changed = old.is_none_or(|c| c.reason != verdict.reason || (c.status == "True") != verdict.ok);
        let warning = !verdict.ok && verdict.reason != reasons::NOT_SERVED && verdict.reason != reasons::RETIRED;
        if changed && (warning || !first) {
            ctx.event(api, warning, verdict.reason, verdict.message.clone()).await;
        }
    }
    Ok(())
}
