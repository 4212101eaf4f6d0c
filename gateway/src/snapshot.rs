//! The routing snapshot: every API and policy compiled into one immutable
//! structure that requests read without locks. A new snapshot is built on
//! each configuration change and swapped in atomically; requests in flight
//! keep the snapshot they started with.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use tollgate_crds::api_deployment::Lifecycle;
use tollgate_crds::{ApiDeployment, ObjectRef, Resource, ThrottlePolicy};

use crate::metrics::ApiMetrics;
use crate::oauth::Issuer;
use crate::pipeline::authn::OAuth2;
use crate::pipeline::throttle::{NamespacePolicies, Tiers};
use crate::pipeline::{Pipeline, PipelineSpec};
use crate::policy::Policy;
use crate::route::router::PrefixRouter;
use crate::runtime::Shared;
use crate::upstream::EndpointSet;

/// A compiled ApiDeployment.
pub struct Api {
    /// `namespace/name`.
    pub id: String,
    /// The same, for analytics events (a reference count, not a copy, per
    /// request).
    pub shared_id: Arc<str>,
    pub object: ObjectRef,
    pub spec: tollgate_crds::ApiDeploymentSpec,
    /// `<context>/<version>`.
    pub versioned_path: String,
    /// The checks a request goes through before it is forwarded.
    pub pipeline: Pipeline,
    pub endpoints: Arc<EndpointSet>,
    pub sandbox: Option<Arc<EndpointSet>>,
    pub timeout: Duration,
    pub retries: u32,
    pub metrics: ApiMetrics,
}

impl Api {
    /// The endpoints a request goes to (sandbox credentials use the
    /// sandbox endpoints).
    pub fn endpoints_for(&self, sandbox: bool) -> &EndpointSet {
        match (&self.sandbox, sandbox) {
            (Some(s), true) => s,
            _ => &self.endpoints,
        }
    }
}

impl Api {
    /// The words an API is found by (substring search without an index).
    pub fn search_text(&self) -> String {
        let s = &self.spec;
        let mut parts = vec![self.id.clone(), s.context.clone(), s.version.clone()];
        parts.extend(s.display_name.clone());
        parts.extend(s.description.clone());
        parts.extend(s.tags.iter().cloned());
        parts.extend(s.operations.iter().map(|o| format!("{} {}", o.method.as_str(), o.path)));
        parts.join(" ")
    }
}

/// Where a prefix leads.
pub struct Route {
    pub api: Arc<Api>,
    /// Served at `<context>` as the default version.
    pub default_version: bool,
}

/// An error tied to one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectError {
    pub object: ObjectRef,
    pub message: String,
}

/// The immutable routing state.
pub struct Snapshot {
    pub revision: String,
    pub router: PrefixRouter<Route>,
    pub apis: Vec<Arc<Api>>,
    pub policies: HashMap<String, Arc<Policy>>,
    /// Trusted token issuers (KeyManagers) by `namespace/name`.
    pub issuers: BTreeMap<String, Arc<Issuer>>,
    pub built_at: SystemTime,
}

impl Snapshot {
    /// An empty snapshot (nothing served).
    pub fn empty() -> Snapshot {
        Snapshot {
            revision: "empty".into(),
            router: PrefixRouter::default(),
            apis: Vec::new(),
            policies: HashMap::new(),
            issuers: BTreeMap::new(),
            built_at: SystemTime::now(),
        }
    }
}

impl Snapshot {
    /// The ThrottlePolicy a subscription tier names, for an API: in the
    /// API's namespace, else its ApiManager's.
    pub fn tier_policy(&self, api: &Api, tier: &str) -> Option<Arc<Policy>> {
        let ns = &api.object.namespace;
        let mgr_ns = api.spec.api_manager_ref.namespace.as_deref().unwrap_or(ns);
        self.policies.get(&format!("{ns}/{tier}")).or_else(|| self.policies.get(&format!("{mgr_ns}/{tier}"))).cloned()
    }

