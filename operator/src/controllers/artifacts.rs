//! The artifact controller, keyed by ApiManager (the owner of the folder):
//! plans the manager's folder from the caches as they are now, writes only
//! the difference (off the async workers), then publishes every
//! ApiDeployment's and KeyManager's decision and queues the status writers
//! of those whose decision changed. A burst of changes to one manager's
//! objects is debounced into one plan; one manager is never planned twice
//! at once (the controller runs one reconcile per object), and the folder
//! lock keeps the sweeper out.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, ResourceExt,
    runtime::{controller::Action, reflector::ObjectRef},
};
use tollgate_crds::{
    ApiDeployment, ApiManager, KeyManager, ThrottlePolicy, api_manager::NamespacesFrom, conditions::reasons,
};

use super::Context;
use crate::{
    artifacts,
    decisions::Decided,
    error::{Error, Result},
    plan::{self, Definitions, Inputs, Key, Outcome, Verdict, manager_key, manager_of},
};

const CONTROLLER: &str = "artifacts";

/// How long a burst of changes is gathered before a manager is planned.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

pub async fn reconcile(manager: Arc<ApiManager>, ctx: Arc<Context>) -> Result<Action> {
    ctx.started(CONTROLLER, &*manager);
    if !ctx.watched(manager.namespace().as_deref()) || manager.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let _timer = ctx.metrics.start(CONTROLLER);
    let key = (manager.namespace().unwrap_or_default(), manager.name_any());
    let unwatched = sync(&manager, &key, &ctx).await?;
    ctx.failures.reset(&super::failure_key(CONTROLLER, &*manager));
    // Namespace labels are not watched: look again now and then.
    Ok(Action::requeue(if unwatched { Duration::from_secs(60) } else { Duration::from_secs(600) }))
}

pub fn error_policy(manager: Arc<ApiManager>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.error(CONTROLLER, error.metric_label());
    let n =
        ctx.failures.bump(format!("{CONTROLLER}/{}/{}", manager.namespace().unwrap_or_default(), manager.name_any()));
    tracing::warn!(apimanager = %manager.name_any(), namespace = ?manager.namespace(), error = %error, failures = n, "planning the artifact folder failed");
    super::backoff(n)
}

