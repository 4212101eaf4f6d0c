//! ApiManager reconciler: applies the pattern's objects (server-side apply,
//! one field manager), removes the ones the pattern no longer has, and
//! reports Ready / Progressing / Degraded with the components' replicas.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use k8s_openapi::{
    NamespaceResourceScope,
    api::{
        apps::v1::StatefulSet,
        autoscaling::v2::HorizontalPodAutoscaler,
        core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service},
        policy::v1::PodDisruptionBudget,
    },
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams},
    runtime::{Controller, controller::Action, watcher},
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::json;
use tollgate_crds::{
    API_VERSION, ApiManager,
    api_manager::{ApiManagerStatus, ComponentStatus, Endpoints},
    conditions::{self, reasons},
};

use super::{Context, FIELD_MANAGER, scoped};
use crate::{
    artifacts,
    config::Config,
    error::{Error, Result},
    plan::Verdict,
    status,
    workload::{self, MANAGED_BY, MANAGED_BY_VALUE, MANAGER_LABEL},
};

const CONTROLLER: &str = "apimanager";

/// The ApiManager controller; it caches only the StatefulSets it manages.
pub fn controller(
    client: &Client,
    config: &Config,
    managers: impl futures::Stream<Item = Result<ApiManager, watcher::Error>> + Send + 'static,
    store: kube::runtime::reflector::Store<ApiManager>,
    (queues, metrics): (Arc<crate::queue::Queues>, Arc<crate::metrics::Metrics>),
) -> Controller<ApiManager> {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, reflector::ObjectRef};
    // The StatefulSets it owns (what `owns` does, with the trigger counted).
    let owned = watcher::Config::default().labels(&format!("{MANAGED_BY}={MANAGED_BY_VALUE}"));
    let owners = watcher(scoped::<StatefulSet>(client, config), owned)
        .default_backoff()
        .touched_objects()
        .filter_map(|s| async move { s.ok() })
        .flat_map(|s: StatefulSet| {
            let ns = s.namespace();
            let refs: Vec<ObjectRef<ApiManager>> = s
                .owner_references()
                .iter()
                .filter(|o| o.kind == "ApiManager" && o.api_version == tollgate_crds::API_VERSION)
                .map(|o| {
                    let r = ObjectRef::new(&o.name);
                    match &ns {
                        Some(ns) => r.within(ns),
                        None => r,
                    }
                })
                .collect();
            futures::stream::iter(refs)
        });
    Controller::for_stream(managers, store).reconcile_on(super::counted_refs(owners, &queues, &metrics, CONTROLLER))
}

pub async fn reconcile(m: Arc<ApiManager>, ctx: Arc<Context>) -> Result<Action> {
    ctx.started(CONTROLLER, &*m);
    if !ctx.watched(m.namespace().as_deref()) || m.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    ctx.caches_ready().await;
    ctx.may_write()?;
    let _timer = ctx.metrics.start(CONTROLLER);
    let ns = m.namespace().ok_or(Error::MissingField("metadata.namespace"))?;
    let name = m.name_any();

    // The folder must exist before pods mount it as a subPath. When it
    // cannot be made, the status says so (and the rest is still applied).
    let dir = artifacts::manager_dir(&ctx.config.artifact_dir, &ns, &name);
    let folder = artifacts::ensure_dir(&dir)
        .err()
        .map(|e| format!("{e}: the artifact volume must be writable by the operator's user (README, \"Storage\")"));

    let pods = manager_pods(&ctx.client, &ns, &name).await?;
    let answers = if ctx.config.pod_status_probes {
        crate::pod_status::dependencies(&pods, m.spec.listeners.management).await
    } else {
        Vec::new()
    };
    let missing = Missing {
        folder,
        secrets: missing_secrets(&ctx.client, &ns, &m).await?,
        config_maps: missing_config_maps(&ctx.client, &ns, &m).await?,
        claim: claim_problem(&ctx.client, &ns, &ctx.config.artifact_claim).await?,
        failing_pods: crate::pod_health::failing_pods(&pods),
        dependencies: crate::dependency_health::problems(&answers),
    };
    // Which gateway groups serve an API that signs its answers (they alone
    // hold the signing keys); the artifact controller asks again when that changes.
    let key = (ns.clone(), name.clone());
    let apis = ctx.apis.state();
    let signing = workload::signing_groups(
        &m,
        apis.iter()
            .filter(|a| crate::plan::manager_key(a) == key && ctx.watched(a.namespace().as_deref()))
            .map(|a| &**a),
    );
    ctx.signing_groups.remember(&key, &signing);
    let desired = workload::desired_for(&m, &ctx.workload, Some(&signing));
    let applied = match apply_all(&ctx.client, &ns, &name, &desired).await {
        Ok(sets) => sets,
        Err(e) => {
            let degraded = Verdict::yes(reasons::APPLY_FAILED, format!("applying the pattern's objects failed: {e}"));
            write_status(&m, &ctx, &[], Some(degraded), &missing).await?;
            return Err(e);
        }
    };
    let ready = write_status(&m, &ctx, &applied, None, &missing).await?;
    ctx.failures.reset(&format!("apim/{ns}/{name}"));
    // Outside services fail without any object changing: a manager that
    // uses them is looked at again every minute.
    let external = m.spec.database.as_ref().is_some_and(|d| d.external.is_some())
        || m.spec.traffic_manager.as_ref().is_some_and(|t| t.redis.is_some());
    Ok(Action::requeue(match (ready, external) {
        (false, _) => Duration::from_secs(15),
        (true, true) => Duration::from_secs(60),
        (true, false) => Duration::from_secs(300),
    }))
}

