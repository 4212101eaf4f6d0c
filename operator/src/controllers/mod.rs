//! The controllers and what they share.

pub mod api_deployment;
pub mod api_manager;
pub mod artifacts;
pub mod key_manager;
pub mod throttle_policy;

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::core::PartialObjectMeta;
use kube::{
    Api, Client, Resource, ResourceExt,
    runtime::{
        Controller, WatchStreamExt,
        controller::Action,
        events::{Event, EventType, Recorder, Reporter},
        reflector::{self, ObjectRef, Store, reflector},
        watcher,
    },
};
use tokio::sync::{mpsc, watch};
use tollgate_crds::{ApiDeployment, ApiManager, KeyManager, ThrottlePolicy};

use crate::{
    config::Config,
    decisions::Decisions,
    definitions::DefinitionCache,
    error::{Error, Result},
    folder::Folders,
    index::Index,
    metrics::Metrics,
    plan::Key,
    queue::Queues,
    workload::WorkloadConfig,
};

/// The one field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "tollgate-operator";
/// Finalizer that removes an ApiDeployment's or KeyManager's artifact before it goes.
pub const ARTIFACT_FINALIZER: &str = "tollgate.dev/artifact";

/// State shared by the reconcilers.
pub struct Context {
    pub client: Client,
    pub config: Config,
    pub workload: WorkloadConfig,
    pub managers: Store<ApiManager>,
    pub apis: Store<ApiDeployment>,
    pub policies: Store<ThrottlePolicy>,
    pub key_managers: Store<KeyManager>,
    /// Metadata of the ConfigMaps in the watched scope (definitions are read on change).
    pub config_maps: Store<PartialObjectMeta<ConfigMap>>,
    /// OpenAPI definitions read from ConfigMaps, by resourceVersion.
    pub definitions: Arc<DefinitionCache>,
    pub folders: Folders,
    pub metrics: Arc<Metrics>,
    /// What each controller's queue holds (the queue_depth metric).
    pub queues: Arc<Queues>,
    pub recorder: Recorder,
    /// Which managers a change touches.
    pub index: Arc<Index>,
    /// What the artifact controller decided, after the folder write.
    pub decisions: Arc<Decisions>,
    /// Plan a manager's folder (the artifact controller's queue).
    pub plan_manager: mpsc::UnboundedSender<ObjectRef<ApiManager>>,
    /// Write the status of ApiDeployments whose decision changed.
    pub requeue_api: mpsc::UnboundedSender<ObjectRef<ApiDeployment>>,
    /// Reconcile ApiManagers whose signing gateway groups changed.
    pub requeue_manager: mpsc::UnboundedSender<ObjectRef<ApiManager>>,
    /// The signing gateway groups each manager's workload was last made with.
    pub signing_groups: SigningGroups,
    /// Write the status of KeyManagers whose verdict changed.
    pub requeue_key_manager: mpsc::UnboundedSender<ObjectRef<KeyManager>>,
    /// This replica's identity (temp file names in the artifact folders).
    pub identity: String,
    /// Whether this replica may write (it holds a fresh Lease).
    pub gate: crate::leader::Gate,
    /// Consecutive failures per object, for the error backoff.
    pub failures: Failures,
    /// One flag per cache (managers, APIs, policies, key managers, ConfigMaps): true after the initial list.
    pub ready: Vec<watch::Receiver<bool>>,
}

/// A cache of K fed by a watcher, the stream that drives a controller from
/// it, and a flag that turns true once the initial list is in the cache.
/// `on_event` sees every event after the cache applied it (so whatever it
/// triggers reads a cache that already holds the change).
pub fn cached<K>(
    api: Api<K>,
    wc: watcher::Config,
    on_event: impl Fn(&watcher::Event<K>) + Send + 'static,
) -> (Store<K>, impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static, watch::Receiver<bool>)
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    cache_of(watcher(api, wc), on_event)
}