    /// The published APIs as the store's search index holds them.
    pub fn indexed_apis(&self) -> Vec<crate::store::search::IndexedApi> {
        self.apis
            .iter()
            .map(|a| {
                let s = &a.spec;
                crate::store::search::IndexedApi {
                    id: a.id.clone(),
                    name: s.display_name.clone().unwrap_or_else(|| a.object.name.clone()),
                    description: s.description.clone().unwrap_or_default(),
                    tags: s.tags.clone(),
                    context: s.context.clone(),
                    operations: s.operations.iter().map(|o| format!("{} {}", o.method.as_str(), o.path)).collect(),
                }
            })
            .collect()
    }

    /// Which object serves each `<context>/<version>` now: the tie-breaker
    /// between two APIs created in the same second.
    pub fn owners(&self) -> HashMap<String, ObjectRef> {
        self.apis.iter().map(|a| (a.versioned_path.clone(), a.object.clone())).collect()
    }
}

/// Content hash of a set of objects.
pub fn revision_of(objects: &BTreeMap<ObjectRef, Resource>) -> String {
    let mut h = Sha256::new();
    for (r, res) in objects {
        h.update(r.to_string().as_bytes());
        let json = match res {
            Resource::ApiDeployment(a) => serde_json::to_vec(&a.spec),
            Resource::ThrottlePolicy(p) => serde_json::to_vec(&p.spec),
            Resource::ApiManager(m) => serde_json::to_vec(&m.spec),
            Resource::KeyManager(k) => serde_json::to_vec(&k.spec),
        }
        .unwrap_or_default();
        h.update(&json);
    }
    let d = h.finalize();
    hex::encode(&d[..6])
}

/// The `<context>/<version>` an ApiDeployment claims.
pub fn versioned_path(ad: &ApiDeployment) -> String {
    format!("{}/{}", ad.spec.context.trim_end_matches('/'), ad.spec.version)
}

