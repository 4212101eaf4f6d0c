//! The CRDs on a real kube-apiserver: they install and become Established,
//! carry the printer columns, short names and category users rely on
//! (`kubectl get apim`, `kubectl get tollgate`), publish their field docs
//! (`kubectl explain`), accept valid objects and apply the schema defaults.

use std::time::{Duration, Instant};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::Api;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tollgate_crds::{ApiDeployment, ApiDeploymentSpec, ApiManager, ApiManagerSpec, ThrottlePolicy, ThrottlePolicySpec};
use tollgate_e2e::{Cluster, apply_manifest, error_message, install_crds};

/// kind, plural, short name, printer columns (name, type, jsonPath) as
/// DESIGN.md and users expect them.
type Expected = (&'static str, &'static str, &'static str, &'static [(&'static str, &'static str, &'static str)]);

const EXPECTED: &[Expected] = &[
    (
        "ApiManager",
        "apimanagers",
        "apim",
        &[
            ("Pattern", "string", ".spec.pattern"),
            ("Ready", "string", r#".status.conditions[?(@.type=="Ready")].status"#),
            ("Age", "date", ".metadata.creationTimestamp"),
        ],
    ),
    (
        "ApiDeployment",
        "apideployments",
        "apid",
        &[
            ("Context", "string", ".spec.context"),
            ("Version", "string", ".spec.version"),
            ("Lifecycle", "string", ".spec.lifecycle"),
            ("Deployed", "string", r#".status.conditions[?(@.type=="Deployed")].status"#),
            ("Age", "date", ".metadata.creationTimestamp"),
        ],
    ),
    (
        "ThrottlePolicy",
        "throttlepolicies",
        "tp",
        &[
            ("Limit", "integer", ".spec.limit.requests"),
            ("Per", "string", ".spec.limit.per"),
            ("KeyBy", "string", ".spec.keyBy"),
            ("Scope", "string", ".spec.scope"),
        ],
    ),
    (
        "KeyManager",
        "keymanagers",
        "km",
        &[
            ("Issuer", "string", ".spec.issuer"),
            ("Manager", "string", ".spec.apiManagerRef.name"),
            ("Accepted", "string", r#".status.conditions[?(@.type=="Accepted")].status"#),
            ("Age", "date", ".metadata.creationTimestamp"),
        ],
    ),
];

fn condition(crd: &CustomResourceDefinition, type_: &str) -> Option<String> {
    crd.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == type_).map(|c| c.status.clone())
}

#[tokio::test]
async fn crds_install_and_are_established() {
    let cluster = Cluster::connect().await;
    let installed = install_crds(&cluster.client).await;
    assert_eq!(installed.len(), 4);
    // Installing again (an update with the same content) is a no-op that succeeds.
    let again = install_crds(&cluster.client).await;
    for (crd, crd2) in installed.iter().zip(&again) {
        let name = crd.metadata.name.as_deref().unwrap_or_default();
        assert_eq!(crd.metadata.generation, crd2.metadata.generation, "{name}: re-applying changed the CRD");
        assert_eq!(condition(crd, "Established").as_deref(), Some("True"), "{name}");
        assert_eq!(condition(crd, "NamesAccepted").as_deref(), Some("True"), "{name}");
        assert_eq!(crd.spec.group, tollgate_crds::GROUP, "{name}");
        assert_eq!(crd.spec.scope, "Namespaced", "{name}");
        let versions: Vec<_> = crd.spec.versions.iter().map(|v| (v.name.as_str(), v.served, v.storage)).collect();
        assert_eq!(versions, [(tollgate_crds::VERSION, true, true)], "{name}");
        let v = &crd.spec.versions[0];
        assert!(v.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some(), "{name}: no status subresource");
        let managers: Vec<_> =
            crd.metadata.managed_fields.iter().flatten().filter_map(|m| m.manager.as_deref()).collect();
        assert!(managers.contains(&tollgate_e2e::FIELD_MANAGER), "{name}: managers {managers:?}");
    }
}

#[tokio::test]
async fn crds_have_printer_columns_short_names_and_the_tollgate_category() {
    let cluster = Cluster::connect().await;
    install_crds(&cluster.client).await;
    let api: Api<CustomResourceDefinition> = Api::all(cluster.client.clone());
    let mut failures = Vec::new();
    for (kind, plural, short, columns) in EXPECTED {
        let name = format!("{plural}.{}", tollgate_crds::GROUP);
        let crd = api.get(&name).await.unwrap_or_else(|e| panic!("get CRD {name}: {}", error_message(&e)));
        let names = &crd.spec.names;
        if names.kind != *kind {
            failures.push(format!("{name}: kind {:?}", names.kind));
        }
        if names.short_names.as_deref() != Some(&[short.to_string()][..]) {
            failures.push(format!("{name}: shortNames {:?}, expected [{short}]", names.short_names));
        }
        if !names.categories.iter().flatten().any(|c| c == "tollgate") {
            failures.push(format!("{name}: categories {:?} lack tollgate", names.categories));
        }
        let got: Vec<_> = crd.spec.versions[0]
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| (c.name.clone(), c.type_.clone(), c.json_path.clone()))
            .collect();
        let want: Vec<_> = columns.iter().map(|(n, t, p)| (n.to_string(), t.to_string(), p.to_string())).collect();
        if got != want {
            failures.push(format!("{name}: printer columns\n  got  {got:?}\n  want {want:?}"));
        }
    }

    // Discovery is what kubectl resolves short names and categories from.
    let discovery: Value = get_json(&cluster, &format!("/apis/{}", tollgate_crds::API_VERSION)).await;
    for (kind, plural, short, _) in EXPECTED {
        let Some(r) = discovery["resources"].as_array().into_iter().flatten().find(|r| r["name"] == *plural) else {
            failures.push(format!("discovery lists no {plural}"));
            continue;
        };
        if r["kind"] != *kind || r["namespaced"] != true {
            failures.push(format!("discovery {plural}: kind {} namespaced {}", r["kind"], r["namespaced"]));
        }
        if r["shortNames"] != json!([short]) {
            failures.push(format!("discovery {plural}: shortNames {}", r["shortNames"]));
        }
        if !r["categories"].as_array().into_iter().flatten().any(|c| c == "tollgate") {
            failures.push(format!("discovery {plural}: categories {}", r["categories"]));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `kubectl explain` reads the published OpenAPI v3 document; every field
/// must carry its description there (published asynchronously, so poll).
#[tokio::test]
async fn field_docs_are_published_for_kubectl_explain() {
    let cluster = Cluster::connect().await;
    install_crds(&cluster.client).await;
    let path = format!("/openapi/v3/apis/{}", tollgate_crds::API_VERSION);
    let fields: &[(&str, &[&str])] = &[
        ("ApiManager", &["pattern", "allowedNamespaces", "gateways", "listeners", "persistence", "trafficManager"]),
        ("ApiDeployment", &["apiManagerRef", "context", "version", "lifecycle", "backend", "security", "operations"]),
        ("ThrottlePolicy", &["limit", "burst", "bandwidth", "keyBy", "keyName", "scope", "stopOnQuotaReach"]),
    ];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // A group's document appears a moment after its first CRD (404 until then).
        let doc: Value = match try_get_json(&cluster, &path).await {
            Ok(doc) => doc,
            Err(e) => {
                assert!(Instant::now() < deadline, "GET {path}: still failing after 60s: {}", error_message(&e));
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let mut missing = Vec::new();
        for (kind, spec_fields) in fields {
            let schema = &doc["components"]["schemas"][format!("dev.tollgate.v1alpha1.{kind}")];
            if !non_empty(&schema["description"]) {
                missing.push(format!("{kind}: no description"));
            }
            let spec = resolve(&doc, &schema["properties"]["spec"]);
            if !non_empty(&spec["description"]) {
                missing.push(format!("{kind}.spec: no description"));
            }
            for f in *spec_fields {
                if !non_empty(&resolve(&doc, &spec["properties"][f])["description"]) {
                    missing.push(format!("{kind}.spec.{f}: no description"));
                }
            }
        }
        if missing.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "{path} after 60s still lacks field docs:\n{}", missing.join("\n"));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn non_empty(v: &Value) -> bool {
    v.as_str().is_some_and(|s| !s.trim().is_empty())
}

/// Follows a `$ref` (or an `allOf: [{$ref}]` wrapper) to the referenced schema,
/// keeping a description given next to the reference.
fn resolve(doc: &Value, schema: &Value) -> Value {
    let reference = schema["$ref"].as_str().or_else(|| schema["allOf"][0]["$ref"].as_str());
    match reference.and_then(|r| r.strip_prefix("#/components/schemas/")) {
        Some(name) => {
            let mut target = doc["components"]["schemas"][name].clone();
            if non_empty(&schema["description"]) {
                target["description"] = schema["description"].clone();
            }
            target
        }
        None => schema.clone(),
    }
}

async fn try_get_json<T: DeserializeOwned>(cluster: &Cluster, path: &str) -> Result<T, kube::Error> {
    let req = http::Request::get(path).body(Vec::new()).expect("a valid request");
    cluster.client.request::<T>(req).await
}

async fn get_json<T: DeserializeOwned>(cluster: &Cluster, path: &str) -> T {
    try_get_json(cluster, path).await.unwrap_or_else(|e| panic!("GET {path}: {}", error_message(&e)))
}

/// `kubectl get <plural>` as the server renders it (a meta.k8s.io Table):
/// column names and the cells of the row of object `name`.
async fn table_row(cluster: &Cluster, namespace: &str, plural: &str, name: &str) -> Vec<(String, Value)> {
    let path = format!("/apis/{}/namespaces/{namespace}/{plural}/{name}", tollgate_crds::API_VERSION);
    let req = http::Request::get(&path)
        .header("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
        .body(Vec::new())
        .expect("a valid request");
    let table: Value =
        cluster.client.request(req).await.unwrap_or_else(|e| panic!("GET {path} as Table: {}", error_message(&e)));
    let names = table["columnDefinitions"].as_array().cloned().unwrap_or_default();
    let cells = table["rows"][0]["cells"].as_array().cloned().unwrap_or_default();
    names.iter().map(|c| c["name"].as_str().unwrap_or_default().to_string()).zip(cells).collect()
}

fn cell<'a>(row: &'a [(String, Value)], column: &str) -> &'a Value {
    row.iter().find(|(n, _)| n == column).map(|(_, v)| v).unwrap_or(&Value::Null)
}

/// Applies a valid manifest and returns the object the apiserver stored. The
/// Rust validator (the loader's) must accept it as well.
async fn apply(cluster: &Cluster, namespace: &str, manifest: Value) -> Value {
    let name = manifest["metadata"]["name"].as_str().unwrap_or_default().to_string();
    let kind = manifest["kind"].as_str().unwrap_or_default();
    if let Err(errors) = tollgate_crds::validate::validate_object(kind, &manifest) {
        panic!("the Rust validator rejects valid {kind} {name}: {errors:?}");
    }
    let obj = apply_manifest(&cluster.client, namespace, &manifest)
        .await
        .unwrap_or_else(|e| panic!("valid {} {name} rejected: {}", manifest["kind"], error_message(&e)));
    serde_json::to_value(obj).expect("objects serialize")
}

/// The spec the Rust types make of `manifest` (serde defaults) must equal the
/// spec the apiserver stored (schema defaults): both sides default alike.
fn assert_same_defaults<S: DeserializeOwned + PartialEq + std::fmt::Debug>(
    kind: &str,
    manifest: &Value,
    stored: &Value,
) {
    let ours: S = serde_json::from_value(manifest["spec"].clone()).expect("the manifest deserializes");
    let theirs: S = serde_json::from_value(stored["spec"].clone())
        .unwrap_or_else(|e| panic!("{kind}: the stored spec does not deserialize into the Rust type: {e}"));
    assert_eq!(ours, theirs, "{kind}: Rust serde defaults differ from the apiserver's schema defaults");
}

#[tokio::test]
async fn valid_objects_are_accepted_and_defaulted_by_the_apiserver() {
    let cluster = Cluster::connect().await;
    install_crds(&cluster.client).await;
    let ns = cluster.namespace("crds-valid").await;
    let ns = ns.name();

    // ThrottlePolicy: only the required limit.
    let tp = json!({
        "apiVersion": "tollgate.dev/v1alpha1", "kind": "ThrottlePolicy",
        "metadata": {"name": "gold"},
        "spec": {"limit": {"requests": 5000, "per": "1m"}},
    });
    let stored = apply(&cluster, ns, tp.clone()).await;
    let spec = &stored["spec"];
    assert_eq!(spec["keyBy"], "Api", "{spec}");
    assert_eq!(spec["scope"], "Cluster", "{spec}");
    assert_eq!(spec["stopOnQuotaReach"], true, "{spec}");
    assert_eq!(spec["limit"], json!({"requests": 5000, "per": "1m"}), "{spec}");
    assert_same_defaults::<ThrottlePolicySpec>("ThrottlePolicy", &tp, &stored);
    let typed = Api::<ThrottlePolicy>::namespaced(cluster.client.clone(), ns).get("gold").await.unwrap();
    assert_eq!(typed.spec.limit.requests, 5000);
    let row = table_row(&cluster, ns, "throttlepolicies", "gold").await;
    assert_eq!(cell(&row, "Limit"), &json!(5000), "{row:?}");
    assert_eq!(cell(&row, "Per"), "1m", "{row:?}");
    assert_eq!(cell(&row, "KeyBy"), "Api", "{row:?}");
    assert_eq!(cell(&row, "Scope"), "Cluster", "{row:?}");

    // A fuller ThrottlePolicy: conditions, burst, bandwidth, keyBy Header.
    let tp2 = json!({
        "apiVersion": "tollgate.dev/v1alpha1", "kind": "ThrottlePolicy",
        "metadata": {"name": "per-customer"},
        "spec": {
            "description": "per PSU", "limit": {"requests": 100, "per": "1m"},
            "burst": {"requests": 10, "per": "1s"}, "bandwidth": {"bytes": "10Mi", "per": "1h"},
            "keyBy": "Header", "keyName": "x-fapi-customer-ip-address", "scope": "Replica",
            "stopOnQuotaReach": false,
            "conditions": [
                {"match": {"ipRanges": ["203.0.113.0/24", "2001:db8::/32"]}, "limit": {"requests": 1000, "per": "1m"}},
                {"match": {"headers": [{"name": "x-tier", "value": "gold"}]}, "limit": {"requests": 500, "per": "30d"}},
            ],
        },
    });
    let stored = apply(&cluster, ns, tp2.clone()).await;
    assert_same_defaults::<ThrottlePolicySpec>("ThrottlePolicy", &tp2, &stored);

    // ApiDeployment: required fields only.
    let apid = json!({
        "apiVersion": "tollgate.dev/v1alpha1", "kind": "ApiDeployment",
        "metadata": {"name": "accounts-v3-1"},
        "spec": {
            "apiManagerRef": {"name": "local"},
            "context": "/open-banking/aisp", "version": "v3.1",
            "backend": {"endpoints": [{"url": "http://accounts.banking.svc:8080"}]},
        },
    });
    let stored = apply(&cluster, ns, apid.clone()).await;
    let spec = &stored["spec"];
    assert_eq!(spec["backend"]["timeout"], "30s", "{spec}");
    assert_eq!(spec["backend"]["retries"], 1, "{spec}");
    assert_eq!(spec["backend"]["endpoints"][0]["weight"], 1, "{spec}");
    assert_eq!(spec["lifecycle"], "Published", "{spec}");
    assert_eq!(spec["isDefaultVersion"], false, "{spec}");
    assert_same_defaults::<ApiDeploymentSpec>("ApiDeployment", &apid, &stored);
    let typed = Api::<ApiDeployment>::namespaced(cluster.client.clone(), ns).get("accounts-v3-1").await.unwrap();
    assert_eq!(typed.spec.backend.timeout.duration(), Some(Duration::from_secs(30)));
    let row = table_row(&cluster, ns, "apideployments", "accounts-v3-1").await;
    assert_eq!(cell(&row, "Context"), "/open-banking/aisp", "{row:?}");
    assert_eq!(cell(&row, "Version"), "v3.1", "{row:?}");
    assert_eq!(cell(&row, "Lifecycle"), "Published", "{row:?}");

    // A fuller ApiDeployment: security, operations, CORS, throttling.
    let apid2 = json!({
        "apiVersion": "tollgate.dev/v1alpha1", "kind": "ApiDeployment",
        "metadata": {"name": "payments-v3-1"},
        "spec": {
            "apiManagerRef": {"name": "local", "namespace": "banking"},
            "displayName": "Payment Initiation", "tags": ["open-banking", "pisp"],
            "context": "/open-banking/pisp", "version": "v3.1", "isDefaultVersion": true,
            "lifecycle": "Deprecated",
            "backend": {
                "endpoints": [{"url": "https://payments.banking.svc:8443/pisp", "weight": 3},
                              {"url": "http://127.0.0.1:18080", "weight": 0}],
                "sandboxEndpoints": [{"url": "http://sandbox:8080"}],
                "timeout": "500ms", "retries": 0,
            },
            "security": {"apiKey": {"header": "apikey"}, "oauth2": {}, "mtls": {"required": true}},
            "throttling": {"policy": "gold"},
            "operations": [
                {"method": "POST", "path": "/domestic-payments", "scopes": ["payments"]},
                {"method": "GET", "path": "/domestic-payments/{paymentId}", "throttling": {"policy": "per-customer"}},
            ],
            "cors": {"allowOrigins": ["https://tpp.example"], "maxAge": 600},
        },
    });
    let stored = apply(&cluster, ns, apid2.clone()).await;
    assert_same_defaults::<ApiDeploymentSpec>("ApiDeployment", &apid2, &stored);

    // ApiManager, pattern AllInOne: only the pattern.
    let apim = json!({
        "apiVersion": "tollgate.dev/v1alpha1", "kind": "ApiManager",
        "metadata": {"name": "local"},
        "spec": {"pattern": "AllInOne"},
    });
    let stored = apply(&cluster, ns, apim.clone()).await;
    let spec = &stored["spec"];
    assert_eq!(spec["allowedNamespaces"]["from"], "Same", "{spec}");
    assert_eq!(spec["listeners"]["http"], 8280, "{spec}");
    assert_eq!(spec["listeners"]["https"], 8243, "{spec}");
    assert_eq!(spec["listeners"]["management"], 9763, "{spec}");
    assert_eq!(spec["listeners"]["managementTls"], 9443, "{spec}");
    assert_eq!(spec["persistence"]["searchIndex"]["size"], "1Gi", "{spec}");
    assert_eq!(spec["persistence"]["database"]["size"], "1Gi", "{spec}");
    assert_eq!(spec["analytics"]["enabled"], false, "{spec}");
    assert_same_defaults::<ApiManagerSpec>("ApiManager", &apim, &stored);
    let typed = Api::<ApiManager>::namespaced(cluster.client.clone(), ns).get("local").await.unwrap();
    assert_eq!(serde_json::to_value(typed.spec.pattern).unwrap(), "AllInOne");
    let row = table_row(&cluster, ns, "apimanagers", "local").await;
    assert_eq!(cell(&row, "Pattern"), "AllInOne", "{row:?}");

    // The other patterns, valid as DESIGN.md describes them.
    for (name, spec) in [
        (
            "ha",
            json!({"pattern": "HighAvailability", "controlPlane": {"replicas": 2},
                   "database": {"external": {"urlSecretRef": {"name": "pg", "key": "url"}}},
                   "trafficManager": {"redis": {"urlSecretRef": {"name": "redis", "key": "url"}}, "failureMode": "Closed"},
                   "analytics": {"enabled": true}}),
        ),
        (
            "distributed",
            json!({"pattern": "DistributedGateways",
                   "database": {"external": {"urlSecretRef": {"name": "pg", "key": "url"}}},
                   "trafficManager": {"redis": {"urlSecretRef": {"name": "redis", "key": "url"}}},
                   "gateways": [
                       {"name": "production", "replicas": 2,
                        "autoscaling": {"minReplicas": 2, "maxReplicas": 10, "targetCPUUtilizationPercentage": 70}},
                       {"name": "sandbox"}],
                   "allowedNamespaces": {"from": "Selector", "selector": {"matchLabels": {"team": "banking"}}}}),
        ),
        (
            "distributed-single-gateway",
            json!({"pattern": "DistributedGateways",
                   "database": {"external": {"urlSecretRef": {"name": "pg", "key": "url"}}},
                   "gateways": [{"name": "production", "replicas": 1}]}),
        ),
    ] {
        let manifest = json!({
            "apiVersion": "tollgate.dev/v1alpha1", "kind": "ApiManager", "metadata": {"name": name}, "spec": spec,
        });
        let stored = apply(&cluster, ns, manifest.clone()).await;
        assert_same_defaults::<ApiManagerSpec>("ApiManager", &manifest, &stored);
    }
}

/// The example manifests (examples/**) are valid for the loader and the apiserver alike.
#[tokio::test]
async fn example_manifests_are_accepted() {
    let cluster = Cluster::connect().await;
    install_crds(&cluster.client).await;
    let ns = cluster.namespace("crds-examples").await;
    let dir = tollgate_e2e::repo_root().join("examples");
    let mut files = Vec::new();
    let mut stack = vec![dir.clone()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                files.push(p);
            }
        }
    }
    files.sort();
    let mut applied = 0;
    let mut failures = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let (_, errors) = tollgate_crds::loader::load_str(f, &text);
        failures.extend(errors.iter().map(|e| format!("the loader rejects an example: {e}")));
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        for doc in docs.iter().filter(|d| d["apiVersion"] == tollgate_crds::API_VERSION) {
            applied += 1;
            if let Err(e) = apply_manifest(&cluster.client, ns.name(), doc).await {
                failures.push(format!(
                    "{}: {} {} rejected: {}",
                    f.display(),
                    doc["kind"],
                    doc["metadata"]["name"],
                    error_message(&e)
                ));
            }
        }
    }
    assert!(applied > 0, "no Tollgate manifests under {}", dir.display());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