fn cache_of<K>(
    events: impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    on_event: impl Fn(&watcher::Event<K>) + Send + 'static,
) -> (Store<K>, impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static, watch::Receiver<bool>)
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let (tx, rx) = watch::channel(false);
    // The caches keep no managedFields and no last-applied annotation: at
    // thousands of objects they are most of the memory, and nothing reads them.
    let slim = events.default_backoff().modify(|o: &mut K| {
        o.managed_fields_mut().clear();
        o.annotations_mut().remove("kubectl.kubernetes.io/last-applied-configuration");
    });
    let stream = reflector(writer, slim)
        .inspect(move |ev| {
            if let Ok(ev) = ev {
                on_event(ev);
            }
            if matches!(ev, Ok(watcher::Event::InitDone)) {
                let _ = tx.send(true);
            }
        })
        .applied_objects();
    (reader, stream, rx)
}

/// The ObjectRef of a manager key.
pub fn manager_ref(key: &Key) -> ObjectRef<ApiManager> {
    ObjectRef::new(&key.1).within(&key.0)
}

impl Context {
    /// Reconcilers act only on complete caches: a partial view could remove
    /// artifacts that are still wanted.
    ///
    /// (Readiness is tracked with watch channels of our own: kube's
    /// `Store::wait_until_ready` wakes only one waiter, and the controller's
    /// own runner already waits on it.)
    pub async fn caches_ready(&self) {
        for rx in &self.ready {
            let mut rx = rx.clone();
            let _ = rx.wait_for(|ready| *ready).await;
        }
    }

    /// With several --watch-namespaces the operator watches cluster-wide and
    /// skips objects elsewhere.
    pub fn watched(&self, namespace: Option<&str>) -> bool {
        let list = &self.config.watch_namespaces;
        list.len() <= 1 || namespace.is_some_and(|ns| list.iter().any(|w| w == ns))
    }

    /// A reconcile of `obj` by `controller` starts: it leaves the queue.
    pub fn started<K: Resource<DynamicType = ()>>(&self, controller: &'static str, obj: &K) {
        self.queues.started(&self.metrics, controller, &ObjectRef::from(obj));
    }

    /// Err(NotLeader) unless this replica may write now; asked before every write.
    pub fn may_write(&self) -> Result<()> {
        if self.gate.may_write() { Ok(()) } else { Err(Error::NotLeader) }
    }

    pub async fn event<K: Resource<DynamicType = ()>>(&self, obj: &K, warning: bool, reason: &str, note: String) {
        if !self.gate.may_write() {
            return;
        }
        let ev = Event {
            type_: if warning { EventType::Warning } else { EventType::Normal },
            reason: reason.to_string(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        // Published off the reconcile: an event is news, not a step the
        // reconcile waits for.
        let (recorder, reference) = (self.recorder.clone(), obj.object_ref(&()));
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&ev, &reference).await {
                tracing::warn!(error = %e, "could not publish event");
            }
        });
    }
}

/// Api for a kind over the watched scope (one namespace or the cluster).
pub fn scoped<K>(client: &Client, config: &Config) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match config.watch_namespaces.as_slice() {
        [one] => Api::namespaced(client.clone(), one),
        _ => Api::all(client.clone()),
    }
}

/// The result of a reconcile run through kube's finalizer helper, with the
/// errors that only mean "try again" or "nothing left to do" told apart.
pub fn settle(
    result: std::result::Result<Action, kube::runtime::finalizer::Error<Error>>,
    kind: &str,
) -> Result<Action> {
    use kube::runtime::finalizer::Error as F;
    match result {
        Ok(action) => Ok(action),
        // Deleted while we worked from a cached copy (a queued requeue, a
        // related-object event): the deletion already ran cleanup.
        Err(F::ApplyFailed(e) | F::CleanupFailed(e)) if e.is_not_found() => {
            tracing::debug!(%e, kind, "object gone while reconciling");
            Ok(Action::await_change())
        }
        Err(F::ApplyFailed(e) | F::CleanupFailed(e)) => Err(e),
        // The finalizer patch tests the current list: 409/422 mean our copy was stale.
        Err(F::AddFinalizer(e) | F::RemoveFinalizer(e)) => match e {
            kube::Error::Api(s) if s.code == 404 => Ok(Action::await_change()),
            kube::Error::Api(s) if s.code == 409 || s.code == 422 => Err(Error::Conflict(s.message.to_string())),
            e => Err(Error::Kube(e)),
        },
        Err(e) => Err(Error::Finalizer(e.to_string())),
    }
}

