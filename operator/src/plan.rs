//! The artifact plan of one ApiManager: a pure function from the objects the
//! operator sees (the ApiManager, the ApiDeployments that point at it, the
//! ThrottlePolicies, the KeyManagers, namespace labels, OpenAPI definitions)
//! to the files its artifact folder must hold and the status every
//! ApiDeployment and KeyManager must show.
//!
//! Nothing here talks to the API server or the file system, so every rule
//! (allowed namespaces, conflicts, reference resolution, lifecycle) is unit
//! tested directly.

mod decide;
mod key_managers;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tollgate_crds::{
    API_VERSION, ApiDeployment, ApiManager, KeyManager, ThrottlePolicy,
    api_deployment::{Method, Operation},
    conditions::reasons,
};

pub use decide::{ApiDecision, Decision, Definition, Definitions, Deploy, decide, definition_key, namespace_allowed};
pub use key_managers::{key_manager_file, key_manager_names, manager_of, render_key_manager};

/// Namespace and name of an object.
pub type Key = (String, String);

/// The verdict for one condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub ok: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Verdict {
    pub fn yes(reason: &'static str, message: impl Into<String>) -> Self {
        Verdict { ok: true, reason, message: message.into() }
    }
    pub fn no(reason: &'static str, message: impl Into<String>) -> Self {
        Verdict { ok: false, reason, message: message.into() }
    }
}

/// What the status of one ApiDeployment must say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub accepted: Verdict,
    pub resolved_refs: Verdict,
    pub deployed: Verdict,
    /// `<context>/<version>` once accepted.
    pub url: Option<String>,
    /// Hash of the artifact and the policy and KeyManager artifacts it uses.
    pub revision: Option<String>,
}

impl Outcome {
    /// The outcome of an ApiDeployment whose ApiManager does not exist.
    pub fn manager_not_found(api: &ApiDeployment) -> Outcome {
        let (ns, name) = manager_key(api);
        let msg = format!("ApiManager {ns}/{name} not found");
        Outcome {
            accepted: Verdict::no(reasons::API_MANAGER_NOT_FOUND, msg.clone()),
            resolved_refs: Verdict::no(reasons::API_MANAGER_NOT_FOUND, msg.clone()),
            deployed: Verdict::no(reasons::API_MANAGER_NOT_FOUND, msg),
            url: None,
            revision: None,
        }
    }
}

/// Everything the plan of one ApiManager depends on.
pub struct Inputs<'a> {
    pub manager: &'a ApiManager,
    /// Every ApiDeployment whose apiManagerRef names this manager.
    pub apis: Vec<&'a ApiDeployment>,
    pub policies: &'a BTreeMap<Key, &'a ThrottlePolicy>,
    /// KeyManagers (any ApiManager's; the plan picks those bound to this one).
    pub key_managers: &'a BTreeMap<Key, &'a KeyManager>,
    pub namespace_labels: &'a BTreeMap<String, BTreeMap<String, String>>,
    pub definitions: &'a Definitions,
    /// The route (`context`, `version`) each ApiDeployment's artifact in the
    /// folder claims right now: the tie-breaker between two ApiDeployments
    /// created in the same second.
    pub serving: &'a BTreeMap<Key, Route>,
}

/// A context (without a trailing `/`) and a version.
pub type Route = (String, String);

/// The route an ApiDeployment claims.
pub fn route_of(api: &ApiDeployment) -> Route {
    (api.spec.context.trim_end_matches('/').to_string(), api.spec.version.clone())
}

/// The files of one artifact folder and the status of every API on it.
#[derive(Debug, Default)]
pub struct Plan {
    /// Relative path (`apis/<ns>_<name>.yaml`, `policies/<ns>_<name>.yaml`,
    /// `keymanagers/<ns>_<name>.yaml`) to content.
    pub files: BTreeMap<String, Arc<str>>,
    pub outcomes: BTreeMap<Key, Outcome>,
    /// The Accepted verdict of every KeyManager bound to this manager.
    pub key_managers: BTreeMap<Key, Verdict>,
    /// The route each planned API artifact claims (what `serving` will be
    /// once the folder holds `files`).
    pub serving: BTreeMap<Key, Route>,
}

