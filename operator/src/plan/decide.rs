//! The decisions of one ApiManager's plan: which ApiDeployments its folder
//! serves (allowed namespaces, lifecycle, route conflicts, references) and
//! which KeyManagers its gateways trust. Cheap and pure: it reads names,
//! routes, creation times and the references the inputs resolve to, and
//! renders nothing; the plan renders the artifacts of what was decided.

use std::{collections::BTreeMap, sync::Arc};

use kube::ResourceExt;
use sha2::{Digest, Sha256};
use tollgate_crds::{
    ApiDeployment, ApiManager, KeyManager,
    api_deployment::Operation,
    api_manager::{NamespacesFrom, Pattern},
    conditions::reasons,
};

use super::{Inputs, Key, Outcome, Route, Verdict, key_managers, policy_names, route_of};

/// An OpenAPI document read from a ConfigMap, parsed once when it is read.
#[derive(Clone, Debug)]
pub struct Definition {
    /// Hash of the text: part of what the rendered artifact depends on.
    pub hash: String,
    /// The operations it declares, or why it is not a usable OpenAPI 3 document.
    pub operations: Result<Vec<Operation>, String>,
    /// The document itself, carried into the artifact for the portal.
    pub text: Arc<str>,
}

impl Definition {
    pub fn parse(text: &str) -> Definition {
        Definition {
            hash: hex::encode(&Sha256::digest(text.as_bytes())[..8]),
            operations: super::operations_from_openapi(text),
            text: Arc::from(text),
        }
    }
}

/// Where the definition of `api` is found in [`Definitions`]: its ConfigMap
/// key, or for a document written in the ApiDeployment itself
/// `(namespace, "ApiDeployment/<name>", "")` (no ConfigMap name has a '/').
pub fn definition_key(api: &ApiDeployment) -> Option<(String, String, String)> {
    let def = api.spec.definition.as_ref()?;
    let ns = api.namespace().unwrap_or_default();
    Some(match &def.config_map_ref {
        Some(r) => (ns, r.name.clone(), r.key.clone()),
        None => (ns, format!("ApiDeployment/{}", api.name_any()), String::new()),
    })
}

/// Where a definition came from, for messages.
fn definition_source(key: &(String, String, String)) -> String {
    match key.1.strip_prefix("ApiDeployment/") {
        Some(_) => "spec.definition.document".to_string(),
        None => format!("ConfigMap {}/{} key {:?}", key.0, key.1, key.2),
    }
}

impl From<&str> for Definition {
    fn from(text: &str) -> Definition {
        Definition::parse(text)
    }
}

/// OpenAPI documents read from ConfigMaps, keyed by (namespace, configmap, key).
/// `Err` holds why the document could not be read (missing map or key).
pub type Definitions = BTreeMap<(String, String, String), Result<Definition, String>>;

/// An ApiDeployment the folder serves, with its references resolved.
#[derive(Debug)]
pub struct Deploy<'a> {
    pub api: &'a ApiDeployment,
    /// `<context>/<version>`.
    pub url: String,
    /// Operations derived from the OpenAPI definition (empty without one,
    /// or when the API lists its own).
    pub operations: &'a [Operation],
    /// The resolved OpenAPI definition, carried into the artifact.
    pub definition: Option<&'a Definition>,
    /// The ThrottlePolicies it uses.
    pub policies: Vec<Key>,
    /// The namespaces whose ThrottlePolicies are its subscription tiers
    /// (its own, then its ApiManager's): every valid policy there is written
    /// to the folder, so any of them can be subscribed to.
    pub tier_namespaces: Vec<String>,
    /// The trusted KeyManagers it names.
    pub key_managers: Vec<Key>,
}

/// What becomes of one ApiDeployment.
#[derive(Debug)]
pub enum ApiDecision<'a> {
    /// Served (or, lifecycle Created, written but not served).
    Deploy(Deploy<'a>),
    /// Kept out of the folder; the outcome says why.
    Refused(Outcome),
}

/// Every decision of one ApiManager.
#[derive(Debug, Default)]
pub struct Decision<'a> {
    pub apis: BTreeMap<Key, ApiDecision<'a>>,
    /// The KeyManagers the manager's gateways trust (their artifacts are in the folder).
    pub trusted: BTreeMap<Key, &'a KeyManager>,
    /// The Accepted verdict of every KeyManager bound to the manager.
    pub key_managers: BTreeMap<Key, Verdict>,
}