/// The per-object key of the failure counter (`<kind>/<namespace>/<name>`).
pub fn failure_key<K: kube::ResourceExt>(kind: &str, obj: &K) -> String {
    format!("{kind}/{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

/// The shape every artifact controller shares: skip objects outside the
/// watched namespaces, wait for the caches, time the run, and apply or
/// clean up behind the artifact finalizer (kube's finalizer helper), with
/// its errors settled.
pub async fn reconcile_with_finalizer<K>(
    obj: Arc<K>,
    ctx: Arc<Context>,
    controller: &'static str,
    apply: impl AsyncFn(&K, &Context) -> Result<Action>,
    cleanup: impl AsyncFn(&K, &Context) -> Result<Action>,
) -> Result<Action>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::Serialize
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    use kube::ResourceExt;
    use kube::runtime::finalizer::{Event as Finalizer, finalizer};
    ctx.started(controller, &*obj);
    if !ctx.watched(obj.namespace().as_deref()) {
        return Ok(Action::await_change());
    }
    ctx.caches_ready().await;
    ctx.may_write()?;
    let _timer = ctx.metrics.start(controller);
    let ns = obj.namespace().ok_or(Error::MissingField("metadata.namespace"))?;
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, ARTIFACT_FINALIZER, obj, |event| async {
        match event {
            Finalizer::Apply(o) => apply(&o, &ctx).await,
            Finalizer::Cleanup(o) => cleanup(&o, &ctx).await,
        }
    })
    .await;
    settle(result, K::kind(&()).as_ref())
}

/// The error policy of every controller: waiting on the artifact controller
/// and conflicts (a stale cache) retry at once, a replica without a fresh
/// Lease retries in a second (it is standing down), other errors back off
/// per object.
pub fn error_policy<K: kube::ResourceExt>(
    obj: &K,
    error: &Error,
    ctx: &Context,
    controller: &'static str,
    kind: &str,
) -> Action {
    // Waiting on the artifact controller is not a failure.
    if error.is_pending() {
        return Action::requeue(Duration::from_millis(200));
    }
    if matches!(error, Error::NotLeader) {
        return Action::requeue(Duration::from_secs(1));
    }
    ctx.metrics.error(controller, error.metric_label());
    if error.is_conflict() {
        return Action::requeue(Duration::from_millis(200));
    }
    let n = ctx.failures.bump(failure_key(kind, obj));
    tracing::warn!(kind, name = %obj.name_any(), namespace = ?obj.namespace(), error = %error, failures = n, "reconcile failed");
    // A folder that refuses writes is cheap to try again, and its repair
    // should be noticed soon.
    if matches!(error, Error::Artifact { .. } | Error::Blocked(_)) {
        return Action::requeue(Duration::from_secs(1u64 << n.min(3)));
    }
    backoff(n)
}

/// Backoff for failed reconciliations: 1 s doubling to 5 min, per object.
pub fn backoff(failures: u32) -> Action {
    let secs = 1u64 << failures.min(8);
    Action::requeue(Duration::from_secs(secs.min(300)))
}