pub fn error_policy(m: Arc<ApiManager>, error: &Error, ctx: Arc<Context>) -> Action {
    super::error_policy(&*m, error, &ctx, CONTROLLER, "apim")
}

async fn apply_one<K>(client: &Client, ns: &str, obj: &K) -> Result<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let name = obj.meta().name.clone().ok_or(Error::MissingField("metadata.name"))?;
    Ok(api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(obj)).await?)
}

/// The field manager that keeps a StatefulSet's replicas while an HPA
/// takes them over.
const REPLICAS_HANDOVER: &str = "tollgate-operator-replicas-handover";

/// Whether `manager` owns `spec.replicas` of a live object (server-side apply).
pub(crate) fn owns_replicas(live: &StatefulSet, manager: &str) -> bool {
    live.metadata.managed_fields.iter().flatten().any(|e| {
        e.manager.as_deref() == Some(manager)
            && e.operation.as_deref() == Some("Apply")
            && e.fields_v1.as_ref().and_then(|f| f.0.get("f:spec")).and_then(|s| s.get("f:replicas")).is_some()
    })
}

/// A StatefulSet whose replicas the operator stops setting (autoscaling was
/// switched on): if the operator's apply still owns the field, dropping it
/// would reset it to 1. A hand-over manager applies the live value first,
/// so the field keeps it until the HPA writes its own.
async fn hand_over_replicas(client: &Client, ns: &str, sts: &StatefulSet) -> Result<()> {
    if sts.spec.as_ref().and_then(|s| s.replicas).is_some() {
        return Ok(());
    }
    let name = sts.meta().name.clone().ok_or(Error::MissingField("metadata.name"))?;
    let api: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    let Some(live) = api.get_opt(&name).await? else { return Ok(()) };
    if !owns_replicas(&live, FIELD_MANAGER) {
        return Ok(());
    }
    let replicas = live.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let patch = json!({ "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": { "name": name },
                        "spec": { "replicas": replicas } });
    api.patch(&name, &PatchParams::apply(REPLICAS_HANDOVER).force(), &Patch::Apply(&patch)).await?;
    tracing::info!(namespace = ns, statefulset = %name, replicas, "autoscaling on: replicas handed over to the HPA");
    Ok(())
}