/// Compiles objects into a snapshot. Objects that cannot be compiled are
/// left out and reported. `serving` (from [`Snapshot::owners`] of the
/// current snapshot) breaks ties between APIs created in the same second.
pub fn compile(
    objects: &BTreeMap<ObjectRef, Resource>,
    shared: &Shared,
    serving: &HashMap<String, ObjectRef>,
) -> (Snapshot, Vec<ObjectError>) {
    let mut errors = Vec::new();
    let mut policies: HashMap<String, Arc<Policy>> = HashMap::new();
    for (r, res) in objects {
        if let Resource::ThrottlePolicy(tp) = res {
            match Policy::compile(tp, &shared.counters, shared.max_keys) {
                Ok(p) => {
                    policies.insert(format!("{}/{}", r.namespace, r.name), Arc::new(p));
                }
                Err(message) => errors.push(ObjectError { object: r.clone(), message }),
            }
        }
    }
    // Counters belong to every policy in the folder, also one whose new
    // version fails to compile (its last good version comes back with them).
    let live: HashSet<String> = objects
        .iter()
        .filter(|(_, res)| matches!(res, Resource::ThrottlePolicy(_)))
        .flat_map(|(r, _)| {
            let id = format!("{}/{}", r.namespace, r.name);
            [format!("{id}#bytes"), id]
        })
        .collect();
    shared.counters.retain(&live);
    let mut by_namespace: HashMap<String, HashMap<String, Arc<Policy>>> = HashMap::new();
    for (id, p) in &policies {
        let ns = id.split_once('/').map(|(ns, _)| ns).unwrap_or_default();
        by_namespace.entry(ns.to_string()).or_default().insert(p.name.clone(), p.clone());
    }
    let by_namespace: HashMap<String, NamespacePolicies> =
        by_namespace.into_iter().map(|(ns, m)| (ns, Arc::new(m))).collect();
    let mut issuers: BTreeMap<String, Arc<Issuer>> = BTreeMap::new();
    for (r, res) in objects {
        if let Resource::KeyManager(km) = res {
            match Issuer::compile(km, &shared.jwks) {
                Ok(i) => {
                    issuers.insert(i.id.clone(), Arc::new(i));
                }
                Err(message) => errors.push(ObjectError { object: r.clone(), message: format!("Invalid: {message}") }),
            }
        }
    }

    // Who keeps a contested path: the older API (creationTimestamp); on an
    // equal creationTimestamp the one serving it now; else namespace/name
    // order. The operator applies the same rule.
    let mut apis: Vec<(&ObjectRef, &ApiDeployment)> = objects
        .iter()
        .filter_map(|(r, res)| match res {
            Resource::ApiDeployment(a) => Some((r, a.as_ref())),
            _ => None,
        })
        .filter(|(_, a)| serves_group(a, shared.gateway_group.as_deref()))
        .collect();
    apis.sort_by_cached_key(|(r, a)| {
        let created = a.metadata.creation_timestamp.as_ref().map(|t| t.0);
        let incumbent = serving.get(&versioned_path(a)) == Some(*r);
        (created, !incumbent, *r)
    });

    let mut router = PrefixRouter::default();
    let mut compiled = Vec::new();
    let mut owners: HashMap<String, String> = HashMap::new();
    for (r, ad) in apis {
        let lifecycle = ad.spec.lifecycle;
        if matches!(lifecycle, Lifecycle::Retired | Lifecycle::Created) {
            continue;
        }
        let api = match compile_api(r, ad, &policies, &by_namespace, &issuers, shared) {
            Ok(a) => Arc::new(a),
            Err(message) => {
                errors.push(ObjectError { object: r.clone(), message });
                continue;
            }
        };
        let vp = api.versioned_path.clone();
        if let Some(owner) = owners.get(&vp) {
            errors.push(ObjectError {
                object: r.clone(),
                message: format!("Conflict: {vp} is already served by {owner}"),
            });
            continue;
        }
        let _ = router.insert(&vp, Route { api: api.clone(), default_version: false });
        owners.insert(vp, api.id.clone());
        if ad.spec.is_default_version {
            let ctx = ad.spec.context.clone();
            match owners.get(&ctx) {
                Some(owner) => errors.push(ObjectError {
                    object: r.clone(),
                    message: format!("Conflict: default version at {ctx} is already served by {owner}"),
                }),
                None => {
                    let _ = router.insert(&ctx, Route { api: api.clone(), default_version: true });
                    owners.insert(ctx, api.id.clone());
                }
            }
        }
        compiled.push(api);
    }
    let snapshot = Snapshot {
        revision: revision_of(objects),
        router,
        apis: compiled,
        policies,
        issuers,
        built_at: SystemTime::now(),
    };
    (snapshot, errors)
}

fn lookup_policy(
    name: &str,
    own_ns: &str,
    manager_ns: &str,
    policies: &HashMap<String, Arc<Policy>>,
) -> Result<Arc<Policy>, String> {
    policies
        .get(&format!("{own_ns}/{name}"))
        .or_else(|| policies.get(&format!("{manager_ns}/{name}")))
        .cloned()
        .ok_or_else(|| {
            format!("PolicyNotFound: ThrottlePolicy {name:?} not found in namespace {own_ns:?} or {manager_ns:?}")
        })
}