/// Run all controllers until shutdown.
pub async fn run(
    client: Client,
    config: Config,
    metrics: Arc<Metrics>,
    identity: String,
    gate: crate::leader::Gate,
    ready: Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<()> {
    let (repo, tag) = config.default_image();
    let workload = WorkloadConfig {
        image_repository: repo,
        image_tag: tag,
        artifact_claim: config.artifact_claim.clone(),
        drain_seconds: config.gateway_drain_seconds,
    };
    let concurrency = config.concurrency.max(1);
    let wc = watcher::Config::default();
    let index = Arc::new(Index::default());
    let decisions = Arc::new(Decisions::default());
    let queues = Arc::new(Queues::default());
    let (plan_tx, plan_rx) = mpsc::unbounded_channel::<ObjectRef<ApiManager>>();
    let (api_tx, api_rx) = mpsc::unbounded_channel::<ObjectRef<ApiDeployment>>();
    let (km_tx, km_rx) = mpsc::unbounded_channel::<ObjectRef<KeyManager>>();

    // Every event is mapped to the managers whose folder it can change.
    let plan = plan_tx.clone();
    let (apis_forgotten, kms_forgotten) = (api_tx.clone(), km_tx.clone());
    let decided = decisions.clone();
    let (managers, manager_stream, managers_ready) =
        cached(scoped::<ApiManager>(&client, &config), wc.clone(), move |ev| match ev {
            watcher::Event::Apply(m) | watcher::Event::InitApply(m) => {
                let _ = plan.send(ObjectRef::from(m));
            }
            watcher::Event::Delete(m) => {
                // Its objects now answer "ApiManager not found".
                let key = (m.namespace().unwrap_or_default(), m.name_any());
                let (apis, kms) = decided.forget_manager(&key);
                for (ns, name) in apis {
                    let _ = apis_forgotten.send(ObjectRef::new(&name).within(&ns));
                }
                for (ns, name) in kms {
                    let _ = kms_forgotten.send(ObjectRef::new(&name).within(&ns));
                }
            }
            _ => {}
        });
    let (plan, idx) = (plan_tx.clone(), index.clone());
    let (apis, api_stream, apis_ready) =
        cached(scoped::<ApiDeployment>(&client, &config), wc.clone(), move |ev| match ev {
            watcher::Event::Apply(a) | watcher::Event::InitApply(a) => {
                for m in idx.api(a, false) {
                    let _ = plan.send(manager_ref(&m));
                }
            }
            watcher::Event::Delete(a) => {
                for m in idx.api(a, true) {
                    let _ = plan.send(manager_ref(&m));
                }
            }
            _ => {}
        });
    let (plan, idx, api_cache) = (plan_tx.clone(), index.clone(), apis.clone());
    let (policies, policy_stream, policies_ready) =
        cached(scoped::<ThrottlePolicy>(&client, &config), wc.clone(), move |ev| match ev {
            watcher::Event::Apply(p) | watcher::Event::InitApply(p) | watcher::Event::Delete(p)
                if idx.policy_changed(p, matches!(ev, watcher::Event::Delete(_))) =>
            {
                let all = api_cache.state();
                for m in idx.policy(p, all.iter().map(|a| &**a)) {
                    let _ = plan.send(manager_ref(&m));
                }
            }
            _ => {}
        });
    let (plan, idx) = (plan_tx.clone(), index.clone());
    let (key_managers, key_manager_stream, key_managers_ready) =
        cached(scoped::<KeyManager>(&client, &config), wc.clone(), move |ev| match ev {
            watcher::Event::Apply(k) | watcher::Event::InitApply(k) => {
                for m in idx.key_manager(k, false) {
                    let _ = plan.send(manager_ref(&m));
                }
            }
            watcher::Event::Delete(k) => {
                for m in idx.key_manager(k, true) {
                    let _ = plan.send(manager_ref(&m));
                }
            }
            _ => {}
        });
    // ConfigMaps: metadata only; a new resourceVersion of one that an API
    // derives its operations from plans that API's manager (the data is read
    // then). A deleted one is forgotten.
    let definitions = Arc::new(DefinitionCache::default());
    let (plan, idx, read) = (plan_tx.clone(), index.clone(), definitions.clone());
    let (config_maps, config_map_stream, config_maps_ready) =
        cached(scoped::<PartialObjectMeta<ConfigMap>>(&client, &config), wc.clone(), move |ev| match ev {
            watcher::Event::Apply(m) | watcher::Event::InitApply(m) | watcher::Event::Delete(m) => {
                let (ns, name) = (m.namespace().unwrap_or_default(), m.name_any());
                if matches!(ev, watcher::Event::Delete(_)) {
                    read.forget(&ns, &name);
                }
                for manager in idx.config_map(&ns, &name) {
                    let _ = plan.send(manager_ref(&manager));
                }
            }
            _ => {}
        });
    // Every trigger is counted into its controller's queue.
    let (manager_tx, manager_rx) = mpsc::unbounded_channel();
    let manager_ctrl = api_manager::controller(
        &client,
        &config,
        counted(manager_stream, &queues, &metrics, "apimanager"),
        managers.clone(),
        (queues.clone(), metrics.clone()),
    )
    .reconcile_on(counted_refs(ReceiverStream(manager_rx), &queues, &metrics, "apimanager"));
    let policy_ctrl =
        Controller::for_stream(counted(policy_stream, &queues, &metrics, "throttlepolicy"), policies.clone());
    let key_manager_ctrl =
        Controller::for_stream(counted(key_manager_stream, &queues, &metrics, "keymanager"), key_managers.clone())
            .reconcile_on(counted_refs(ReceiverStream(km_rx), &queues, &metrics, "keymanager"));
    let api_ctrl = Controller::for_stream(counted(api_stream, &queues, &metrics, "apideployment"), apis.clone())
        .reconcile_on(counted_refs(ReceiverStream(api_rx), &queues, &metrics, "apideployment"));
    let plan_rx = counted_refs(ReceiverStream(plan_rx), &queues, &metrics, "artifacts");
    let reporter = Reporter { controller: FIELD_MANAGER.into(), instance: Some(identity.clone()) };
    let ctx = Arc::new(Context {
        client: client.clone(),
        workload,
        managers,
        apis,
        policies,
        key_managers,
        config_maps,
        definitions,
        folders: Folders::default(),
        metrics,
        queues,
        recorder: Recorder::new(client.clone(), reporter),
        index,
        decisions,
        plan_manager: plan_tx,
        requeue_api: api_tx,
        requeue_manager: manager_tx,
        signing_groups: SigningGroups::default(),
        requeue_key_manager: km_tx,
        identity,
        gate,
        failures: Failures::default(),
        ready: vec![managers_ready, apis_ready, policies_ready, key_managers_ready, config_maps_ready],
        config,
    });
    let cfg = kube::runtime::controller::Config::default().concurrency(concurrency);

    let managers = manager_ctrl
        .with_config(cfg.clone())
        .shutdown_on_signal()
        .run(api_manager::reconcile, api_manager::error_policy, ctx.clone())
        .for_each(|r| async move { log_result("apimanager", r) });
    let apis = api_ctrl
        .with_config(cfg.clone())
        .shutdown_on_signal()
        .run(api_deployment::reconcile, api_deployment::error_policy, ctx.clone())
        .for_each(|r| async move { log_result("apideployment", r) });
    let policies = policy_ctrl
        .with_config(cfg.clone())
        .shutdown_on_signal()
        .run(throttle_policy::reconcile, throttle_policy::error_policy, ctx.clone())
        .for_each(|r| async move { log_result("throttlepolicy", r) });
    let key_managers = key_manager_ctrl
        .with_config(cfg.clone())
        .shutdown_on_signal()
        .run(key_manager::reconcile, key_manager::error_policy, ctx.clone())
        .for_each(|r| async move { log_result("keymanager", r) });
    // The artifact controller, keyed by ApiManager: a burst of changes to one
    // manager's objects is planned once (debounced), by one worker per
    // manager. It shares the managers' cache, so it starts once that cache
    // is complete (kube's store readiness wakes a single waiter).
    let folders = {
        let ctx = ctx.clone();
        async move {
            ctx.caches_ready().await;
            Controller::for_stream(futures::stream::pending(), ctx.managers.clone())
                .reconcile_on(plan_rx)
                .with_config(cfg.clone().debounce(artifacts::DEBOUNCE))
                .shutdown_on_signal()
                .run(artifacts::reconcile, artifacts::error_policy, ctx.clone())
                .for_each(|r| async move { log_result("artifacts", r) })
                .await
        }
    };
    // Ready once the caches are complete.
    {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            ctx.caches_ready().await;
            ready.store(true, std::sync::atomic::Ordering::Release);
        });
    }
    // The ConfigMap cache has no controller of its own: drive its stream.
    let config_maps = config_map_stream.for_each(|_| async {});
    let sweeper = api_manager::sweep_orphans(ctx.clone());
    tokio::select! {
        _ = futures::future::join5(managers, apis, policies, key_managers, folders) => {}
        _ = sweeper => {}
        _ = config_maps => {}
    }
    Ok(())
}