/// Plans and writes one manager's folder and publishes the decisions.
/// Returns whether the plan read things that are not watched.
async fn sync(manager: &ApiManager, key: &Key, ctx: &Context) -> Result<bool> {
    let dir = artifacts::manager_dir(&ctx.config.artifact_dir, &key.0, &key.1);
    let lock = ctx.folders.lock_for(&dir);
    let mut folder = lock.lock().await;
    // The caches as they are now (every event that triggered this run is in them).
    let apis: Vec<Arc<ApiDeployment>> = ctx
        .apis
        .state()
        .into_iter()
        .filter(|a| &manager_key(a) == key && ctx.watched(a.namespace().as_deref()))
        .collect();
    // A gateway group starts or stops serving an API that signs: the
    // ApiManager controller gives it the signing keys or takes them away.
    let signing = crate::workload::signing_groups(manager, apis.iter().map(|a| &**a));
    if ctx.signing_groups.changed(key, &signing) {
        let _ = ctx.requeue_manager.send(ObjectRef::from_obj(manager));
    }
    let policy_objs = ctx.policies.state();
    let policies: BTreeMap<Key, &ThrottlePolicy> =
        policy_objs.iter().map(|p| ((p.namespace().unwrap_or_default(), p.name_any()), &**p)).collect();
    let key_manager_objs: Vec<Arc<KeyManager>> = ctx
        .key_managers
        .state()
        .into_iter()
        .filter(|k| &manager_of(k) == key && ctx.watched(k.namespace().as_deref()))
        .collect();
    let key_managers: BTreeMap<Key, &KeyManager> =
        key_manager_objs.iter().map(|k| ((k.namespace().unwrap_or_default(), k.name_any()), &**k)).collect();
    let namespaces: Vec<String> = apis
        .iter()
        .filter_map(|a| a.namespace())
        .chain(key_manager_objs.iter().filter_map(|k| k.namespace()))
        .collect();
    let selector = manager.spec.allowed_namespaces.from == NamespacesFrom::Selector;
    let (namespace_labels, unreadable) =
        if selector { namespace_labels(ctx, &namespaces).await? } else { (BTreeMap::new(), None) };
    let definitions = definitions(ctx, &apis).await?;
    if !folder.known() {
        // Read what the folder holds (the routes it serves decide ties). A
        // folder that cannot be read is planned as if empty: the write below
        // fails the same way and is reported.
        let d = dir.clone();
        let mut state = std::mem::take(&mut *folder);
        let (state, seeded) = tokio::task::spawn_blocking(move || {
            let r = state.seed(&d);
            (state, r)
        })
        .await
        .map_err(|e| Error::Finalizer(format!("artifact reader task: {e}")))?;
        *folder = state;
        if let Err(e) = seeded {
            tracing::warn!(manager = %format!("{}/{}", key.0, key.1), error = %e, "the artifact folder cannot be read");
        }
    }
    let (serving, renders) = folder.plan_parts();
    let mut plan = plan::plan_with(
        &Inputs {
            manager,
            apis: apis.iter().map(|a| &**a).collect(),
            policies: &policies,
            key_managers: &key_managers,
            namespace_labels: &namespace_labels,
            definitions: &definitions,
            serving,
        },
        renders,
    );

    // Labels the operator may not read: say so instead of "do not match".
    if let Some(why) = &unreadable {
        for o in plan.outcomes.values_mut().filter(|o| o.accepted.reason == reasons::NOT_ALLOWED) {
            let msg = format!(
                "{}; the operator cannot read namespace labels ({why}): grant it get on namespaces (chart value rbac.readNamespaces=true)",
                o.accepted.message
            );
            o.accepted.message = msg.clone();
            o.deployed.message = msg;
        }
    }

    // Write off the async workers; the state travels with the write.
    ctx.may_write()?;
    let files = std::mem::take(&mut plan.files);
    let serving = std::mem::take(&mut plan.serving);
    let (d, tag) = (dir.clone(), ctx.identity.clone());
    let mut state = std::mem::take(&mut *folder);
    let (state, report) = tokio::task::spawn_blocking(move || {
        let r = state.sync(&d, &files, serving, &tag);
        (state, r)
    })
    .await
    .map_err(|e| Error::Finalizer(format!("artifact writer task: {e}")))?;
    *folder = state;
    drop(folder);
    let by_key: BTreeMap<Key, &ApiDeployment> =
        apis.iter().map(|a| ((a.namespace().unwrap_or_default(), a.name_any()), &**a)).collect();
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            // The folder refuses writes: every API of the manager says so
            // (Deployed=False, ArtifactWriteFailed), an event names the
            // cause, and the plan is tried again with backoff.
            let why = format!("the artifact folder could not be written: {e}");
            let mut failed: Vec<(Key, Decided<Outcome>)> = std::mem::take(&mut plan.outcomes)
                .into_iter()
                .filter_map(|(k, mut o)| {
                    let a = by_key.get(&k)?;
                    if o.deployed.ok || o.revision.is_some() {
                        o.deployed = Verdict::no(reasons::ARTIFACT_WRITE_FAILED, why.clone());
                        o.revision = None;
                    }
                    Some((
                        k,
                        Decided { manager: key.clone(), uid: a.uid(), generation: a.metadata.generation, value: o },
                    ))
                })
                .collect();
            // Objects being deleted wait on their artifact's removal: say why it does not happen.
            for (k, a) in by_key.iter().filter(|(_, a)| a.metadata.deletion_timestamp.is_some()) {
                let o = Outcome {
                    accepted: Verdict::yes(reasons::ACCEPTED, "accepted"),
                    resolved_refs: Verdict::yes(reasons::RESOLVED, "being deleted"),
                    deployed: Verdict::no(
                        reasons::ARTIFACT_WRITE_FAILED,
                        format!("the artifact cannot be removed: {e}"),
                    ),
                    url: None,
                    revision: None,
                };
                failed.push((
                    k.clone(),
                    Decided { manager: key.clone(), uid: a.uid(), generation: a.metadata.generation, value: o },
                ));
            }
            for (ns, name) in ctx.decisions.publish_apis(key, failed) {
                let _ = ctx.requeue_api.send(ObjectRef::new(&name).within(&ns));
            }
            ctx.event(manager, true, reasons::ARTIFACT_WRITE_FAILED, why).await;
            return Err(e);
        }
    };
    if report.written > 0 || report.removed > 0 {
        ctx.metrics.artifacts_written.inc_by(report.written as u64);
        ctx.metrics.artifacts_removed.inc_by(report.removed as u64);
        tracing::info!(manager = %format!("{}/{}", key.0, key.1), written = report.written, removed = report.removed, "artifacts synced");
    }

    // The folder holds the plan now: publish it, and queue the status of
    // every object whose decision changed.
    let outcomes = std::mem::take(&mut plan.outcomes)
        .into_iter()
        .filter_map(|(k, o)| {
            let a = by_key.get(&k)?;
            Some((k, Decided { manager: key.clone(), uid: a.uid(), generation: a.metadata.generation, value: o }))
        })
        .collect();
    for (ns, name) in ctx.decisions.publish_apis(key, outcomes) {
        let _ = ctx.requeue_api.send(ObjectRef::new(&name).within(&ns));
    }
    let verdicts = std::mem::take(&mut plan.key_managers)
        .into_iter()
        .filter_map(|(k, v)| {
            let km = key_managers.get(&k)?;
            Some((k, Decided { manager: key.clone(), uid: km.uid(), generation: km.metadata.generation, value: v }))
        })
        .collect();
    for (ns, name) in ctx.decisions.publish_key_managers(key, verdicts) {
        let _ = ctx.requeue_key_manager.send(ObjectRef::new(&name).within(&ns));
    }
    Ok(selector)
}