/// The ApiManager an ApiDeployment points at (namespace defaults to its own).
pub fn manager_key(api: &ApiDeployment) -> Key {
    let r = &api.spec.api_manager_ref;
    let ns = r.namespace.clone().unwrap_or_else(|| api.namespace().unwrap_or_default());
    (ns, r.name.clone())
}

/// Semantic checks of a ThrottlePolicy beyond the CRD schema (its
/// `Accepted` condition; a policy that fails them is never written).
pub fn check_policy(p: &ThrottlePolicy) -> Verdict {
    for (i, c) in p.spec.conditions.iter().enumerate() {
        for range in &c.match_.ip_ranges {
            let ok = range.parse::<ipnet::IpNet>().is_ok() || range.parse::<std::net::IpAddr>().is_ok();
            if !ok {
                return Verdict::no(
                    reasons::INVALID,
                    format!("spec.conditions[{i}].match.ipRanges: {range:?} is not an IP address or CIDR range"),
                );
            }
        }
    }
    Verdict::yes(reasons::ACCEPTED, "accepted")
}

/// Every ThrottlePolicy name an ApiDeployment uses (API level and operations).
pub fn policy_names(api: &ApiDeployment) -> Vec<&str> {
    let mut names: Vec<&str> = api.spec.throttling.iter().map(|t| t.policy.as_str()).collect();
    names.extend(api.spec.operations.iter().filter_map(|o| o.throttling.as_ref()).map(|t| t.policy.as_str()));
    names.sort_unstable();
    names.dedup();
    names
}

pub fn api_file(ns: &str, name: &str) -> String {
    format!("apis/{ns}_{name}.yaml")
}

pub fn policy_file(ns: &str, name: &str) -> String {
    format!("policies/{ns}_{name}.yaml")
}

const HEADER: &str = "# Written by tollgate-operator from the object of the same name; do not edit.\n";

/// Rendered documents of one manager's objects, reused while the object
/// (uid and generation) and what its document depends on stay the same:
/// planning a folder of thousands of APIs renders only what changed.
#[derive(Default)]
pub struct Renders {
    docs: HashMap<String, Arc<str>>,
    /// Keys used by the current plan; the others are dropped after it.
    used: std::collections::HashSet<String>,
}

impl Renders {
    fn get(&mut self, key: String, render: impl FnOnce() -> String) -> Arc<str> {
        let doc = self.docs.entry(key.clone()).or_insert_with(|| Arc::from(render())).clone();
        self.used.insert(key);
        doc
    }

    /// Drops what the last plan did not use.
    fn sweep(&mut self) {
        let used = std::mem::take(&mut self.used);
        self.docs.retain(|k, _| used.contains(k));
    }

    pub fn len(&self) -> usize {
        self.docs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.docs.is_empty()
    }
}

/// What a rendered document depends on: the object's identity and
/// generation, plus `extra` (the manager's namespace, a definition's hash).
fn render_key(kind: &str, obj: &impl ResourceExt, extra: &str) -> String {
    format!(
        "{kind}/{}/{}/{}/{}/{extra}",
        obj.namespace().unwrap_or_default(),
        obj.name_any(),
        obj.uid().unwrap_or_default(),
        obj.meta().generation.unwrap_or_default()
    )
}

/// Compute the plan of one ApiManager.
pub fn plan(inputs: &Inputs<'_>) -> Plan {
    plan_with(inputs, &mut Renders::default())
}

/// Compute the plan of one ApiManager, reusing (and updating) the
/// manager's rendered documents.
pub fn plan_with(inputs: &Inputs<'_>, renders: &mut Renders) -> Plan {
    let plan = plan_rendered(inputs, renders);
    renders.sweep();
    plan
}