/// A tokio unbounded receiver as a `Stream`.
pub struct ReceiverStream<T>(pub mpsc::UnboundedReceiver<T>);

impl<T> futures::Stream for ReceiverStream<T> {
    type Item = T;
    fn poll_next(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<T>> {
        self.0.poll_recv(cx)
    }
}

/// A controller's object stream, each object counted into its queue.
pub fn counted<K: Resource<DynamicType = ()>>(
    stream: impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
    queues: &Arc<Queues>,
    metrics: &Arc<Metrics>,
    controller: &'static str,
) -> impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static {
    let (queues, metrics) = (queues.clone(), metrics.clone());
    stream.inspect(move |r| {
        if let Ok(o) = r {
            queues.queued(&metrics, controller, &ObjectRef::from(o));
        }
    })
}

/// A trigger stream of object references, each counted into the queue.
pub fn counted_refs<K: Resource<DynamicType = ()>>(
    stream: impl futures::Stream<Item = ObjectRef<K>> + Send + 'static,
    queues: &Arc<Queues>,
    metrics: &Arc<Metrics>,
    controller: &'static str,
) -> impl futures::Stream<Item = ObjectRef<K>> + Send + 'static {
    let (queues, metrics) = (queues.clone(), metrics.clone());
    stream.inspect(move |o| queues.queued(&metrics, controller, o))
}