fn refused(accepted: Verdict, resolved: Verdict, deployed: Verdict, url: Option<String>) -> ApiDecision<'static> {
    ApiDecision::Refused(Outcome { accepted, resolved_refs: resolved, deployed, url, revision: None })
}

/// Decide what one ApiManager's folder holds.
pub fn decide<'a>(inputs: &Inputs<'a>) -> Decision<'a> {
    let manager = inputs.manager;
    let mgr_ns = manager.namespace().unwrap_or_default();
    let mgr_name = manager.name_any();
    let bound = key_managers::bound(inputs, &mgr_ns, &mgr_name);
    let mut out = Decision { apis: BTreeMap::new(), trusted: bound.trusted, key_managers: bound.verdicts };

    // Who keeps a contested context/version: the older ApiDeployment
    // (creationTimestamp); on an equal creationTimestamp (one-second
    // resolution) the one whose artifact already claims the route; only when
    // neither does, namespace/name order. Objects being deleted claim nothing.
    let mut apis: Vec<&'a ApiDeployment> =
        inputs.apis.iter().copied().filter(|a| a.metadata.deletion_timestamp.is_none()).collect();
    apis.sort_by_cached_key(|a| {
        let created = a.metadata.creation_timestamp.as_ref().map(|t| t.0);
        let key = (a.namespace().unwrap_or_default(), a.name_any());
        let incumbent = inputs.serving.get(&key).is_some_and(|r| *r == route_of(a));
        (created, !incumbent, key)
    });

    let mut claimed: BTreeMap<Route, Key> = BTreeMap::new();
    for api in apis {
        let ns = api.namespace().unwrap_or_default();
        let key = (ns.clone(), api.name_any());
        let url = format!("{}/{}", api.spec.context.trim_end_matches('/'), api.spec.version);

        // 1. Allowed namespaces.
        if let Err(why) = namespace_allowed(manager, &ns, inputs.namespace_labels) {
            let msg = format!("namespace {ns:?} may not deploy APIs onto ApiManager {mgr_ns}/{mgr_name}: {why}");
            let d = refused(
                Verdict::no(reasons::NOT_ALLOWED, msg.clone()),
                Verdict::no(reasons::NOT_ALLOWED, "not evaluated: the API is not allowed"),
                Verdict::no(reasons::NOT_ALLOWED, msg),
                None,
            );
            out.apis.insert(key, d);
            continue;
        }

        // 2. Retired APIs keep nothing and claim nothing.
        if !api.spec.lifecycle.has_artifact() {
            let d = refused(
                Verdict::yes(reasons::ACCEPTED, "accepted"),
                Verdict::yes(reasons::RESOLVED, "not needed: the API is Retired"),
                Verdict::no(reasons::RETIRED, "lifecycle is Retired: the artifact was removed"),
                None,
            );
            out.apis.insert(key, d);
            continue;
        }

        // 3. Conflicts: the oldest claim on context/version wins.
        let route = route_of(api);
        if let Some((ons, oname)) = claimed.get(&route) {
            let msg = format!(
                "{url} is already served on this ApiManager by ApiDeployment {ons}/{oname} (older, or created in the same second and serving first)"
            );
            let d = refused(
                Verdict::no(reasons::CONFLICT, msg.clone()),
                Verdict::no(reasons::CONFLICT, "not evaluated: the API is in conflict"),
                Verdict::no(reasons::CONFLICT, msg),
                None,
            );
            out.apis.insert(key, d);
            continue;
        }
        claimed.insert(route, key.clone());

        // 4. References: gateway groups, policies, key managers, definition.
        let d = match resolve(api, manager, &mgr_ns, inputs, &out.trusted) {
            Ok(r) => ApiDecision::Deploy(Deploy { url, ..r }),
            Err((reason, msg)) => refused(
                Verdict::yes(reasons::ACCEPTED, "accepted"),
                Verdict::no(reason, msg.clone()),
                Verdict::no(reason, msg),
                Some(url),
            ),
        };
        out.apis.insert(key, d);
    }
    out
}

