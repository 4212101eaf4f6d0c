//! ApiDeployment reconciler: computes the artifact plan of the ApiDeployment's
//! ApiManager, makes the manager's artifact folder match it, and reports the
//! outcome in the ApiDeployment's status. A finalizer removes the artifact
//! before the object goes.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
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
use tokio::sync::mpsc;
use tokio_stream_shim::UnboundedReceiverStream;
use tollgate_crds::{
    API_VERSION, ApiDeployment, ApiManager, KeyManager, ThrottlePolicy,
    api_deployment::ApiDeploymentStatus,
    api_manager::NamespacesFrom,
    conditions::{self, reasons},
};

use super::{Context, FIELD_MANAGER, artifact_error_policy, failure_key, reconcile_with_finalizer, scoped};
use crate::{
    artifacts,
    config::Config,
    error::{Error, Result},
    plan::{self, Definitions, Inputs, Key, Outcome, Plan, key_manager_names, manager_key, policy_names},
    status,
};

const CONTROLLER: &str = "apideployment";

/// Add the secondary watches: an ApiManager, ThrottlePolicy or KeyManager
/// change re-reconciles every ApiDeployment that uses it.
pub fn wire(
    ctrl: Controller<ApiDeployment>,
    client: &Client,
    config: &Config,
    apis: Store<ApiDeployment>,
    requeue: mpsc::UnboundedReceiver<ObjectRef<ApiDeployment>>,
) -> Controller<ApiDeployment> {
    let by_manager = apis.clone();
    let by_policy = apis.clone();
    let by_key_manager = apis;
    ctrl.watches(scoped::<ApiManager>(client, config), watcher::Config::default(), move |m: ApiManager| {
        let key = (m.namespace().unwrap_or_default(), m.name_any());
        by_manager
            .state()
            .into_iter()
            .filter(|a| manager_key(a) == key)
            .map(|a| ObjectRef::from(&*a))
            .collect::<Vec<_>>()
    })
    .watches(scoped::<ThrottlePolicy>(client, config), watcher::Config::default(), move |p: ThrottlePolicy| {
        let ns = p.namespace().unwrap_or_default();
        let name = p.name_any();
        by_policy
            .state()
            .into_iter()
            .filter(|a| {
                policy_names(a).contains(&name.as_str())
                    && (a.namespace().as_deref() == Some(ns.as_str()) || manager_key(a).0 == ns)
            })
            .map(|a| ObjectRef::from(&*a))
            .collect::<Vec<_>>()
    })
    .watches(scoped::<KeyManager>(client, config), watcher::Config::default(), move |k: KeyManager| {
        // Only APIs that name it: the artifact of an API with an empty list
        // does not depend on which KeyManagers exist (the KeyManager
        // controller writes the KeyManager's own artifact).
        let ns = k.namespace().unwrap_or_default();
        let name = k.name_any();
        let manager = plan::manager_of(&k);
        by_key_manager
            .state()
            .into_iter()
            .filter(|a| {
                manager_key(a) == manager
                    && key_manager_names(a).contains(&name.as_str())
                    && (a.namespace().as_deref() == Some(ns.as_str()) || manager.0 == ns)
            })
            .map(|a| ObjectRef::from(&*a))
            .collect::<Vec<_>>()
    })
    .reconcile_on(UnboundedReceiverStream(requeue))
}

pub async fn reconcile(api: Arc<ApiDeployment>, ctx: Arc<Context>) -> Result<Action> {
    reconcile_with_finalizer(api, ctx, CONTROLLER, apply, cleanup).await
}

pub fn error_policy(api: Arc<ApiDeployment>, error: &Error, ctx: Arc<Context>) -> Action {
    artifact_error_policy(&*api, error, &ctx, CONTROLLER, FAILURES)
}

/// Failure-counter prefix.
const FAILURES: &str = "apid";