fn log_result<K: Resource, W: std::fmt::Display>(
    controller: &str,
    r: Result<(ObjectRef<K>, Action), kube::runtime::controller::Error<Error, W>>,
) where
    K::DynamicType: std::fmt::Debug,
{
    match r {
        Ok((obj, _)) => tracing::debug!(controller, object = %obj, "reconciled"),
        Err(kube::runtime::controller::Error::ReconcilerFailed(e, obj)) if e.is_pending() => {
            tracing::debug!(controller, object = %obj, reason = %e, "waiting")
        }
        Err(kube::runtime::controller::Error::ReconcilerFailed(e, obj)) => {
            tracing::warn!(controller, object = %obj, error = %e, "reconcile failed")
        }
        Err(e) => tracing::warn!(controller, error = %e, "controller"),
    }
}

/// Per-object failure counts for the error backoff.
#[derive(Default)]
pub struct Failures(std::sync::Mutex<std::collections::HashMap<String, u32>>);

impl Failures {
    pub fn bump(&self, key: String) -> u32 {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(key).or_default();
        *n = n.saturating_add(1);
        *n
    }
    pub fn reset(&self, key: &str) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }
}

/// The signing gateway groups per manager, as last used or seen.
#[derive(Default)]
pub struct SigningGroups(
    std::sync::Mutex<std::collections::HashMap<crate::plan::Key, std::collections::BTreeSet<String>>>,
);

impl SigningGroups {
    /// Records what the workload was made with.
    pub fn remember(&self, manager: &crate::plan::Key, groups: &std::collections::BTreeSet<String>) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(manager.clone(), groups.clone());
    }

    /// Whether `groups` differs from what was last recorded (and records it).
    pub fn changed(&self, manager: &crate::plan::Key, groups: &std::collections::BTreeSet<String>) -> bool {
        let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        seen.insert(manager.clone(), groups.clone()).as_ref() != Some(groups)
    }
}
