//! The artifact plan: allowed namespaces, conflicts, reference resolution
//! (policies, key managers, definitions), lifecycle, and artifacts the
//! gateway's loader accepts.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use tollgate_crds::{ApiDeployment, ApiManager, KeyManager, ThrottlePolicy, conditions::reasons};
use tollgate_operator::plan::{self, Definitions, Inputs, Key, operations_from_openapi};

fn manager(ns: &str, name: &str, extra: Value) -> ApiManager {
    let mut spec = json!({ "pattern": "AllInOne" });
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    serde_json::from_value(json!({
        "apiVersion": "tollgate.dev/v1alpha1", "kind": "ApiManager",
        "metadata": { "name": name, "namespace": ns, "uid": "m-uid" },
        "spec": spec,
    }))
    .unwrap()
}

fn api(ns: &str, name: &str, created: &str, extra: Value) -> ApiDeployment {
    let mut spec = json!({
        "apiManagerRef": { "name": "apim" },
        "context": "/open-banking/aisp", "version": "v3.1",
        "backend": { "endpoints": [{ "url": "http://127.0.0.1:9000" }] },
    });
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    serde_json::from_value(json!({
        "apiVersion": "tollgate.dev/v1alpha1", "kind": "ApiDeployment",
        "metadata": { "name": name, "namespace": ns, "creationTimestamp": created, "generation": 1, "uid": format!("{name}-uid") },
        "spec": spec,
    }))
    .unwrap()
}

fn policy(ns: &str, name: &str, requests: i64) -> ThrottlePolicy {
    serde_json::from_value(json!({
        "apiVersion": "tollgate.dev/v1alpha1", "kind": "ThrottlePolicy",
        "metadata": { "name": name, "namespace": ns },
        "spec": { "limit": { "requests": requests, "per": "1m" } },
    }))
    .unwrap()
}

fn key_manager(ns: &str, name: &str, manager_ref: Value) -> KeyManager {
    serde_json::from_value(json!({
        "apiVersion": "tollgate.dev/v1alpha1", "kind": "KeyManager",
        "metadata": { "name": name, "namespace": ns, "uid": format!("{name}-uid"), "generation": 1 },
        "spec": { "apiManagerRef": manager_ref, "issuer": format!("https://{name}.example/oauth2"),
                  "jwksUri": format!("https://{name}.example/jwks") },
    }))
    .unwrap()
}

/// `security.oauth2.keyManagers` naming `names`, with mutual TLS required.
fn oauth2(names: &[&str]) -> Value {
    json!({ "security": { "oauth2": { "keyManagers": names }, "mtls": { "required": true } } })
}

struct World {
    manager: ApiManager,
    apis: Vec<ApiDeployment>,
    policies: Vec<ThrottlePolicy>,
    key_managers: Vec<KeyManager>,
    labels: BTreeMap<String, BTreeMap<String, String>>,
    definitions: Definitions,
    serving: BTreeMap<Key, plan::Route>,
}

impl World {
    fn new(manager: ApiManager) -> Self {
        World {
            manager,
            apis: vec![],
            policies: vec![],
            key_managers: vec![],
            labels: BTreeMap::new(),
            definitions: Definitions::new(),
            serving: BTreeMap::new(),
        }
    }
    fn plan(&self) -> plan::Plan {
        self.with_inputs(plan::plan)
    }

    /// What decide() decided, one line per ApiDeployment: `deploy <url>
    /// policies=[..] key_managers=[..] operations=N` or `refused <reason>`.
    fn decide(&self) -> BTreeMap<Key, String> {
        self.with_inputs(|inputs| {
            plan::decide(inputs)
                .apis
                .into_iter()
                .map(|(k, d)| {
                    let line = match d {
                        plan::ApiDecision::Deploy(d) => format!(
                            "deploy {} policies={:?} key_managers={:?} operations={}",
                            d.url,
                            d.policies,
                            d.key_managers,
                            d.operations.len()
                        ),
                        plan::ApiDecision::Refused(o) => format!("refused {}", o.deployed.reason),
                    };
                    (k, line)
                })
                .collect()
        })
    }