/// Renders what [`decide`] decided: the files of the folder and every
/// ApiDeployment's outcome.
fn plan_rendered(inputs: &Inputs<'_>, renders: &mut Renders) -> Plan {
    let mgr_ns = inputs.manager.namespace().unwrap_or_default();
    let decision = decide(inputs);
    let mut plan = Plan { key_managers: decision.key_managers, ..Plan::default() };

    // Every trusted KeyManager is in the folder, whether or not an API
    // names it: an API with an empty `keyManagers` list accepts them all.
    for ((kns, kname), km) in &decision.trusted {
        let doc = renders.get(render_key("km", *km, &mgr_ns), || render_key_manager(km, &mgr_ns));
        plan.files.insert(key_manager_file(kns, kname), doc);
    }

    // A digest of the valid policies of each namespace that holds tiers
    // (part of the revision of every API subscribing there); their files are
    // written when the namespace is first met.
    let mut tiers: HashMap<String, [u8; 32]> = HashMap::new();
    for (key, d) in decision.apis {
        let d = match d {
            ApiDecision::Refused(outcome) => {
                plan.outcomes.insert(key, outcome);
                continue;
            }
            ApiDecision::Deploy(d) => d,
        };
        let api = d.api;
        let definition_hash = d.definition.map_or("", |def| def.hash.as_str());
        let api_doc = renders.get(render_key("api", api, &format!("{mgr_ns}/{definition_hash}")), || {
            render_api(api, &mgr_ns, d.operations.to_vec(), d.definition.map(|def| &*def.text))
        });
        let mut hasher = Sha256::new();
        hasher.update(api_doc.as_bytes());
        plan.files.insert(api_file(&key.0, &key.1), api_doc);
        plan.serving.insert(key.clone(), route_of(api));
        for (pns, pname) in &d.policies {
            let policy = inputs.policies[&(pns.clone(), pname.clone())];
            let doc = renders.get(render_key("policy", policy, ""), || render_policy(policy));
            hasher.update(doc.as_bytes());
            plan.files.insert(policy_file(pns, pname), doc);
        }
        for tier_ns in &d.tier_namespaces {
            let digest = tiers.entry(tier_ns.clone()).or_insert_with(|| {
                let mut digest = Sha256::new();
                let start = (tier_ns.clone(), String::new());
                for ((pns, pname), policy) in inputs.policies.range(start..).take_while(|(k, _)| &k.0 == tier_ns) {
                    if check_policy(policy).ok {
                        let doc = renders.get(render_key("policy", *policy, ""), || render_policy(policy));
                        digest.update(pname.as_bytes());
                        digest.update(doc.as_bytes());
                        plan.files.entry(policy_file(pns, pname)).or_insert(doc);
                    }
                }
                digest.finalize().into()
            });
            hasher.update(*digest);
        }
        for (kns, kname) in &d.key_managers {
            // Written above with every trusted KeyManager.
            if let Some(doc) = plan.files.get(&key_manager_file(kns, kname)) {
                hasher.update(doc.as_bytes());
            }
        }
        let revision = hex::encode(&hasher.finalize()[..8]);
        let deployed = match api.spec.lifecycle {
            tollgate_crds::api_deployment::Lifecycle::Created => {
                Verdict::no(reasons::NOT_SERVED, "artifact written; lifecycle Created is not served (404)")
            }
            _ => Verdict::yes(reasons::DEPLOYED, format!("served at {}", d.url)),
        };
        plan.outcomes.insert(
            key,
            Outcome {
                accepted: Verdict::yes(reasons::ACCEPTED, "accepted"),
                resolved_refs: Verdict::yes(reasons::RESOLVED, "all references resolved"),
                deployed,
                url: Some(d.url),
                revision: Some(revision),
            },
        );
    }
    plan
}

