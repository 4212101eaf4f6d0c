//! The routing snapshot: every API and policy compiled into one immutable
//! structure that requests read without locks. A new snapshot is built on
//! each configuration change and swapped in atomically; requests in flight
//! keep the snapshot they started with.

use std::collections::{BTreeMap, HashSet};

use foldhash::{HashMap, HashMapExt};
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
    /// The compiled policies and issuers it was built with: the next
    /// snapshot reuses this API while its spec and these stay the same.
    uses: Uses,
}

/// The compiled objects an API refers to, compared by identity.
#[derive(Clone)]
struct Uses {
    policy: Option<Arc<Policy>>,
    operation_policies: Vec<Option<Arc<Policy>>>,
    tiers: Tiers,
    issuers: Option<Vec<Arc<Issuer>>>,
}

impl Uses {
    fn same_as(&self, other: &Uses) -> bool {
        fn same<T>(a: &Option<Arc<T>>, b: &Option<Arc<T>>) -> bool {
            match (a, b) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            }
        }
        fn same_list<T>(a: &[Option<Arc<T>>], b: &[Option<Arc<T>>]) -> bool {
            a.len() == b.len() && a.iter().zip(b).all(|(a, b)| same(a, b))
        }
        same(&self.policy, &other.policy)
            && same_list(&self.operation_policies, &other.operation_policies)
            && same(&self.tiers.own, &other.tiers.own)
            && same(&self.tiers.manager, &other.tiers.manager)
            && match (&self.issuers, &other.issuers) {
                (Some(a), Some(b)) => a.len() == b.len() && a.iter().zip(b).all(|(a, b)| Arc::ptr_eq(a, b)),
                (None, None) => true,
                _ => false,
            }
    }
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
    /// What the policies and issuers were compiled from, for the next
    /// compile to reuse them (and the APIs using them) while unchanged.
    sources: Sources,
}

#[derive(Default)]
struct Sources {
    /// The policies of each namespace, as the APIs' tiers hold them.
    namespaces: HashMap<String, NamespacePolicies>,
    /// Every object's content hash: the revision, and whether a policy or
    /// issuer is unchanged.
    digests: Digests,
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
            sources: Sources::default(),
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
}

/// Each object's content hash, with the parsed object it was taken from.
type Digests = HashMap<ObjectRef, (Resource, [u8; 32])>;

/// Content hash of a set of objects (each object's spec hash, in order).
/// Hashes are taken again only for objects not in `known` as the same
/// parsed object; returns the hashes for the next time.
pub fn revision_of(objects: &BTreeMap<ObjectRef, Resource>, known: &Digests) -> (String, Digests) {
    let mut h = Sha256::new();
    let mut digests = HashMap::with_capacity(objects.len());
    for (r, res) in objects {
        let digest = match known.get(r).filter(|(old, _)| old.is_same(res)) {
            Some((_, d)) => *d,
            None => {
                let json = match res {
                    Resource::ApiDeployment(a) => serde_json::to_vec(&a.spec),
                    Resource::ThrottlePolicy(p) => serde_json::to_vec(&p.spec),
                    Resource::ApiManager(m) => serde_json::to_vec(&m.spec),
                    Resource::KeyManager(k) => serde_json::to_vec(&k.spec),
                }
                .unwrap_or_default();
                Sha256::digest(&json).into()
            }
        };
        for part in [&r.kind, &r.namespace, &r.name] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        h.update(digest);
        digests.insert(r.clone(), (res.clone(), digest));
    }
    let d = h.finalize();
    (hex::encode(&d[..6]), digests)
}

/// The `<context>/<version>` an ApiDeployment claims.
pub fn versioned_path(ad: &ApiDeployment) -> String {
    format!("{}/{}", ad.spec.context.trim_end_matches('/'), ad.spec.version)
}