async fn apply(api: &ApiDeployment, ctx: &Context) -> Result<Action> {
    let key = manager_key(api);
    let api_key = (api.namespace().unwrap_or_default(), api.name_any());
    let planned = sync_manager(&key, ctx, Some(api)).await?;
    let outcome =
        planned.and_then(|mut p| p.outcomes.remove(&api_key)).unwrap_or_else(|| Outcome::manager_not_found(api));
    write_status(api, &outcome, ctx).await?;
    ctx.failures.reset(&failure_key(FAILURES, api));
    // Definitions in ConfigMaps and namespace labels are not watched: look again now and then.
    let uses_unwatched = api.spec.definition.is_some() || manager_uses_selector(ctx, &key);
    Ok(Action::requeue(if uses_unwatched { Duration::from_secs(60) } else { Duration::from_secs(600) }))
}

async fn cleanup(api: &ApiDeployment, ctx: &Context) -> Result<Action> {
    // The plan leaves out objects being deleted, so syncing removes the artifact.
    sync_manager(&manager_key(api), ctx, None).await?;
    ctx.event(api, false, "ArtifactRemoved", "artifact removed from the gateways".into()).await;
    Ok(Action::await_change())
}

pub(super) fn manager_uses_selector(ctx: &Context, key: &Key) -> bool {
    ctx.managers
        .get(&ObjectRef::new(&key.1).within(&key.0))
        .is_some_and(|m| m.spec.allowed_namespaces.from == NamespacesFrom::Selector)
}

/// Plan the folder of one manager, write it, and queue ApiDeployments
/// (other than `focus`) whose status changes. Returns the plan without its
/// files (None when the manager is missing or going).
pub(super) async fn sync_manager(key: &Key, ctx: &Context, focus: Option<&ApiDeployment>) -> Result<Option<Plan>> {
    let Some(manager) = ctx.managers.get(&ObjectRef::new(&key.1).within(&key.0)) else {
        return Ok(None);
    };
    if manager.metadata.deletion_timestamp.is_some() {
        return Ok(None);
    }
    // Plan and write under the folder lock, from the caches as they are
    // now: a plan from an older view can never overwrite a newer one.
    let dir = artifacts::manager_dir(&ctx.config.artifact_dir, &key.0, &key.1);
    let lock = ctx.folders.lock_for(&dir);
    let mut folder = lock.lock().await;
    let apis: Vec<Arc<ApiDeployment>> = ctx.apis.state().into_iter().filter(|a| &manager_key(a) == key).collect();
    let policy_objs = ctx.policies.state();
    let policies: BTreeMap<Key, &ThrottlePolicy> =
        policy_objs.iter().map(|p| ((p.namespace().unwrap_or_default(), p.name_any()), &**p)).collect();
    let key_manager_objs: Vec<Arc<KeyManager>> =
        ctx.key_managers.state().into_iter().filter(|k| &plan::manager_of(k) == key).collect();
    let key_managers: BTreeMap<Key, &KeyManager> =
        key_manager_objs.iter().map(|k| ((k.namespace().unwrap_or_default(), k.name_any()), &**k)).collect();
    let namespaces: Vec<String> = apis
        .iter()
        .filter_map(|a| a.namespace())
        .chain(key_manager_objs.iter().filter_map(|k| k.namespace()))
        .collect();
    let namespace_labels = namespace_labels(ctx, &manager, &namespaces).await?;
    let definitions = definitions(ctx, &apis).await?;
    if folder.serving().is_none() {
        let d = dir.clone();
        let read = tokio::task::spawn_blocking(move || artifacts::read_serving(&d))
            .await
            .map_err(|e| Error::Finalizer(format!("artifact reader task: {e}")))??;
        folder.synced(read);
    }
    let empty = BTreeMap::new();
    let mut plan = plan::plan(&Inputs {
        manager: &manager,
        apis: apis.iter().map(|a| &**a).collect(),
        policies: &policies,
        key_managers: &key_managers,
        namespace_labels: &namespace_labels,
        definitions: &definitions,
        serving: folder.serving().unwrap_or(&empty),
    });
    let report = {
        let files = std::mem::take(&mut plan.files);
        let d = dir.clone();
        let written = tokio::task::spawn_blocking(move || artifacts::sync(&d, &files))
            .await
            .map_err(|e| Error::Finalizer(format!("artifact writer task: {e}")));
        match written {
            Ok(Ok(report)) => {
                folder.synced(std::mem::take(&mut plan.serving));
                report
            }
            Ok(Err(e)) | Err(e) => {
                folder.forget();
                return Err(e);
            }
        }
    };
    drop(folder);
    if report.written > 0 || report.removed > 0 {
        ctx.metrics.artifacts_written.inc_by(report.written as u64);
        ctx.metrics.artifacts_removed.inc_by(report.removed as u64);
        tracing::info!(manager = %format!("{}/{}", key.0, key.1), written = report.written, removed = report.removed, "artifacts synced");
    }

    // Siblings whose status no longer matches the plan get reconciled too.
    let focus_key = focus.map(|a| (a.namespace().unwrap_or_default(), a.name_any()));
    for sibling in &apis {
        let skey = (sibling.namespace().unwrap_or_default(), sibling.name_any());
        if Some(&skey) == focus_key.as_ref() || sibling.metadata.deletion_timestamp.is_some() {
            continue;
        }
        if plan.outcomes.get(&skey).is_some_and(|o| !status_matches(sibling, o)) {
            let _ = ctx.requeue_api.send(ObjectRef::from(&**sibling));
        }
    }
    Ok(Some(plan))
}