/// The references of one ApiDeployment (`url` is filled by the caller).
fn resolve<'a>(
    api: &'a ApiDeployment,
    manager: &ApiManager,
    mgr_ns: &str,
    inputs: &Inputs<'a>,
    trusted: &BTreeMap<Key, &KeyManager>,
) -> Result<Deploy<'a>, (&'static str, String)> {
    let ns = api.namespace().unwrap_or_default();
    if manager.spec.pattern == Pattern::DistributedGateways {
        let known: Vec<&str> = manager.spec.gateways.iter().map(|g| g.name.as_str()).collect();
        let unknown: Vec<&str> = api.spec.gateways.iter().map(String::as_str).filter(|g| !known.contains(g)).collect();
        if !unknown.is_empty() {
            return Err((
                reasons::GATEWAY_NOT_FOUND,
                format!("gateway group(s) {unknown:?} not found on the ApiManager (it has {known:?})"),
            ));
        }
    }
    let (mut policies, missing) = lookup(policy_names(api), &ns, mgr_ns, |k| inputs.policies.contains_key(k));
    if !missing.is_empty() {
        return Err((
            reasons::POLICY_NOT_FOUND,
            format!("ThrottlePolicy {} not found in {}", missing.join(", "), places(&ns, mgr_ns)),
        ));
    }
    let key_managers = key_managers::resolve(api, mgr_ns, trusted)?;
    let (mut operations, mut definition): (&'a [Operation], Option<&'a Definition>) = (&[], None);
    if let Some(k) = definition_key(api) {
        let d = match inputs.definitions.get(&k) {
            Some(Ok(d)) => d,
            Some(Err(why)) => return Err((reasons::DEFINITION_NOT_FOUND, why.clone())),
            None => {
                return Err((reasons::DEFINITION_NOT_FOUND, format!("{} not read yet", definition_source(&k))));
            }
        };
        let derived = d.operations.as_deref().map_err(|e| {
            (reasons::INVALID_DEFINITION, format!("OpenAPI definition in {}: {e}", definition_source(&k)))
        })?;
        if api.spec.operations.is_empty() {
            operations = derived;
        }
        definition = Some(d);
    }
    policies.sort();
    policies.dedup();
    let mut tier_namespaces = vec![ns.clone()];
    if mgr_ns != ns {
        tier_namespaces.push(mgr_ns.to_string());
    }
    Ok(Deploy { api, url: String::new(), operations, definition, policies, tier_namespaces, key_managers })
}

/// Names an API refers to, looked up in its own namespace `ns` first, then
/// in its manager's: the keys found, and the names found in neither.
pub(super) fn lookup<'n>(
    names: impl IntoIterator<Item = &'n str>,
    ns: &str,
    mgr_ns: &str,
    known: impl Fn(&Key) -> bool,
) -> (Vec<Key>, Vec<&'n str>) {
    let (mut found, mut missing) = (Vec::new(), Vec::new());
    for name in names {
        let own = (ns.to_string(), name.to_string());
        let fallback = (mgr_ns.to_string(), name.to_string());
        if known(&own) {
            found.push(own);
        } else if known(&fallback) {
            found.push(fallback);
        } else {
            missing.push(name);
        }
    }
    (found, missing)
}

/// Where [`lookup`] looked, for messages.
pub(super) fn places(ns: &str, mgr_ns: &str) -> String {
    if ns == mgr_ns { format!("namespace {ns:?}") } else { format!("namespaces {ns:?} or {mgr_ns:?}") }
}

/// Whether APIs from `ns` may deploy onto the manager (Err says why not).
pub fn namespace_allowed(
    manager: &ApiManager,
    ns: &str,
    labels: &BTreeMap<String, BTreeMap<String, String>>,
) -> Result<(), String> {
    let allowed = &manager.spec.allowed_namespaces;
    let mgr_ns = manager.namespace().unwrap_or_default();
    match allowed.from {
        NamespacesFrom::All => Ok(()),
        NamespacesFrom::Same if ns == mgr_ns => Ok(()),
        NamespacesFrom::Same => Err(format!("allowedNamespaces.from is Same ({mgr_ns:?})")),
        NamespacesFrom::Selector => {
            let Some(selector) = &allowed.selector else {
                return Err("allowedNamespaces.from is Selector but no selector is set".into());
            };
            let empty = BTreeMap::new();
            let ns_labels = labels.get(ns).unwrap_or(&empty);
            if super::selector_matches(selector, ns_labels) {
                Ok(())
            } else {
                Err("the namespace's labels do not match allowedNamespaces.selector".into())
            }
        }
    }
}