    fn with_inputs<R>(&self, f: impl FnOnce(&Inputs<'_>) -> R) -> R {
        let policies: BTreeMap<Key, &ThrottlePolicy> = self
            .policies
            .iter()
            .map(|p| ((p.metadata.namespace.clone().unwrap(), p.metadata.name.clone().unwrap()), p))
            .collect();
        let key_managers: BTreeMap<Key, &KeyManager> = self
            .key_managers
            .iter()
            .map(|k| ((k.metadata.namespace.clone().unwrap(), k.metadata.name.clone().unwrap()), k))
            .collect();
        f(&Inputs {
            manager: &self.manager,
            apis: self.apis.iter().collect(),
            policies: &policies,
            key_managers: &key_managers,
            namespace_labels: &self.labels,
            definitions: &self.definitions,
            serving: &self.serving,
        })
    }
}

fn key(ns: &str, name: &str) -> Key {
    (ns.to_string(), name.to_string())
}

const T1: &str = "2026-01-01T00:00:00Z";
const T2: &str = "2026-01-02T00:00:00Z";

#[test]
fn a_published_api_gets_its_artifact_and_policy_and_the_loader_accepts_them() {
    let mut w = World::new(manager("banking", "apim", json!({})));
    w.apis.push(api("banking", "accounts", T1, json!({ "throttling": { "policy": "gold" } })));
    w.policies.push(policy("banking", "gold", 100));
    let p = w.plan();
    let o = &p.outcomes[&key("banking", "accounts")];
    assert!(o.accepted.ok && o.resolved_refs.ok && o.deployed.ok, "{o:?}");
    assert_eq!(o.url.as_deref(), Some("/open-banking/aisp/v3.1"));
    assert!(o.revision.as_ref().is_some_and(|r| r.len() == 16));
    assert_eq!(p.files.keys().collect::<Vec<_>>(), vec!["apis/banking_accounts.yaml", "policies/banking_gold.yaml"]);
    // Every file is a valid manifest for the gateway's loader.
    for (rel, text) in &p.files {
        let (loaded, errors) = tollgate_crds::loader::load_str(std::path::Path::new(rel), text);
        assert!(errors.is_empty(), "{rel}: {errors:?}");
        assert_eq!(loaded.len(), 1);
    }
    let api_text = &p.files["apis/banking_accounts.yaml"];
    assert!(api_text.contains("namespace: banking"), "manager namespace filled in:\n{api_text}");
}

#[test]
fn revision_follows_the_policy_content() {
    let mut w = World::new(manager("banking", "apim", json!({})));
    w.apis.push(api("banking", "accounts", T1, json!({ "throttling": { "policy": "gold" } })));
    w.policies.push(policy("banking", "gold", 100));
    let r1 = w.plan().outcomes[&key("banking", "accounts")].revision.clone();
    w.policies[0] = policy("banking", "gold", 5);
    let p = w.plan();
    assert_ne!(p.outcomes[&key("banking", "accounts")].revision, r1, "a policy edit changes the revision");
    assert!(p.files["policies/banking_gold.yaml"].contains("requests: 5"));
}

#[test]
fn policies_resolve_in_the_api_namespace_first_then_the_managers() {
    let mut w = World::new(manager("platform", "apim", json!({ "allowedNamespaces": { "from": "All" } })));
    let mut a = api("team-a", "accounts", T1, json!({ "throttling": { "policy": "gold" } }));
    a.spec.api_manager_ref.namespace = Some("platform".into());
    w.apis.push(a);
    w.policies.push(policy("platform", "gold", 100));
    let p = w.plan();
    assert!(p.files.contains_key("policies/platform_gold.yaml"), "fallback to the manager's namespace");
    w.policies.push(policy("team-a", "gold", 7));
    let p = w.plan();
    assert!(p.files.contains_key("policies/team-a_gold.yaml"), "own namespace wins");
    let api_text = &p.files["apis/team-a_accounts.yaml"];
    assert!(api_text.contains("policy: gold"), "{api_text}");
    // The manager's gold stays in the folder as a tier of the API (the
    // gateway resolves the API's own gold first, as here).
    assert!(p.files.contains_key("policies/platform_gold.yaml"));
    // A namespace no deployed API lives in keeps its policies out.
    w.policies.push(policy("team-b", "silver", 7));
    assert!(!w.plan().files.contains_key("policies/team-b_silver.yaml"));
}

#[test]
fn every_valid_policy_of_the_api_and_manager_namespaces_reaches_the_folder_as_a_tier() {
    // The README's walk-through: tiers applied beside the APIs, named by no
    // API's `throttling`, subscribed to through the store API.
    let mut w = World::new(manager("platform", "apim", json!({ "allowedNamespaces": { "from": "All" } })));
    let mut a = api("banking", "accounts", T1, json!({}));
    a.spec.api_manager_ref.namespace = Some("platform".into());
    w.apis.push(a);
    w.policies.push(policy("banking", "gold", 1000));
    w.policies.push(policy("platform", "bronze", 10));
    let mut broken = policy("banking", "broken", 10);
    broken.spec.conditions = serde_json::from_value(
        json!([{ "match": { "ipRanges": ["10.0.0.0/33"] }, "limit": { "requests": 1, "per": "1m" } }]),
    )
    .unwrap();
    w.policies.push(broken);
    let p = w.plan();
    assert!(p.files.contains_key("policies/banking_gold.yaml"), "{:?}", p.files.keys());
    assert!(p.files.contains_key("policies/platform_bronze.yaml"), "{:?}", p.files.keys());
    assert!(!p.files.contains_key("policies/banking_broken.yaml"), "an invalid policy is never written");
    for (path, text) in &p.files {
        let (loaded, errors) = tollgate_crds::loader::load_str(std::path::Path::new(path), text);
        assert!(errors.is_empty() && loaded.len() == 1, "{path}: {errors:?}");
    }
    // A tier edit changes the revision of the APIs it is a tier of.
    let before = p.outcomes[&key("banking", "accounts")].revision.clone();
    w.policies[0] = policy("banking", "gold", 999);
    assert_ne!(w.plan().outcomes[&key("banking", "accounts")].revision, before);
    // A deleted tier leaves the folder.
    w.policies.remove(0);
    assert!(!w.plan().files.contains_key("policies/banking_gold.yaml"));
}

#[test]
fn a_missing_policy_keeps_the_api_out_with_policy_not_found() {
    let mut w = World::new(manager("banking", "apim", json!({})));
    w.apis.push(api(
        "banking",
        "accounts",
        T1,
        json!({ "operations": [{ "method": "GET", "path": "/accounts", "throttling": { "policy": "per-op" } }] }),
    ));
    let p = w.plan();
    let o = &p.outcomes[&key("banking", "accounts")];
    assert!(o.accepted.ok);
    assert!(!o.resolved_refs.ok && o.resolved_refs.reason == reasons::POLICY_NOT_FOUND);
    assert!(o.resolved_refs.message.contains("per-op"), "{}", o.resolved_refs.message);
    assert!(!o.deployed.ok);
    assert!(p.files.is_empty());
}

#[test]
fn the_older_api_keeps_a_contested_route() {
    let mut w = World::new(manager("banking", "apim", json!({})));
    w.apis.push(api("banking", "newer", T2, json!({})));
    w.apis.push(api("banking", "older", T1, json!({})));
    let p = w.plan();
    assert!(p.outcomes[&key("banking", "older")].deployed.ok);
    let newer = &p.outcomes[&key("banking", "newer")];
    assert_eq!((newer.accepted.ok, newer.accepted.reason), (false, reasons::CONFLICT));
    assert!(newer.accepted.message.contains("banking/older"));
    assert_eq!(p.files.keys().collect::<Vec<_>>(), vec!["apis/banking_older.yaml"]);
    // When the older one goes, the newer takes over.
    w.apis.retain(|a| a.metadata.name.as_deref() == Some("newer"));
    assert!(w.plan().outcomes[&key("banking", "newer")].deployed.ok);
}

/// The owner of the contested route in a plan, checked to be the only one.
fn sole_owner(p: &plan::Plan, names: &[&str]) -> String {
    let owners: Vec<&str> = names.iter().copied().filter(|n| p.outcomes[&key("banking", n)].accepted.ok).collect();
    assert_eq!(owners.len(), 1, "exactly one owner: {:?}", p.outcomes);
    let losers: Vec<&str> = names.iter().copied().filter(|n| !owners.contains(n)).collect();
    for l in &losers {
        assert_eq!(p.outcomes[&key("banking", l)].accepted.reason, reasons::CONFLICT);
    }
    assert_eq!(p.files.keys().filter(|f| f.starts_with("apis/")).count(), 1, "exactly one artifact");
    assert_eq!(p.serving.keys().collect::<Vec<_>>(), vec![&key("banking", owners[0])]);
    owners[0].to_string()
}

#[test]
fn created_in_the_same_second_the_api_already_serving_keeps_the_route() {
    let mut w = World::new(manager("banking", "apim", json!({})));
    // "b-first" was seen alone and got the artifact; "a-second", created in
    // the same second, sorts first by name but must not take the route.
    w.apis.push(api("banking", "b-first", T1, json!({})));
    assert_eq!(sole_owner(&w.plan(), &["b-first"]), "b-first");
    w.serving = w.plan().serving;
    w.apis.push(api("banking", "a-second", T1, json!({})));
    let p = w.plan();
    assert_eq!(sole_owner(&p, &["a-second", "b-first"]), "b-first");
    assert!(p.outcomes[&key("banking", "a-second")].accepted.message.contains("banking/b-first"));
    // Stable across any number of further plans from the folder it wrote.
    w.serving = p.serving;
    assert_eq!(sole_owner(&w.plan(), &["a-second", "b-first"]), "b-first");

    // Neither serves yet (both seen at once): namespace/name order decides.
    w.serving.clear();
    assert_eq!(sole_owner(&w.plan(), &["a-second", "b-first"]), "a-second");

    // An artifact that claims another route is no claim on this one.
    w.serving = BTreeMap::from([(key("banking", "b-first"), ("/open-banking/pisp".into(), "v3.1".into()))]);
    assert_eq!(sole_owner(&w.plan(), &["a-second", "b-first"]), "a-second");

    // Age still comes first: an older API takes the route from a newer incumbent.
    w.apis.push(api("banking", "z-oldest", "2025-12-31T23:59:59Z", json!({})));
    w.serving = BTreeMap::from([(key("banking", "b-first"), ("/open-banking/aisp".into(), "v3.1".into()))]);
    assert_eq!(sole_owner(&w.plan(), &["a-second", "b-first", "z-oldest"]), "z-oldest");

    // When the owner goes, the route is handed over.
    w.apis.retain(|a| a.metadata.name.as_deref() != Some("z-oldest"));
    assert_eq!(sole_owner(&w.plan(), &["a-second", "b-first"]), "b-first");
    w.apis.retain(|a| a.metadata.name.as_deref() != Some("b-first"));
    assert_eq!(sole_owner(&w.plan(), &["a-second"]), "a-second");
}

#[test]
fn deleting_and_retired_apis_leave_no_artifact() {
    let mut w = World::new(manager("banking", "apim", json!({})));
    let mut going = api("banking", "going", T1, json!({}));
    going.metadata.deletion_timestamp = going.metadata.creation_timestamp.clone();
    w.apis.push(going);
    w.apis.push(api("banking", "retired", T1, json!({ "version": "v1", "lifecycle": "Retired" })));
    let p = w.plan();
    assert!(p.files.is_empty());
    assert!(!p.outcomes.contains_key(&key("banking", "going")));
    let r = &p.outcomes[&key("banking", "retired")];
    assert_eq!((r.deployed.ok, r.deployed.reason), (false, reasons::RETIRED));
    // A retired API does not hold its route against others.
    w.apis.push(api("banking", "successor", T2, json!({ "version": "v1" })));
    assert!(w.plan().outcomes[&key("banking", "successor")].deployed.ok);
}

#[test]
fn created_apis_are_written_but_reported_not_served() {
    let mut w = World::new(manager("banking", "apim", json!({})));
    w.apis.push(api("banking", "draft", T1, json!({ "lifecycle": "Created" })));
    let p = w.plan();
    let o = &p.outcomes[&key("banking", "draft")];
    assert_eq!((o.deployed.ok, o.deployed.reason), (false, reasons::NOT_SERVED));
    assert!(p.files.contains_key("apis/banking_draft.yaml"));
}

#[test]
fn allowed_namespaces_same_all_and_selector() {
    let foreign = |w: &mut World| {
        let mut a = api("team-a", "accounts", T1, json!({}));
        a.spec.api_manager_ref.namespace = Some("platform".into());
        w.apis = vec![a];
    };
    let mut w = World::new(manager("platform", "apim", json!({})));
    foreign(&mut w);
    let o = &w.plan().outcomes[&key("team-a", "accounts")];
    assert_eq!((o.accepted.ok, o.accepted.reason), (false, reasons::NOT_ALLOWED));

    w.manager = manager("platform", "apim", json!({ "allowedNamespaces": { "from": "All" } }));
    assert!(w.plan().outcomes[&key("team-a", "accounts")].accepted.ok);

    w.manager = manager(
        "platform",
        "apim",
        json!({ "allowedNamespaces": { "from": "Selector", "selector": { "matchLabels": { "tollgate.dev/apis": "yes" } } } }),
    );
    assert!(!w.plan().outcomes[&key("team-a", "accounts")].accepted.ok, "no labels: not allowed");
    w.labels.insert("team-a".into(), BTreeMap::from([("tollgate.dev/apis".to_string(), "yes".to_string())]));
    assert!(w.plan().outcomes[&key("team-a", "accounts")].accepted.ok);
}

#[test]
fn unknown_gateway_groups_are_reported() {
    let m = manager(
        "banking",
        "apim",
        json!({ "pattern": "DistributedGateways", "gateways": [{ "name": "production" }, { "name": "sandbox" }] }),
    );
    let mut w = World::new(m);
    w.apis.push(api("banking", "accounts", T1, json!({ "gateways": ["production", "staging"] })));
    let o = &w.plan().outcomes[&key("banking", "accounts")];
    assert_eq!((o.resolved_refs.ok, o.resolved_refs.reason), (false, reasons::GATEWAY_NOT_FOUND));
    assert!(o.resolved_refs.message.contains("staging"));
}

#[test]
fn operations_come_from_the_openapi_definition() {
    let mut w = World::new(manager("banking", "apim", json!({})));
    w.apis.push(api(
        "banking",
        "accounts",
        T1,
        json!({ "definition": { "configMapRef": { "name": "oas", "key": "openapi.yaml" } } }),
    ));
    let o = &w.plan().outcomes[&key("banking", "accounts")];
    assert_eq!(o.resolved_refs.reason, reasons::DEFINITION_NOT_FOUND);

    let k = ("banking".to_string(), "oas".to_string(), "openapi.yaml".to_string());
    let document = "openapi: 3.0.3\ninfo: {title: Accounts, version: '3.1', description: Read the PSU's accounts}\npaths:\n  /accounts:\n    get: {description: Every account the consent covers}\n  /accounts/{accountId}:\n    get:\n      security: [{PSUOAuth2Security: [accounts]}]\n      responses: {'200': {description: One account, content: {application/json: {example: {AccountId: '22289'}}}}}\n    parameters: []\n";
    w.definitions.insert(k.clone(), Ok(document.into()));
    let p = w.plan();
    assert!(p.outcomes[&key("banking", "accounts")].deployed.ok);
    let text = &p.files["apis/banking_accounts.yaml"];
    assert!(text.contains("/accounts/{accountId}") && !text.contains("configMapRef"), "{text}");
    let (loaded, errors) = tollgate_crds::loader::load_str(std::path::Path::new("x.yaml"), text);
    assert!(errors.is_empty() && loaded.len() == 1, "{errors:?}");
    // The document itself reaches the artifact (for the portal), byte for byte.
    let tollgate_crds::Resource::ApiDeployment(carried) = &loaded[0].resource else { panic!("not an API") };
    let carried = carried.spec.definition.as_ref().expect("definition carried");
    assert_eq!((carried.config_map_ref.as_ref(), carried.document.as_deref()), (None, Some(document)));
    assert_eq!(carried_operations(text), vec!["GET /accounts", "GET /accounts/{accountId}"]);

    // Operations listed by the API win; the document still travels with it.
    w.apis[0].spec.operations = serde_json::from_value(json!([{ "method": "GET", "path": "/accounts" }])).unwrap();
    let text = &w.plan().files["apis/banking_accounts.yaml"];
    assert_eq!(carried_operations(text), vec!["GET /accounts"]);
    assert!(text.contains("Every account the consent covers"), "{text}");
    w.apis[0].spec.operations.clear();

    // A document written in the ApiDeployment itself is used the same way.
    let mut inline = api(
        "banking",
        "inline",
        T1,
        json!({ "context": "/inline", "definition": { "document": "openapi: 3.1.0\npaths:\n  /x:\n    post: {summary: Make an x}\n" } }),
    );
    inline.spec.operations.clear();
    // (the artifact controller parses it once per generation into the inputs)
    let inline_text = inline.spec.definition.as_ref().and_then(|d| d.document.clone()).unwrap();
    w.definitions.insert(plan::definition_key(&inline).unwrap(), Ok(inline_text.as_str().into()));
    w.apis.push(inline);
    let p = w.plan();
    assert!(p.outcomes[&key("banking", "inline")].deployed.ok, "{:?}", p.outcomes[&key("banking", "inline")]);
    let text = &p.files["apis/banking_inline.yaml"];
    assert_eq!(carried_operations(text), vec!["POST /x"]);
    assert!(text.contains("Make an x"), "{text}");
    w.apis.pop();

    w.definitions.insert(k, Ok("swagger: '2.0'\npaths: {}\n".into()));
    let o = &w.plan().outcomes[&key("banking", "accounts")];
    assert_eq!(o.resolved_refs.reason, reasons::INVALID_DEFINITION);
}

/// "METHOD path" of each operation in a rendered API artifact.
fn carried_operations(text: &str) -> Vec<String> {
    let (loaded, errors) = tollgate_crds::loader::load_str(std::path::Path::new("x.yaml"), text);
    assert!(errors.is_empty(), "{errors:?}");
    let tollgate_crds::Resource::ApiDeployment(a) = &loaded[0].resource else { panic!("not an API") };
    a.spec.operations.iter().map(|o| format!("{} {}", o.method.as_str(), o.path)).collect()
}

#[test]
fn openapi_parsing_rejects_bad_documents_clearly() {
    let ops =
        operations_from_openapi(r#"{"openapi":"3.1.0","paths":{"/a":{"get":{},"post":{},"summary":"x"}}}"#).unwrap();
    assert_eq!(ops.len(), 2);
    for (doc, fragment) in [
        ("openapi: 3.0.0\n", "no `paths`"),
        ("openapi: 3.0.0\npaths: {}\n", "no operations"),
        ("openapi: 3.0.0\npaths:\n  a:\n    get: {}\n", "must start with '/'"),
        ("openapi: 3.0.0\npaths:\n  /a/../b:\n    get: {}\n", "dot segments"),
        (": : :\n\t- [", "not JSON or YAML"),
    ] {
        let e = operations_from_openapi(doc).unwrap_err();
        assert!(e.contains(fragment), "{doc:?}: {e}");
    }
}

#[test]
fn the_routes_read_back_from_a_written_folder_equal_the_plans() {
    let mut w = World::new(manager("banking", "apim", json!({})));
    w.apis.push(api("banking", "accounts", T1, json!({ "context": "/open-banking/aisp/" })));
    w.apis.push(api("banking", "payments", T1, json!({ "context": "/open-banking/pisp", "version": "v4" })));
    let p = w.plan();
    let tmp = tempfile::tempdir().unwrap();
    let mut folder = tollgate_operator::folder::FolderState::default();
    folder.sync(tmp.path(), &p.files, p.serving.clone(), "test").unwrap();
    // Things that are not this operator's artifacts claim nothing.
    std::fs::write(tmp.path().join("apis/garbage.yaml"), "{ not: [yaml").unwrap();
    std::fs::write(tmp.path().join("apis/other.yaml"), "kind: ConfigMap\nmetadata: {name: x}\n").unwrap();
    std::fs::write(tmp.path().join("apis/.tmp-banking_x.yaml-1"), "half").unwrap();
    let read = tollgate_operator::artifacts::read_serving(tmp.path()).unwrap();
    assert_eq!(read, p.serving);
    assert_eq!(read[&key("banking", "accounts")], ("/open-banking/aisp".to_string(), "v3.1".to_string()));
    assert!(tollgate_operator::artifacts::read_serving(&tmp.path().join("missing")).unwrap().is_empty());
}

#[test]
fn key_managers_bound_to_the_manager_are_written_even_when_no_api_names_them() {
    let mut w = World::new(manager("banking", "apim", json!({})));
    w.key_managers.push(key_manager("banking", "bank-idp", json!({ "name": "apim" })));
    w.key_managers.push(key_manager("banking", "other-idp", json!({ "name": "other-apim" })));
    let mut going = key_manager("banking", "old-idp", json!({ "name": "apim" }));
    going.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
    w.key_managers.push(going);
    let p = w.plan();
    assert_eq!(p.files.keys().collect::<Vec<_>>(), vec!["keymanagers/banking_bank-idp.yaml"]);
    assert_eq!(p.key_managers.keys().collect::<Vec<_>>(), vec![&key("banking", "bank-idp")], "only bound ones");
    let v = &p.key_managers[&key("banking", "bank-idp")];
    assert_eq!((v.ok, v.reason), (true, reasons::ACCEPTED));

    let text = &p.files["keymanagers/banking_bank-idp.yaml"];
    assert!(text.starts_with("# Written by tollgate-operator"), "{text}");
    let (loaded, errors) = tollgate_crds::loader::load_str(std::path::Path::new("km.yaml"), text);
    assert!(errors.is_empty(), "{errors:?}");
    let tollgate_crds::Resource::KeyManager(km) = &loaded[0].resource else { panic!("a KeyManager: {text}") };
    assert_eq!(km.metadata.namespace.as_deref(), Some("banking"));
    assert_eq!(km.spec.issuer, "https://bank-idp.example/oauth2");
    assert_eq!(km.spec.api_manager_ref.namespace.as_deref(), Some("banking"), "manager namespace filled in");
}

#[test]
fn builtin_names_the_built_in_key_manager_and_needs_no_key_manager_object() {
    let mut w = World::new(manager("banking", "apim", json!({})));
    w.apis.push(api("banking", "payments", T1, oauth2(&["builtin"])));
    let p = w.plan();
    let o = &p.outcomes[&key("banking", "payments")];
    assert!(o.resolved_refs.ok && o.deployed.ok, "{o:?}");
    assert!(p.files.contains_key("apis/banking_payments.yaml"));
    w.apis.push(api("banking", "accounts", T1, oauth2(&["builtin", "bank-idp"])));
    let p = w.plan();
    let o = &p.outcomes[&key("banking", "accounts")];
    assert_eq!(o.resolved_refs.reason, reasons::KEY_MANAGER_NOT_FOUND, "other names still need their KeyManager");
    assert!(o.resolved_refs.message.contains("bank-idp") && !o.resolved_refs.message.contains("builtin"));
}

#[test]
fn a_missing_key_manager_keeps_the_api_out_with_key_manager_not_found() {
    let mut w = World::new(manager("banking", "apim", json!({})));
    w.apis.push(api("banking", "payments", T1, oauth2(&["bank-idp"])));
    // Same name, but bound to another ApiManager: not one this API may use.
    w.key_managers.push(key_manager("banking", "bank-idp", json!({ "name": "other-apim" })));
    let p = w.plan();
    let o = &p.outcomes[&key("banking", "payments")];
    assert!(o.accepted.ok, "{o:?}");
    assert_eq!((o.resolved_refs.ok, o.resolved_refs.reason), (false, reasons::KEY_MANAGER_NOT_FOUND));
    assert_eq!((o.deployed.ok, o.deployed.reason), (false, reasons::KEY_MANAGER_NOT_FOUND));
    assert!(o.resolved_refs.message.contains("bank-idp"), "{}", o.resolved_refs.message);
    assert!(o.revision.is_none());
    assert!(p.files.is_empty(), "never served with weaker security: {:?}", p.files.keys());

    w.key_managers[0] = key_manager("banking", "bank-idp", json!({ "name": "apim" }));
    let p = w.plan();
    let o = &p.outcomes[&key("banking", "payments")];
    assert!(o.resolved_refs.ok && o.deployed.ok, "{o:?}");
    assert!(p.files.contains_key("apis/banking_payments.yaml"));
    assert!(p.files["apis/banking_payments.yaml"].contains("bank-idp"));

    // The KeyManager is being deleted: its artifact goes, and the API with it.
    w.key_managers[0].metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
    let p = w.plan();
    assert_eq!(p.outcomes[&key("banking", "payments")].resolved_refs.reason, reasons::KEY_MANAGER_NOT_FOUND);
    assert!(p.files.is_empty(), "{:?}", p.files.keys());
}

#[test]
fn an_empty_key_manager_list_needs_no_key_manager() {
    let mut w = World::new(manager("banking", "apim", json!({})));
    w.apis.push(api("banking", "payments", T1, oauth2(&[])));
    let o = &w.plan().outcomes[&key("banking", "payments")];
    assert!(o.resolved_refs.ok && o.deployed.ok, "{o:?}");
}

#[test]
fn key_managers_resolve_in_the_api_namespace_first_then_the_managers() {
    let mut w = World::new(manager("platform", "apim", json!({ "allowedNamespaces": { "from": "All" } })));
    let mut a = api("team-a", "payments", T1, oauth2(&["bank-idp"]));
    a.spec.api_manager_ref.namespace = Some("platform".into());
    w.apis.push(a);
    let platform_idp = || key_manager("platform", "bank-idp", json!({ "name": "apim" }));
    w.key_managers.push(platform_idp());
    let revision = |w: &World| w.plan().outcomes[&key("team-a", "payments")].revision.clone().unwrap();
    let r_platform = revision(&w);
    // A KeyManager edit changes the revision of the API that uses it.
    w.key_managers[0].spec.audiences = vec!["https://api.bank.example".into()];
    let r_edited = revision(&w);
    assert_ne!(r_edited, r_platform);

    let mut own = key_manager("team-a", "bank-idp", json!({ "name": "apim", "namespace": "platform" }));
    own.spec.issuer = "https://team-a.example/oauth2".into();
    w.key_managers.push(own);
    let r_own = revision(&w);
    assert_ne!(r_own, r_edited, "the API's own namespace wins");
    // Now the manager's KeyManager is not the one used: editing it leaves the API alone.
    w.key_managers[0] = platform_idp();
    assert_eq!(revision(&w), r_own);
    let p = w.plan();
    assert!(
        p.files.contains_key("keymanagers/platform_bank-idp.yaml")
            && p.files.contains_key("keymanagers/team-a_bank-idp.yaml"),
        "every trusted KeyManager is written: {:?}",
        p.files.keys()
    );
}

#[test]
fn key_managers_from_namespaces_that_may_not_deploy_are_not_trusted() {
    let mut w = World::new(manager("platform", "apim", json!({})));
    w.key_managers.push(key_manager("team-a", "rogue-idp", json!({ "name": "apim", "namespace": "platform" })));
    w.apis.push(api("platform", "payments", T1, oauth2(&["rogue-idp"])));
    let p = w.plan();
    let v = &p.key_managers[&key("team-a", "rogue-idp")];
    assert_eq!((v.ok, v.reason), (false, reasons::NOT_ALLOWED));
    assert!(v.message.contains("team-a"), "{}", v.message);
    assert!(p.files.is_empty(), "{:?}", p.files.keys());
    assert_eq!(p.outcomes[&key("platform", "payments")].resolved_refs.reason, reasons::KEY_MANAGER_NOT_FOUND);

    w.manager = manager("platform", "apim", json!({ "allowedNamespaces": { "from": "All" } }));
    let p = w.plan();
    assert!(p.key_managers[&key("team-a", "rogue-idp")].ok);
    assert!(p.files.contains_key("keymanagers/team-a_rogue-idp.yaml"));
}

#[test]
fn decide_resolves_references_to_keys_and_refuses_with_a_reason() {
    let mut w = World::new(manager("banking", "apim", json!({})));
    w.apis.push(api("banking", "gold", T1, json!({ "context": "/a", "throttling": { "policy": "gold" } })));
    w.apis.push(api("banking", "shared", T1, json!({ "context": "/b", "throttling": { "policy": "platform" } })));
    w.apis.push(api("banking", "missing", T1, json!({ "context": "/c", "throttling": { "policy": "nope" } })));
    w.apis.push(api("banking", "retired", T1, json!({ "context": "/d", "lifecycle": "Retired" })));
    w.apis.push(api("banking", "older", T1, json!({ "context": "/e" })));
    w.apis.push(api("banking", "newer", T2, json!({ "context": "/e" })));
    let mut tokens = oauth2(&["central"]);
    tokens["context"] = json!("/f");
    w.apis.push(api("banking", "tokens", T1, tokens));
    let mut foreign = api("elsewhere", "foreign", T1, json!({ "context": "/g" }));
    foreign.spec.api_manager_ref.namespace = Some("banking".into());
    w.apis.push(foreign);
    let mut defined = api(
        "banking",
        "defined",
        T1,
        json!({ "context": "/h", "definition": { "configMapRef": { "name": "spec", "key": "openapi.yaml" } } }),
    );
    defined.spec.operations.clear();
    w.apis.push(defined);
    w.definitions.insert(
        ("banking".into(), "spec".into(), "openapi.yaml".into()),
        Ok("openapi: 3.0.3\npaths:\n  /x:\n    get: {}\n    post: {}\n".into()),
    );
    w.policies.push(policy("banking", "gold", 10));
    w.policies.push(policy("banking", "platform", 10));
    w.key_managers.push(key_manager("banking", "central", json!({ "name": "apim" })));

    let d = w.decide();
    let line = |name: &str| d[&key(if name == "foreign" { "elsewhere" } else { "banking" }, name)].as_str();
    assert_eq!(line("gold"), r#"deploy /a/v3.1 policies=[("banking", "gold")] key_managers=[] operations=0"#);
    assert_eq!(line("shared"), r#"deploy /b/v3.1 policies=[("banking", "platform")] key_managers=[] operations=0"#);
    assert_eq!(line("missing"), "refused PolicyNotFound");
    assert_eq!(line("retired"), "refused Retired");
    assert!(line("older").starts_with("deploy /e/v3.1"));
    assert_eq!(line("newer"), "refused Conflict");
    assert_eq!(line("tokens"), r#"deploy /f/v3.1 policies=[] key_managers=[("banking", "central")] operations=0"#);
    assert_eq!(line("foreign"), "refused NotAllowed");
    assert_eq!(line("defined"), "deploy /h/v3.1 policies=[] key_managers=[] operations=2");

    // The plan renders exactly what was decided: an artifact and a revision
    // for each deployed API, none for a refused one.
    let p = w.plan();
    for (k, line) in &d {
        let o = &p.outcomes[k];
        let file = plan::api_file(&k.0, &k.1);
        assert_eq!(line.starts_with("deploy"), o.revision.is_some(), "{k:?}: {line} vs {o:?}");
        assert_eq!(line.starts_with("deploy"), p.files.contains_key(&file), "{k:?}: {line}");
    }

    // A broken definition is refused with InvalidDefinition, not rendered.
    w.definitions.insert(("banking".into(), "spec".into(), "openapi.yaml".into()), Ok("swagger: '2.0'\n".into()));
    assert_eq!(w.decide()[&key("banking", "defined")], "refused InvalidDefinition");
}

#[test]
fn decide_ties_go_to_the_older_then_the_incumbent_and_deleting_apis_claim_nothing() {
    let mut w = World::new(manager("banking", "apim", json!({})));
    w.apis.push(api("banking", "b", T1, json!({})));
    w.apis.push(api("banking", "a", T1, json!({})));
    let deployed = |w: &World| -> Vec<String> {
        w.decide().into_iter().filter(|(_, l)| l.starts_with("deploy")).map(|(k, _)| k.1).collect()
    };
    assert_eq!(deployed(&w), ["a"], "same second, nobody serving: name order");
    w.serving = BTreeMap::from([(key("banking", "b"), ("/open-banking/aisp".into(), "v3.1".into()))]);
    assert_eq!(deployed(&w), ["b"], "same second: the one serving keeps it");
    w.apis.push(api("banking", "c", "2025-06-01T00:00:00Z", json!({})));
    assert_eq!(deployed(&w), ["c"], "older wins over the incumbent");
    w.apis[2].metadata.deletion_timestamp = w.apis[2].metadata.creation_timestamp.clone();
    assert_eq!(deployed(&w), ["b"], "an API being deleted claims nothing and is not decided");
    assert!(!w.decide().contains_key(&key("banking", "c")));
}