/// Delete objects of kind K that carry the manager's label but are not wanted.
async fn prune<K>(client: &Client, ns: &str, manager: &str, keep: &BTreeSet<String>) -> Result<()>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().labels(&format!("{MANAGER_LABEL}={manager},{MANAGED_BY}={MANAGED_BY_VALUE}"));
    for obj in api.list_metadata(&lp).await? {
        let name = obj.name_any();
        if !keep.contains(&name) {
            tracing::info!(kind = K::kind(&()).as_ref(), %name, "removing object the pattern no longer has");
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

fn names<K: Resource>(objs: &[K]) -> BTreeSet<String> {
    objs.iter().filter_map(|o| o.meta().name.clone()).collect()
}

async fn apply_all(client: &Client, ns: &str, name: &str, d: &workload::Desired) -> Result<Vec<StatefulSet>> {
    for svc in &d.services {
        apply_one(client, ns, svc).await?;
    }
    let mut sets = Vec::new();
    for sts in &d.stateful_sets {
        hand_over_replicas(client, ns, sts).await?;
        sets.push(apply_one(client, ns, sts).await?);
    }
    for hpa in &d.autoscalers {
        apply_one(client, ns, hpa).await?;
    }
    for pdb in &d.disruption_budgets {
        apply_one(client, ns, pdb).await?;
    }
    prune::<HorizontalPodAutoscaler>(client, ns, name, &names(&d.autoscalers)).await?;
    prune::<PodDisruptionBudget>(client, ns, name, &names(&d.disruption_budgets)).await?;
    prune::<StatefulSet>(client, ns, name, &names(&d.stateful_sets)).await?;
    prune::<Service>(client, ns, name, &names(&d.services)).await?;
    Ok(sets)
}

/// The manager's pods (for `pod_health` and `dependency_health`). Without
/// the right to list pods (an older chart's rules) none.
async fn manager_pods(client: &Client, ns: &str, name: &str) -> Result<Vec<Pod>> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let selector = format!("{MANAGED_BY}={MANAGED_BY_VALUE},{MANAGER_LABEL}={name}");
    match api.list(&ListParams::default().labels(&selector)).await {
        Ok(list) => Ok(list.items),
        Err(kube::Error::Api(e)) if e.code == 403 => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

/// Referenced Secrets (or keys) that do not exist. Only existence is read;
/// values are never copied or logged.
async fn missing_secrets(client: &Client, ns: &str, m: &ApiManager) -> Result<Vec<String>> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let mut missing = Vec::new();
    // The key names of each Secret read so far (None: not found); one read
    // per Secret however many of its keys are referenced.
    let mut keys: BTreeMap<String, Option<BTreeSet<String>>> = BTreeMap::new();
    for (field, r) in workload::secret_refs(m) {
        if !keys.contains_key(&r.name) {
            let found = match api.get_opt(&r.name).await {
                Ok(found) => found,
                // Not allowed to read Secrets here (rbac.secretNamespaces): skip the check.
                Err(kube::Error::Api(e)) if e.code == 403 => {
                    tracing::debug!(namespace = ns, "no permission to check Secrets; skipping the check");
                    return Ok(Vec::new());
                }
                Err(e) => return Err(e.into()),
            };
            let names = found.map(|s| {
                let data = s.data.unwrap_or_default().into_keys();
                data.chain(s.string_data.unwrap_or_default().into_keys()).collect()
            });
            keys.insert(r.name.clone(), names);
        }
        let problem = match &keys[&r.name] {
            None => format!("{field}: Secret {ns}/{} not found", r.name),
            Some(names) if !names.contains(&r.key) => format!("{field}: Secret {ns}/{} has no key {:?}", r.name, r.key),
            Some(_) => continue,
        };
        // Several keys of one missing Secret: said once.
        if !missing.contains(&problem) {
            missing.push(problem);
        }
    }
    Ok(missing)
}

/// Referenced ConfigMaps (or keys) that do not exist.
async fn missing_config_maps(client: &Client, ns: &str, m: &ApiManager) -> Result<Vec<String>> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let mut missing = Vec::new();
    for (field, r) in workload::config_map_refs(m) {
        let found = match api.get_opt(&r.name).await {
            Ok(found) => found,
            Err(kube::Error::Api(e)) if e.code == 403 => {
                tracing::debug!(namespace = ns, "no permission to check ConfigMaps; skipping the check");
                return Ok(Vec::new());
            }
            Err(e) => return Err(e.into()),
        };
        match found {
            None => missing.push(format!("{field}: ConfigMap {ns}/{} not found", r.name)),
            Some(c) => {
                let has_key = c.data.as_ref().is_some_and(|d| d.contains_key(&r.key))
                    || c.binary_data.as_ref().is_some_and(|d| d.contains_key(&r.key));
                if !has_key {
                    missing.push(format!("{field}: ConfigMap {ns}/{} has no key {:?}", r.name, r.key));
                }
            }
        }
    }
    Ok(missing)
}

/// What is wrong with the artifact claim the gateway pods mount, if
/// anything: (reason, message). Skipped where the operator may not read
/// claims.
async fn claim_problem(client: &Client, ns: &str, claim: &str) -> Result<Option<(&'static str, String)>> {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let pvc = match api.get_opt(claim).await {
        Ok(p) => p,
        Err(kube::Error::Api(e)) if e.code == 403 => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    Ok(claim_verdict(ns, claim, pvc.as_ref()))
}

/// The claim's problem (pure, for tests).
pub(crate) fn claim_verdict(
    ns: &str,
    claim: &str,
    pvc: Option<&PersistentVolumeClaim>,
) -> Option<(&'static str, String)> {
    let Some(pvc) = pvc else {
        return Some((
            reasons::ARTIFACT_CLAIM_NOT_FOUND,
            format!(
                "PersistentVolumeClaim {ns}/{claim} (--artifact-claim) not found: the gateway pods mount it; create a ReadWriteMany claim on the storage the operator writes"
            ),
        ));
    };
    let modes = pvc.spec.as_ref().and_then(|s| s.access_modes.clone()).unwrap_or_default();
    if !modes.iter().any(|m| m == "ReadWriteMany") {
        return Some((
            reasons::ARTIFACT_CLAIM_NOT_READ_WRITE_MANY,
            format!(
                "PersistentVolumeClaim {ns}/{claim} has access modes {modes:?}; the gateway pods need ReadWriteMany"
            ),
        ));
    }
    let phase = pvc.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
    if phase != "Bound" {
        return Some((
            reasons::ARTIFACT_CLAIM_NOT_BOUND,
            format!("PersistentVolumeClaim {ns}/{claim} is {phase:?}, not Bound"),
        ));
    }
    None
}

/// References of the ApiManager that do not resolve.
#[derive(Debug, Default)]
pub(crate) struct Missing {
    /// Why the manager's artifact folder cannot be written.
    pub folder: Option<String>,
    pub secrets: Vec<String>,
    pub config_maps: Vec<String>,
    /// The artifact claim's problem: (reason, message).
    pub claim: Option<(&'static str, String)>,
    /// Pods of the manager that cannot run, one line each.
    pub failing_pods: Vec<String>,
    /// Outside services (database, Redis) Ready pods cannot reach, one line
    /// per pod and service.
    pub dependencies: Vec<String>,
}

/// Degraded, most pressing first: objects that could not be applied, then
/// Secrets and ConfigMaps the pods need but that do not exist, then a key
/// manager whose pods would each sign with their own key. The last does not
/// hold the rollout back: every pod serves, only tokens of one pod fail on
/// the others.
pub(crate) fn degraded(m: &ApiManager, apply_failure: Option<Verdict>, missing: &Missing) -> Verdict {
    if let Some(v) = apply_failure {
        return v;
    }
    if let Some(why) = &missing.folder {
        return Verdict::yes(reasons::ARTIFACT_WRITE_FAILED, why.clone());
    }
    if !missing.failing_pods.is_empty() {
        return Verdict::yes(reasons::PODS_FAILING, missing.failing_pods.join("; "));
    }
    if !missing.dependencies.is_empty() {
        return Verdict::yes(reasons::DEPENDENCY_UNREACHABLE, missing.dependencies.join("; "));
    }
    if !missing.secrets.is_empty() {
        let all: Vec<&str> = missing.secrets.iter().chain(&missing.config_maps).map(String::as_str).collect();
        return Verdict::yes(reasons::SECRET_NOT_FOUND, all.join("; "));
    }
    if !missing.config_maps.is_empty() {
        return Verdict::yes(reasons::CONFIG_MAP_NOT_FOUND, missing.config_maps.join("; "));
    }
    if let Some(why) = workload::unshared_signing_key(m) {
        return Verdict::yes(reasons::SIGNING_KEY_SECRET_REQUIRED, why);
    }
    Verdict::no(reasons::AS_EXPECTED, "no problems found")
}

/// Writes the status; returns whether the manager is Ready.
async fn write_status(
    m: &ApiManager,
    ctx: &Context,
    sets: &[StatefulSet],
    apply_failure: Option<Verdict>,
    missing: &Missing,
) -> Result<bool> {
    let comps = workload::components(m);
    let mut components = Vec::new();
    let mut not_ready = Vec::new();
    let mut rolling = Vec::new();
    for c in &comps {
        let sts = sets.iter().find(|s| s.meta().name.as_deref() == Some(c.stateful_set.as_str()));
        // With an HPA the StatefulSet starts below minReplicas until the HPA acts:
        // not Ready before the minimum runs.
        let min = c.autoscaling.as_ref().map(|a| a.min_replicas).unwrap_or(0);
        let want = sts.and_then(|s| s.spec.as_ref()).and_then(|s| s.replicas).unwrap_or(1).max(min);
        let st = sts.and_then(|s| s.status.as_ref());
        let ready = st.and_then(|s| s.ready_replicas).unwrap_or(0);
        let current = st.map(|s| s.replicas).unwrap_or(0);
        let observed = st.and_then(|s| s.observed_generation);
        let generation = sts.and_then(|s| s.metadata.generation);
        let updated = st.and_then(|s| s.updated_replicas).unwrap_or(0);
        if ready < want.max(1) {
            not_ready.push(format!("{} {ready}/{want} ready", c.stateful_set));
        }
        if observed < generation || updated < want {
            rolling.push(c.stateful_set.clone());
        }
        components.push(ComponentStatus {
            name: c.name.clone(),
            stateful_set: c.stateful_set.clone(),
            replicas: current,
            ready_replicas: ready,
        });
    }
    let all_ready = sets.len() == comps.len() && not_ready.is_empty();
    let ready = if let Some((reason, why)) = &missing.claim {
        Verdict::no(reason, why.clone())
    } else if let Some(why) = &missing.folder {
        Verdict::no(reasons::ARTIFACT_WRITE_FAILED, why.clone())
    } else if all_ready && !missing.dependencies.is_empty() {
        Verdict::no(reasons::DEPENDENCY_UNREACHABLE, missing.dependencies.join("; "))
    } else if all_ready {
        Verdict::yes(reasons::ALL_READY, "all components are ready")
    } else if sets.is_empty() {
        Verdict::no(reasons::APPLY_FAILED, "the pattern's objects could not be applied")
    } else if missing.failing_pods.is_empty() {
        Verdict::no(reasons::COMPONENTS_NOT_READY, not_ready.join(", "))
    } else {
        Verdict::no(
            reasons::COMPONENTS_NOT_READY,
            format!("{}: {}", not_ready.join(", "), missing.failing_pods.join("; ")),
        )
    };
    let progressing = if rolling.is_empty() {
        Verdict::no(reasons::STABLE, "no rollout in progress")
    } else {
        Verdict::yes(reasons::ROLLING_OUT, format!("rolling out {}", rolling.join(", ")))
    };
    let degraded = degraded(m, apply_failure, missing);

    let ns = m.namespace().unwrap_or_default();
    let first_serving = comps.iter().find(|c| c.roles.contains(&"gateway")).unwrap_or(&comps[0]);
    let control = &comps[0];
    let host = |svc: &str| format!("{svc}.{ns}.svc");
    let l = &m.spec.listeners;
    let endpoints = Endpoints {
        http: Some(format!("http://{}:{}", host(&first_serving.stateful_set), l.http)),
        https: l.tls_secret_name.as_ref().map(|_| format!("https://{}:{}", host(&first_serving.stateful_set), l.https)),
        management: Some(format!("http://{}:{}", host(&control.stateful_set), l.management)),
        issuer: Some(workload::issuer(m)),
    };

    let previous = m.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    let generation = m.metadata.generation;
    let new = ApiManagerStatus {
        observed_generation: generation,
        conditions: vec![
            status::condition(previous, conditions::READY, &ready, generation),
            status::condition(previous, conditions::PROGRESSING, &progressing, generation),
            status::condition(previous, conditions::DEGRADED, &degraded, generation),
        ],
        components,
        endpoints: Some(endpoints),
    };
    let unchanged = m.status.as_ref().is_some_and(|s| {
        s.observed_generation == new.observed_generation
            && s.components == new.components
            && s.endpoints == new.endpoints
            && status::same_conditions(&s.conditions, &new.conditions)
    });
    if !unchanged {
        let api: Api<ApiManager> = Api::namespaced(ctx.client.clone(), &ns);
        let patch = json!({ "apiVersion": API_VERSION, "kind": "ApiManager", "status": new });
        ctx.may_write()?;
        api.patch_status(&m.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch)).await?;
        ctx.metrics.status_writes.get_or_create(&crate::metrics::ControllerLabels { controller: CONTROLLER }).inc();
        let was_ready = status::find(previous, conditions::READY).is_some_and(|c| c.status == "True");
        if ready.ok != was_ready {
            ctx.event(m, !ready.ok, ready.reason, ready.message.clone()).await;
        }
        let was_degraded = status::find(previous, conditions::DEGRADED).map(|c| c.reason.clone());
        if degraded.ok && was_degraded.as_deref() != Some(degraded.reason) {
            ctx.event(m, true, degraded.reason, degraded.message.clone()).await;
        }
    }
    Ok(ready.ok)
}

/// Remove artifact folders of ApiManagers that no longer exist (in watched
/// namespaces), once a minute after the caches are complete.
pub async fn sweep_orphans(ctx: Arc<Context>) {
    ctx.caches_ready().await;
    loop {
        tokio::time::sleep(Duration::from_secs(60)).await;
        if let Err(e) = sweep_once(&ctx).await {
            tracing::warn!(error = %e, "sweeping artifact folders failed");
        }
    }
}

async fn sweep_once(ctx: &Context) -> Result<()> {
    let root = &ctx.config.artifact_dir;
    let Ok(namespaces) = std::fs::read_dir(root) else { return Ok(()) };
    let watched = &ctx.config.watch_namespaces;
    for ns_entry in namespaces.flatten() {
        let Some(ns) = ns_entry.file_name().to_str().map(str::to_string) else { continue };
        if !ns_entry.path().is_dir() || (!watched.is_empty() && !watched.contains(&ns)) {
            continue;
        }
        let Ok(managers) = std::fs::read_dir(ns_entry.path()) else { continue };
        for m_entry in managers.flatten() {
            let Some(name) = m_entry.file_name().to_str().map(str::to_string) else { continue };
            let exists = ctx.managers.get(&kube::runtime::reflector::ObjectRef::new(&name).within(&ns)).is_some();
            if !exists && m_entry.path().is_dir() {
                tracing::info!(namespace = %ns, apimanager = %name, "removing the artifact folder of a deleted ApiManager");
                let dir = m_entry.path();
                let lock = ctx.folders.lock_for(&dir);
                let mut folder = lock.lock().await;
                folder.forget();
                artifacts::remove_dir(&dir)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    #[test]
    fn replicas_are_handed_over_only_when_the_operators_apply_owns_them() {
        let live = |manager: &str, fields: Value| -> StatefulSet {
            serde_json::from_value(json!({"metadata": {"name": "s", "managedFields": [
                {"manager": manager, "operation": "Apply", "fieldsType": "FieldsV1", "fieldsV1": fields}
            ]}}))
            .unwrap()
        };
        assert!(owns_replicas(&live(FIELD_MANAGER, json!({"f:spec": {"f:replicas": {}}})), FIELD_MANAGER));
        assert!(!owns_replicas(&live(FIELD_MANAGER, json!({"f:spec": {"f:template": {}}})), FIELD_MANAGER));
        assert!(!owns_replicas(&live("kube-controller-manager", json!({"f:spec": {"f:replicas": {}}})), FIELD_MANAGER));
    }

    #[test]
    fn the_artifact_claim_must_exist_be_read_write_many_and_bound() {
        let pvc = |modes: Value, phase: &str| -> PersistentVolumeClaim {
            serde_json::from_value(
                json!({"metadata": {"name": "c"}, "spec": {"accessModes": modes}, "status": {"phase": phase}}),
            )
            .unwrap()
        };
        assert_eq!(claim_verdict("ns", "c", None).unwrap().0, reasons::ARTIFACT_CLAIM_NOT_FOUND);
        let once = pvc(json!(["ReadWriteOnce"]), "Bound");
        assert_eq!(claim_verdict("ns", "c", Some(&once)).unwrap().0, reasons::ARTIFACT_CLAIM_NOT_READ_WRITE_MANY);
        let pending = pvc(json!(["ReadWriteMany"]), "Pending");
        assert!(claim_verdict("ns", "c", Some(&pending)).unwrap().1.contains("\"Pending\", not Bound"));
        assert_eq!(claim_verdict("ns", "c", Some(&pvc(json!(["ReadWriteMany"]), "Bound"))), None);
    }

    fn manager(spec: Value) -> ApiManager {
        serde_json::from_value(json!({
            "apiVersion": "tollgate.dev/v1alpha1", "kind": "ApiManager",
            "metadata": { "name": "apim", "namespace": "banking" },
            "spec": spec,
        }))
        .unwrap()
    }

    fn ha(key_manager: Value) -> ApiManager {
        manager(json!({ "pattern": "HighAvailability", "keyManager": key_manager,
            "database": { "external": { "urlSecretRef": { "name": "db", "key": "url" } } },
            "trafficManager": { "redis": { "urlSecretRef": { "name": "redis", "key": "url" } } } }))
    }

    #[test]
    fn several_key_manager_pods_without_a_shared_key_are_degraded() {
        let v = degraded(&ha(json!({})), None, &Missing::default());
        assert!(v.ok, "Degraded=True");
        assert_eq!(v.reason, reasons::SIGNING_KEY_SECRET_REQUIRED);
        assert!(v.message.contains("spec.keyManager.signingKeySecretName"), "{}", v.message);
        assert!(v.message.contains("openssl genpkey"), "{}", v.message);

        let shared = degraded(&ha(json!({ "signingKeySecretName": "apim-signing" })), None, &Missing::default());
        assert_eq!((shared.ok, shared.reason), (false, reasons::AS_EXPECTED));
        let single = degraded(&manager(json!({ "pattern": "AllInOne" })), None, &Missing::default());
        assert_eq!((single.ok, single.reason), (false, reasons::AS_EXPECTED), "one pod: its own key is fine");
    }

    #[test]
    fn missing_references_and_apply_failures_come_first() {
        let m = ha(json!({}));
        let maps = Missing { config_maps: vec!["keyManager.ssaJwksConfigMapRef: gone".into()], ..Missing::default() };
        let v = degraded(&m, None, &maps);
        assert_eq!((v.ok, v.reason), (true, reasons::CONFIG_MAP_NOT_FOUND));
        let both =
            Missing { secrets: vec!["db: gone".into()], config_maps: maps.config_maps.clone(), ..Missing::default() };
        let v = degraded(&m, None, &both);
        assert_eq!(v.reason, reasons::SECRET_NOT_FOUND);
        assert!(v.message.contains("db: gone") && v.message.contains("ssaJwksConfigMapRef"), "{}", v.message);
        let failed = Verdict::yes(reasons::APPLY_FAILED, "boom");
        assert_eq!(degraded(&m, Some(failed.clone()), &both), failed);
        // Pods that cannot run: before missing references (what to fix first).
        let pods = Missing { failing_pods: vec!["pod apim-0: container gateway CrashLoopBackOff".into()], ..both };
        let v = degraded(&m, None, &pods);
        assert_eq!(
            (v.ok, v.reason, v.message.as_str()),
            (true, reasons::PODS_FAILING, "pod apim-0: container gateway CrashLoopBackOff")
        );
        let both = Missing { failing_pods: vec![], ..pods };
        // An artifact folder the operator cannot write: before any reference.
        let folder = Missing { folder: Some("/artifacts/banking/apim/apis: Permission denied".into()), ..both };
        let v = degraded(&m, None, &folder);
        assert_eq!((v.ok, v.reason), (true, reasons::ARTIFACT_WRITE_FAILED));
        assert!(v.message.contains("/artifacts/banking/apim/apis: Permission denied"), "{}", v.message);
    }

    #[test]
    fn unreachable_outside_services_come_after_failing_pods_and_before_missing_references() {
        let m = ha(json!({ "signingKeySecretName": "apim-signing" }));
        let deps = vec![
            "pod apim-0: database unreachable: connection refused".to_string(),
            "pod apim-1: Redis (traffic manager) unreachable, limits are counted per pod (failure mode open): timed out"
                .to_string(),
        ];
        let both = Missing { secrets: vec!["db: gone".into()], dependencies: deps.clone(), ..Missing::default() };
        let v = degraded(&m, None, &both);
        assert_eq!((v.ok, v.reason), (true, reasons::DEPENDENCY_UNREACHABLE));
        assert_eq!(v.message, deps.join("; "));
        let crashing = Missing { failing_pods: vec!["pod apim-2: container gateway CrashLoopBackOff".into()], ..both };
        assert_eq!(degraded(&m, None, &crashing).reason, reasons::PODS_FAILING);
        let fine = Missing { dependencies: vec![], ..Missing::default() };
        assert_eq!(degraded(&m, None, &fine).reason, reasons::AS_EXPECTED);
    }
}