/// Compiles objects into a snapshot. Objects that cannot be compiled are
/// left out and reported. `current` is the snapshot served now: its owners
/// break ties between APIs created in the same second, and what it compiled
/// from unchanged objects (policies, issuers, APIs whose spec and policies
/// and issuers are the same) is reused rather than compiled again.
pub fn compile(
    objects: &BTreeMap<ObjectRef, Resource>,
    shared: &Shared,
    current: &Snapshot,
) -> (Snapshot, Vec<ObjectError>) {
    let mut errors = Vec::new();
    let mut sources = Sources::default();
    let (revision, digests) = revision_of(objects, &current.sources.digests);
    // The same content as in the snapshot served now.
    let unchanged = |r: &ObjectRef| match (current.sources.digests.get(r), digests.get(r)) {
        (Some((_, old)), Some((_, new))) => old == new,
        _ => false,
    };
    let mut policies: HashMap<String, Arc<Policy>> = HashMap::new();
    for (r, res) in objects {
        if let Resource::ThrottlePolicy(tp) = res {
            let id = format!("{}/{}", r.namespace, r.name);
            let unchanged = unchanged(r);
            let policy = match current.policies.get(&id).filter(|_| unchanged) {
                Some(p) => Ok(p.clone()),
                None => Policy::compile(tp, &shared.counters, shared.max_keys).map(Arc::new),
            };
            match policy {
                Ok(p) => {
                    policies.insert(id, p);
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
    // A namespace's policies keep their map (the identity the APIs' tiers
    // are compared by) while they are the same policies.
    let by_namespace: HashMap<String, NamespacePolicies> = by_namespace
        .into_iter()
        .map(|(ns, m)| {
            let kept = current.sources.namespaces.get(&ns).filter(|old| {
                old.len() == m.len() && m.iter().all(|(name, p)| old.get(name).is_some_and(|o| Arc::ptr_eq(o, p)))
            });
            let map = kept.cloned().unwrap_or_else(|| Arc::new(m));
            (ns, map)
        })
        .collect();
    sources.namespaces = by_namespace.clone();
    let mut issuers: BTreeMap<String, Arc<Issuer>> = BTreeMap::new();
    for (r, res) in objects {
        if let Resource::KeyManager(km) = res {
            let id = format!("{}/{}", r.namespace, r.name);
            let unchanged = unchanged(r);
            let issuer = match current.issuers.get(&id).filter(|_| unchanged) {
                Some(i) => Ok(i.clone()),
                None => Issuer::compile(km, &shared.jwks).map(Arc::new),
            };
            match issuer {
                Ok(i) => {
                    issuers.insert(i.id.clone(), i);
                }
                Err(message) => errors.push(ObjectError { object: r.clone(), message: format!("Invalid: {message}") }),
            }
        }
    }
    // The APIs served now (each at its own versioned path).
    let previous: HashMap<&ObjectRef, &Arc<Api>> = current.apis.iter().map(|a| (&a.object, a)).collect();

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
        let incumbent = previous.get(r).is_some_and(|p| p.versioned_path == versioned_path(a));
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
        let api = match compile_api(r, ad, &policies, &by_namespace, &issuers, shared, previous.get(r).copied()) {
            Ok(a) => a,
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
    sources.digests = digests;
    let snapshot =
        Snapshot { revision, router, apis: compiled, policies, issuers, built_at: SystemTime::now(), sources };
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

/// Compiles one API, or hands back `previous` when its spec and the
/// policies and issuers it uses are the ones it was compiled with.
fn compile_api(
    r: &ObjectRef,
    ad: &ApiDeployment,
    policies: &HashMap<String, Arc<Policy>>,
    by_namespace: &HashMap<String, NamespacePolicies>,
    issuers: &BTreeMap<String, Arc<Issuer>>,
    shared: &Shared,
    previous: Option<&Arc<Api>>,
) -> Result<Arc<Api>, String> {
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
    let oauth2 = s.security.as_ref().and_then(|sec| sec.oauth2.as_ref());
    let trusted = oauth2
        .map(|o| {
            let manager = format!("{manager_ns}/{}", s.api_manager_ref.name);
            trusted_issuers(&o.key_managers, ns, manager_ns, &manager, issuers, shared.builtin.as_ref())
        })
        .transpose()?;
    let uses = Uses {
        policy: policy.clone(),
        operation_policies: operation_policies.clone(),
        tiers: tiers.clone(),
        issuers: trusted.clone(),
    };
    if let Some(previous) = previous.filter(|p| p.spec == *s && p.uses.same_as(&uses)) {
        return Ok(previous.clone());
    }
    let oauth2 = oauth2.zip(trusted).map(|(o, issuers)| OAuth2 {
        issuers,
        audience: o.audience.clone().filter(|a| !a.is_empty()),
        forward_token: o.forward_token,
    });
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
    Ok(Arc::new(Api {
        uses,
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
    }))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::test_support::runtime;

    const POLICY: &str = "apiVersion: tollgate.dev/v1alpha1\nkind: ThrottlePolicy\nmetadata: {name: gold, namespace: a}\n\
        spec: {limit: {requests: 10, per: 1m}}\n";
    const ISSUER: &str = "apiVersion: tollgate.dev/v1alpha1\nkind: KeyManager\nmetadata: {name: idp, namespace: a}\n\
        spec: {apiManagerRef: {name: m}, issuer: \"https://idp.test\", jwksUri: \"https://idp.test/jwks\"}\n";

    fn api(name: &str, extra: &str) -> String {
        format!(
            "apiVersion: tollgate.dev/v1alpha1\nkind: ApiDeployment\nmetadata: {{name: {name}, namespace: a}}\n\
             spec: {{apiManagerRef: {{name: m}}, context: /{name}, version: v1,{extra}\n\
             backend: {{endpoints: [{{url: \"http://127.0.0.1:9\"}}]}}}}\n"
        )
    }

    fn objects(docs: &[String]) -> BTreeMap<ObjectRef, Resource> {
        let (loaded, errors) = tollgate_crds::loader::load_str(std::path::Path::new("t.yaml"), &docs.join("---\n"));
        assert!(errors.is_empty(), "{errors:?}");
        object_map(loaded.into_iter().map(|l| l.resource))
    }

    fn by_name<'a>(s: &'a Snapshot, name: &str) -> &'a Arc<Api> {
        s.apis.iter().find(|a| a.object.name == name).unwrap()
    }

    #[test]
    fn unchanged_objects_are_reused_and_whatever_depends_on_a_change_is_compiled_again() {
        let shared = runtime();
        let docs = |plain: &str, policy: &str, issuer: &str| {
            objects(&[
                policy.to_string(),
                issuer.to_string(),
                api("throttled", " throttling: {policy: gold},"),
                api("plain", plain),
                api("tokens", " security: {oauth2: {}},"),
            ])
        };
        let first_objects = docs("", POLICY, ISSUER);
        let (first, errors) = compile(&first_objects, &shared, &Snapshot::empty());
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(first.apis.len(), 3);

        // Nothing changed: every compiled object is the one served now.
        let (same, _) = compile(&first_objects, &shared, &first);
        for a in &first.apis {
            assert!(Arc::ptr_eq(a, by_name(&same, &a.object.name)), "{} compiled again", a.id);
        }
        assert!(Arc::ptr_eq(&first.policies["a/gold"], &same.policies["a/gold"]));
        assert!(Arc::ptr_eq(&first.issuers["a/idp"], &same.issuers["a/idp"]));
        assert_eq!(same.revision, first.revision);

        // One API's spec changed: that API only.
        let (edited, _) = compile(&docs(" displayName: Plain,", POLICY, ISSUER), &shared, &same);
        assert!(!Arc::ptr_eq(by_name(&same, "plain"), by_name(&edited, "plain")));
        assert_eq!(by_name(&edited, "plain").spec.display_name.as_deref(), Some("Plain"));
        assert!(Arc::ptr_eq(by_name(&same, "throttled"), by_name(&edited, "throttled")));
        assert!(Arc::ptr_eq(by_name(&same, "tokens"), by_name(&edited, "tokens")));
        assert_ne!(edited.revision, same.revision);

        // The policy changed: the API throttled by it and every API whose
        // tiers are looked up in its namespace use the new one.
        let (repriced, _) =
            compile(&docs(" displayName: Plain,", &POLICY.replace("10", "20"), ISSUER), &shared, &edited);
        assert_eq!(repriced.policies["a/gold"].limit.requests, 20);
        for name in ["throttled", "plain", "tokens"] {
            let a = by_name(&repriced, name);
            assert!(!Arc::ptr_eq(by_name(&edited, name), a), "{name} kept the old policy");
            assert!(Arc::ptr_eq(a.uses.tiers.own.as_ref().unwrap(), &repriced.sources.namespaces["a"]));
        }
        let throttled = by_name(&repriced, "throttled");
        assert!(Arc::ptr_eq(throttled.uses.policy.as_ref().unwrap(), &repriced.policies["a/gold"]));

        // The issuer changed: only the API trusting it.
        let issuer = ISSUER.replace("https://idp.test", "https://idp2.test");
        let (reissued, errors) =
            compile(&docs(" displayName: Plain,", &POLICY.replace("10", "20"), &issuer), &shared, &repriced);
        assert!(errors.is_empty(), "{errors:?}");
        assert!(!Arc::ptr_eq(by_name(&repriced, "tokens"), by_name(&reissued, "tokens")));
        assert_eq!(by_name(&reissued, "tokens").uses.issuers.as_ref().unwrap()[0].issuer, "https://idp2.test");
        assert!(Arc::ptr_eq(by_name(&repriced, "plain"), by_name(&reissued, "plain")));

        // An API whose policy is gone is refused, not reused.
        let gone = objects(&[api("throttled", " throttling: {policy: gold},"), api("plain", " displayName: Plain,")]);
        let (without, errors) = compile(&gone, &shared, &reissued);
        assert_eq!(without.apis.len(), 1);
        assert!(errors.iter().any(|e| e.object.name == "throttled" && e.message.starts_with("PolicyNotFound")));
    }
}