/// Labels of `namespaces`, read only when the manager selects namespaces by label.
async fn namespace_labels(
    ctx: &Context,
    manager: &ApiManager,
    namespaces: &[String],
) -> Result<BTreeMap<String, BTreeMap<String, String>>> {
    let mut out = BTreeMap::new();
    if manager.spec.allowed_namespaces.from != NamespacesFrom::Selector {
        return Ok(out);
    }
    let nss: Api<Namespace> = Api::all(ctx.client.clone());
    for ns in namespaces {
        if out.contains_key(ns) {
            continue;
        }
        let labels = nss.get_opt(ns).await?.map(|n| n.labels().clone()).unwrap_or_default();
        out.insert(ns.clone(), labels);
    }
    Ok(out)
}

async fn definitions(ctx: &Context, apis: &[Arc<ApiDeployment>]) -> Result<Definitions> {
    let mut out = Definitions::new();
    for api in apis {
        let Some(def) = &api.spec.definition else { continue };
        if !api.spec.operations.is_empty() {
            continue;
        }
        let ns = api.namespace().unwrap_or_default();
        let r = &def.config_map_ref;
        let key = (ns.clone(), r.name.clone(), r.key.clone());
        if out.contains_key(&key) {
            continue;
        }
        let maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
        let value = match maps.get_opt(&r.name).await? {
            None => Err(format!("ConfigMap {ns}/{} not found", r.name)),
            Some(cm) => cm
                .data
                .as_ref()
                .and_then(|d| d.get(&r.key).cloned())
                .ok_or_else(|| format!("ConfigMap {ns}/{} has no key {:?}", r.name, r.key)),
        };
        out.insert(key, value);
    }
    Ok(out)
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
    client.patch_status(&api.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch)).await?;
    ctx.metrics.status_writes.get_or_create(&crate::metrics::ControllerLabels { controller: CONTROLLER }).inc();

    // Events on transitions of Accepted and Deployed.
    for (type_, verdict) in [(conditions::ACCEPTED, &o.accepted), (conditions::DEPLOYED, &o.deployed)] {
        let old = status::find(&before, type_);
        let changed = old.is_none_or(|c| c.reason != verdict.reason || (c.status == "True") != verdict.ok);
        if changed {
            let warning = !verdict.ok && verdict.reason != reasons::NOT_SERVED && verdict.reason != reasons::RETIRED;
            ctx.event(api, warning, verdict.reason, verdict.message.clone()).await;
        }
    }
    Ok(())
}

/// A tiny adapter from a tokio unbounded receiver to a `Stream`.
mod tokio_stream_shim {
    use std::{
        pin::Pin,
        task::{Context, Poll},
    };

    use tokio::sync::mpsc::UnboundedReceiver;

    pub struct UnboundedReceiverStream<T>(pub UnboundedReceiver<T>);

    impl<T> futures::Stream for UnboundedReceiverStream<T> {
        type Item = T;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
            self.0.poll_recv(cx)
        }
    }
}