fn compile_api(
    r: &ObjectRef,
    ad: &ApiDeployment,
    policies: &HashMap<String, Arc<Policy>>,
    by_namespace: &HashMap<String, NamespacePolicies>,
    issuers: &BTreeMap<String, Arc<Issuer>>,
    shared: &Shared,
) -> Result<Api, String> {
    let s = &ad.spec;
    let ns = r.namespace.as_str();
    let manager_ns = s.api_manager_ref.namespace.as_deref().unwrap_or(ns);
    let policy = s.throttling.as_ref().map(|t| lookup_policy(&t.policy, ns, manager_ns, policies)).transpose()?;
    let operation_policies = s
        .operations
        .iter()
        .map(|op| op.throttling.as_ref().map(|t| lookup_policy(&t.policy, ns, manager_ns, policies)).transpose())
        .collect::<Result<Vec<_>, _>>()?;
    let id = format!("{ns}/{}", r.name);
    let tiers = Tiers {
        own: by_namespace.get(ns).cloned(),
        manager: (manager_ns != ns).then(|| by_namespace.get(manager_ns).cloned()).flatten(),
    };
    let oauth2 = s
        .security
        .as_ref()
        .and_then(|sec| sec.oauth2.as_ref())
        .map(|o| {
            let manager = format!("{manager_ns}/{}", s.api_manager_ref.name);
            trusted_issuers(&o.key_managers, ns, manager_ns, &manager, issuers, shared.builtin.as_ref()).map(
                |issuers| OAuth2 {
                    issuers,
                    audience: o.audience.clone().filter(|a| !a.is_empty()),
                    forward_token: o.forward_token,
                },
            )
        })
        .transpose()?;
    let pipeline = Pipeline::compile(PipelineSpec { api_id: &id, spec: s, policy, operation_policies, tiers, oauth2 })?;
    if pipeline.signs_responses && shared.key_manager.is_none() {
        return Err(
            "openBanking.jws.signResponses needs the key manager's signing key, which this gateway does not have \
                    (it does not play the key-manager role)"
                .into(),
        );
    }
    let endpoints = |list: &[tollgate_crds::api_deployment::Endpoint]| {
        let items: Vec<(String, u32)> = list.iter().map(|e| (e.url.clone(), e.weight.max(0) as u32)).collect();
        EndpointSet::build(&items, &shared.health, &shared.dns).map(Arc::new).map_err(|e| e.to_string())
    };
    let timeout =
        s.backend.timeout.duration().ok_or_else(|| format!("invalid backend timeout {:?}", s.backend.timeout.0))?;
    Ok(Api {
        metrics: shared.metrics.api(&id),
        shared_id: id.as_str().into(),
        id,
        object: r.clone(),
        versioned_path: versioned_path(ad),
        pipeline,
        endpoints: endpoints(&s.backend.endpoints)?,
        sandbox: if s.backend.sandbox_endpoints.is_empty() {
            None
        } else {
            Some(endpoints(&s.backend.sandbox_endpoints)?)
        },
        timeout,
        retries: s.backend.retries.max(0) as u32,
        spec: s.clone(),
    })
}

/// The issuers an API trusts: the KeyManagers it names (in its namespace,
/// then its ApiManager's; each bound to that ApiManager), or every
/// KeyManager of its ApiManager and the built-in key manager when it names
/// none. The name `builtin` stands for the built-in key manager unless a
/// KeyManager has that name.
fn trusted_issuers(
    names: &[String],
    own_ns: &str,
    manager_ns: &str,
    manager: &str,
    issuers: &BTreeMap<String, Arc<Issuer>>,
    builtin: Option<&Arc<Issuer>>,
) -> Result<Vec<Arc<Issuer>>, String> {
    if names.is_empty() {
        let mut all: Vec<Arc<Issuer>> = issuers.values().filter(|i| i.manager == manager).cloned().collect();
        all.extend(builtin.cloned());
        return Ok(all);
    }
    names
        .iter()
        .map(|n| {
            [own_ns, manager_ns]
                .iter()
                .find_map(|ns| issuers.get(&format!("{ns}/{n}")).filter(|i| i.manager == manager))
                .or(builtin.filter(|_| n == crate::key_manager::BUILTIN))
                .cloned()
                .ok_or_else(|| {
                    format!(
                        "KeyManagerNotFound: KeyManager {n:?} of ApiManager {manager} not found in namespace {own_ns:?} or {manager_ns:?}"
                    )
                })
        })
        .collect()
}

/// Objects by identity from policies and APIs (helper for tests and reload).
/// Whether a gateway of `group` serves the API (all groups when spec.gateways is empty).
pub fn serves_group(api: &ApiDeployment, group: Option<&str>) -> bool {
    match group {
        None => true,
        Some(g) => api.spec.gateways.is_empty() || api.spec.gateways.iter().any(|x| x == g),
    }
}

pub fn object_map(resources: impl IntoIterator<Item = Resource>) -> BTreeMap<ObjectRef, Resource> {
    resources.into_iter().map(|r| (r.object_ref(), r)).collect()
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<Snapshot>();
    is::<ThrottlePolicy>();
}