/// Kubernetes label-selector semantics (matchLabels AND matchExpressions).
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = selector.match_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v));
    let exprs_ok = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" => labels.get(&e.key).is_some_and(|v| values.contains(v)),
            "NotIn" => labels.get(&e.key).is_none_or(|v| !values.contains(v)),
            "Exists" => labels.contains_key(&e.key),
            "DoesNotExist" => !labels.contains_key(&e.key),
            _ => false,
        }
    });
    labels_ok && exprs_ok
}

/// Operations (method and path) of an OpenAPI 3 document in JSON or YAML.
pub fn operations_from_openapi(text: &str) -> Result<Vec<Operation>, String> {
    let doc = tollgate_crds::api_deployment::Definition::parse_document(text)?;
    let Some(paths) = doc.get("paths").and_then(Value::as_object) else {
        return Err("no `paths` object".into());
    };
    let mut ops = Vec::new();
    for (path, item) in paths {
        if !path.starts_with('/') || path.contains("//") || path.split('/').any(|s| s == "." || s == "..") {
            return Err(format!("path {path:?} must start with '/' and have no empty or dot segments"));
        }
        let Some(item) = item.as_object() else { return Err(format!("path {path:?} is not an object")) };
        for (key, op) in item {
            let method = match key.as_str() {
                "get" => Method::GET,
                "post" => Method::POST,
                "put" => Method::PUT,
                "patch" => Method::PATCH,
                "delete" => Method::DELETE,
                "head" => Method::HEAD,
                "options" => Method::OPTIONS,
                _ => continue, // parameters, summary, servers, trace, ...
            };
            let scopes = op
                .get("security")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_object)
                .flat_map(|m| m.values())
                .filter_map(Value::as_array)
                .flatten()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect();
            ops.push(Operation { method, path: path.clone(), scopes, throttling: None });
        }
    }
    if ops.is_empty() {
        return Err("the document declares no operations".into());
    }
    Ok(ops)
}

fn metadata(obj: &impl ResourceExt) -> Value {
    let mut m = json!({ "name": obj.name_any(), "namespace": obj.namespace().unwrap_or_default() });
    if let Some(uid) = obj.uid() {
        m["uid"] = json!(uid);
    }
    if let Some(g) = obj.meta().generation {
        m["generation"] = json!(g);
    }
    if let Some(t) = &obj.meta().creation_timestamp {
        m["creationTimestamp"] = json!(t);
    }
    m
}

fn to_yaml(doc: &Value) -> String {
    match serde_saphyr::to_string(doc) {
        Ok(y) => format!("{HEADER}{y}"),
        // YAML is a superset of JSON; never fails for a serde_json::Value in practice.
        Err(_) => format!("{HEADER}{doc}\n"),
    }
}

/// The artifact of one ApiDeployment: the user's shape with references resolved
/// (ApiManager namespace filled, operations derived from the definition, the
/// definition's document in place of its ConfigMap reference).
pub fn render_api(api: &ApiDeployment, mgr_ns: &str, operations: Vec<Operation>, document: Option<&str>) -> String {
    let mut spec = api.spec.clone();
    spec.api_manager_ref.namespace = Some(mgr_ns.to_string());
    if spec.operations.is_empty() && spec.definition.is_some() {
        spec.operations = operations;
    }
    spec.definition = document.map(|text| tollgate_crds::api_deployment::Definition {
        config_map_ref: None,
        document: Some(text.to_string()),
    });
    let doc = json!({
        "apiVersion": API_VERSION,
        "kind": "ApiDeployment",
        "metadata": metadata(api),
        "spec": spec,
    });
    to_yaml(&doc)
}

/// The artifact of one ThrottlePolicy.
pub fn render_policy(policy: &ThrottlePolicy) -> String {
    let doc = json!({
        "apiVersion": API_VERSION,
        "kind": "ThrottlePolicy",
        "metadata": metadata(policy),
        "spec": policy.spec,
    });
    to_yaml(&doc)
}