/// Labels of `namespaces` (the manager selects namespaces by label), and
/// why some could not be read (the operator may not get namespaces).
async fn namespace_labels(
    ctx: &Context,
    namespaces: &[String],
) -> Result<(BTreeMap<String, BTreeMap<String, String>>, Option<String>)> {
    let mut out = BTreeMap::new();
    let nss: Api<Namespace> = Api::all(ctx.client.clone());
    for ns in namespaces {
        if out.contains_key(ns) {
            continue;
        }
        match nss.get_opt(ns).await {
            Ok(n) => {
                out.insert(ns.clone(), n.map(|n| n.labels().clone()).unwrap_or_default());
            }
            Err(kube::Error::Api(e)) if e.code == 403 => return Ok((out, Some(e.message.to_string()))),
            Err(e) => return Err(e.into()),
        }
    }
    Ok((out, None))
}

/// The OpenAPI documents of the manager's APIs (a ConfigMap is read only
/// when it changed since it was last read; a document written in the
/// ApiDeployment is parsed once per generation).
async fn definitions(ctx: &Context, apis: &[Arc<ApiDeployment>]) -> Result<Definitions> {
    let mut out = Definitions::new();
    for api in apis {
        let (Some(def), Some(key)) = (&api.spec.definition, plan::definition_key(api)) else { continue };
        if api.metadata.deletion_timestamp.is_some() || out.contains_key(&key) {
            continue;
        }
        let value = match (&def.config_map_ref, &def.document) {
            (Some(r), _) => ctx.definitions.get(&ctx.client, &ctx.config_maps, &key.0, &r.name, &r.key).await?,
            (None, Some(text)) => ctx.definitions.inline(&key, api.metadata.generation, text),
            (None, None) => continue,
        };
        out.insert(key, (*value).clone());
    }
    ctx.definitions.retain_inline(|ns, name| {
        ctx.apis
            .get(&ObjectRef::new(name).within(ns))
            .is_some_and(|a| a.spec.definition.as_ref().is_some_and(|d| d.document.is_some()))
    });
    Ok(out)
}
