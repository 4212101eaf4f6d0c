//! What users see when something is wrong: a missing ThrottlePolicy, a
//! missing ApiManager, a namespace that may not deploy, and two APIs on one
//! route. Each gets the right condition and reason, and recovers when fixed.

use std::{path::Path, time::Duration};

use kube::api::{Api, DeleteParams, DynamicObject};
use serde_json::{Value, json};
use tollgate_e2e::{
    Cluster, apply_manifest, install_crds,
    stack::{ArtifactVolume, Operator, OperatorAccess, OperatorSpec, WatchingOperator, eventually},
    tollgate_resource,
};

fn api(name: &str, manager: Value, version: &str, extra: Value) -> Value {
    let mut spec = json!({ "apiManagerRef": manager, "context": "/open-banking/pisp", "version": version,
                           "backend": { "endpoints": [{ "url": "http://127.0.0.1:9" }] } });
    spec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    json!({ "apiVersion": "tollgate.dev/v1alpha1", "kind": "ApiDeployment", "metadata": { "name": name }, "spec": spec })
}

fn manager(name: &str) -> Value {
    json!({ "apiVersion": "tollgate.dev/v1alpha1", "kind": "ApiManager", "metadata": { "name": name },
            "spec": { "pattern": "AllInOne" } })
}

/// (status, reason) of a condition of an ApiDeployment.
async fn condition(
    client: &kube::Client,
    ns: &str,
    name: &str,
    type_: &str,
) -> Result<(String, String, String), String> {
    let ar = tollgate_resource("ApiDeployment").unwrap();
    let obj =
        Api::<DynamicObject>::namespaced_with(client.clone(), ns, &ar).get(name).await.map_err(|e| e.to_string())?;
    let v = serde_json::to_value(obj).unwrap();
    let c = v["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_).cloned())
        .ok_or_else(|| format!("no {type_} condition yet"))?;
    if c["observedGeneration"] != v["metadata"]["generation"] {
        return Err("stale observedGeneration".into());
    }
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    Ok((s("status"), s("reason"), s("message")))
}

async fn expect(client: &kube::Client, ns: &str, name: &str, type_: &str, status: &str, reason: &str) -> String {
    eventually(Duration::from_secs(20), &format!("{ns}/{name} {type_}={status} ({reason})"), || async {
        let (s, r, m) = condition(client, ns, name, type_).await?;
        if s == status && r == reason { Ok(m) } else { Err(format!("{s} {r}: {m}")) }
    })
    .await
}

/// metadata.creationTimestamp of an ApiDeployment (RFC 3339, whole seconds).
async fn created(client: &kube::Client, ns: &str, name: &str) -> String {
    let ar = tollgate_resource("ApiDeployment").unwrap();
    let obj = Api::<DynamicObject>::namespaced_with(client.clone(), ns, &ar).get(name).await.unwrap();
    serde_json::to_value(obj).unwrap()["metadata"]["creationTimestamp"].as_str().unwrap().to_string()
}

fn artifact(dir: &Path, mgr_ns: &str, api_ns: &str, name: &str) -> std::path::PathBuf {
    dir.join(mgr_ns).join("apim").join(format!("apis/{api_ns}_{name}.yaml"))
}

#[tokio::test]
async fn conditions_for_missing_refs_disallowed_namespaces_and_conflicts() {
    let cluster = Cluster::connect().await;
    install_crds(&cluster.client).await;
    let home = cluster.namespace("conditions").await;
    let other = cluster.namespace("conditions-other").await;
    let (home, other) = (home.name().to_string(), other.name().to_string());
    let client = cluster.client.clone();
    let work = tempfile::tempdir().unwrap();
    let artifacts = work.path().join("artifacts");
    // Two namespaces: the operator watches cluster-wide (bound by a ClusterRoleBinding).
    let access = OperatorAccess::create(&cluster, &[&home, &other], true, work.path()).await;
    let _volume = ArtifactVolume::create(&cluster, &home, &artifacts).await;
    let operator = Operator::start(&OperatorSpec {
        kubeconfig: access.kubeconfig.clone(),
        artifact_dir: artifacts.clone(),
        namespaces: vec![home.clone(), other.clone()],
        identity: "op".into(),
        leader_election: false,
        work: work.path().to_path_buf(),
    });

    // Missing ApiManager.
    apply_manifest(&client, &home, &api("orphan", json!({ "name": "apim" }), "v1", json!({}))).await.unwrap();
    let m = expect(&client, &home, "orphan", "ResolvedRefs", "False", "ApiManagerNotFound").await;
    assert!(m.contains("apim"), "{m}");
    expect(&client, &home, "orphan", "Deployed", "False", "ApiManagerNotFound").await;

    // The ApiManager appears: the orphan is deployed.
    apply_manifest(&client, &home, &manager("apim")).await.unwrap();
    expect(&client, &home, "orphan", "Deployed", "True", "Deployed").await;
    assert!(artifact(&artifacts, &home, &home, "orphan").is_file());

    // Missing policy, then created.
    apply_manifest(
        &client,
        &home,
        &api("tiered", json!({ "name": "apim" }), "v2", json!({ "throttling": { "policy": "silver" } })),
    )
    .await
    .unwrap();
    let m = expect(&client, &home, "tiered", "ResolvedRefs", "False", "PolicyNotFound").await;
    assert!(m.contains("silver"), "{m}");
    assert!(!artifact(&artifacts, &home, &home, "tiered").exists());
    apply_manifest(
        &client,
        &home,
        &json!({ "apiVersion": "tollgate.dev/v1alpha1", "kind": "ThrottlePolicy", "metadata": { "name": "silver" },
                 "spec": { "limit": { "requests": 10, "per": "1s" } } }),
    )
    .await
    .unwrap();
    expect(&client, &home, "tiered", "ResolvedRefs", "True", "Resolved").await;
    expect(&client, &home, "tiered", "Deployed", "True", "Deployed").await;

    // Another namespace may not deploy onto the manager (allowedNamespaces: Same).
    apply_manifest(&client, &other, &api("outsider", json!({ "name": "apim", "namespace": home }), "v3", json!({})))
        .await
        .unwrap();
    let m = expect(&client, &other, "outsider", "Accepted", "False", "NotAllowed").await;
    assert!(m.contains(&other), "{m}");
    assert!(!artifact(&artifacts, &home, &other, "outsider").exists());
    // Allowing all namespaces lets it in.
    let mut open = manager("apim");
    open["spec"]["allowedNamespaces"] = json!({ "from": "All" });
    apply_manifest(&client, &home, &open).await.unwrap();
    expect(&client, &other, "outsider", "Deployed", "True", "Deployed").await;
    assert!(artifact(&artifacts, &home, &other, "outsider").is_file());

    // Conflict: the newer API on the same context/version loses. A clear
    // second apart, so creationTimestamp (one-second resolution) tells them
    // apart; ties are tested on purpose below.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    apply_manifest(&client, &home, &api("copycat", json!({ "name": "apim" }), "v1", json!({}))).await.unwrap();
    let (t_orphan, t_copycat) = (created(&client, &home, "orphan").await, created(&client, &home, "copycat").await);
    assert!(t_copycat > t_orphan, "copycat ({t_copycat}) must be newer than orphan ({t_orphan})");
    let m = expect(&client, &home, "copycat", "Accepted", "False", "Conflict").await;
    assert!(m.contains("orphan"), "{m}");
    expect(&client, &home, "orphan", "Deployed", "True", "Deployed").await;
    assert!(!artifact(&artifacts, &home, &home, "copycat").exists());
    // When the older one goes, the newer one takes the route.
    let ar = tollgate_resource("ApiDeployment").unwrap();
    Api::<DynamicObject>::namespaced_with(client.clone(), &home, &ar)
        .delete("orphan", &DeleteParams::default())
        .await
        .unwrap();
    expect(&client, &home, "copycat", "Deployed", "True", "Deployed").await;
    assert!(artifact(&artifacts, &home, &home, "copycat").is_file());
    assert!(!artifact(&artifacts, &home, &home, "orphan").exists());

    // Events tell the story.
    tollgate_e2e::stack::wait_for_events(&client, &home, &["Conflict", "Deployed", "PolicyNotFound"]).await;
    assert_eq!(operator.unexpected_errors(), 0.0, "{}", operator.proc.log_lines("failed"));
}

/// Sleep until just after the next full second of the wall clock, so that
/// requests sent now land in one second of the apiserver's clock.
async fn next_second() {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    tokio::time::sleep(Duration::from_millis(1020 - u64::from(now.subsec_millis()))).await;
}

/// Create `names` concurrently within one second (creationTimestamp equal);
/// tries again (after deleting them) when a request straddled a second.
async fn create_in_one_second(client: &kube::Client, ns: &str, manifests: &[Value]) {
    let ar = tollgate_resource("ApiDeployment").unwrap();
    let apis = Api::<DynamicObject>::namespaced_with(client.clone(), ns, &ar);
    for attempt in 1..=5 {
        next_second().await;
        let created = futures::future::join_all(manifests.iter().map(|m| apply_manifest(client, ns, m))).await;
        let stamps: Vec<String> = created
            .into_iter()
            .map(|r| {
                serde_json::to_value(r.unwrap()).unwrap()["metadata"]["creationTimestamp"].as_str().unwrap().into()
            })
            .collect();
        if stamps.iter().all(|s| s == &stamps[0]) {
            return;
        }
        eprintln!("attempt {attempt}: created in different seconds {stamps:?}; again");
        for m in manifests {
            let name = m["metadata"]["name"].as_str().unwrap();
            let _ = apis.delete(name, &DeleteParams::default()).await;
            eventually(Duration::from_secs(20), &format!("{name} deleted"), || async {
                match apis.get_opt(name).await {
                    Ok(None) => Ok(()),
                    other => Err(format!("{:?}", other.map(|o| o.map(|o| o.metadata.name)))),
                }
            })
            .await;
        }
    }
    panic!("could not create {} ApiDeployments within one second in 5 attempts", manifests.len());
}

/// Which of `names` is Accepted (exactly one), after the operator has seen
/// the current generation of each; the others report Conflict naming it.
async fn sole_owner(client: &kube::Client, ns: &str, names: &[&str]) -> String {
    eventually(Duration::from_secs(20), "exactly one owner of the route", || async {
        let mut owners = Vec::new();
        for n in names {
            let (status, reason, message) = condition(client, ns, n, "Accepted").await?;
            match (status.as_str(), reason.as_str()) {
                ("True", _) => owners.push(n.to_string()),
                ("False", "Conflict") => {}
                _ => return Err(format!("{n}: {status} {reason}: {message}")),
            }
        }
        if owners.len() != 1 {
            return Err(format!("owners {owners:?}"));
        }
        for n in names.iter().filter(|n| **n != owners[0]) {
            let (_, _, message) = condition(client, ns, n, "Accepted").await?;
            if !message.contains(&format!("{ns}/{}", owners[0])) {
                return Err(format!("{n}'s conflict names someone else: {message}"));
            }
        }
        Ok(owners.remove(0))
    })
    .await
}

/// creationTimestamp has one-second resolution: two ApiDeployments on one
/// route created in the same second. Exactly one owns it and has the only
/// artifact; the one already serving keeps it, whatever the names; deleting
/// the owner hands the route over.
#[tokio::test]
async fn apis_created_in_the_same_second_have_exactly_one_owner() {
    let cluster = Cluster::connect().await;
    install_crds(&cluster.client).await;
    let ns = cluster.namespace("same-second").await;
    let ns = ns.name().to_string();
    let client = cluster.client.clone();
    let work = tempfile::tempdir().unwrap();
    let artifacts = work.path().join("artifacts");
    let access = OperatorAccess::create(&cluster, &[&ns], false, work.path()).await;
    let _volume = ArtifactVolume::create(&cluster, &ns, &artifacts).await;
    let spec = OperatorSpec {
        kubeconfig: access.kubeconfig.clone(),
        artifact_dir: artifacts.clone(),
        namespaces: vec![ns.clone()],
        identity: "op".into(),
        leader_election: false,
        work: work.path().to_path_buf(),
    };
    apply_manifest(&client, &ns, &manager("apim")).await.unwrap();
    let mgr = json!({ "name": "apim" });
    let has_artifact = |name: &str| artifact(&artifacts, &ns, &ns, name).is_file();

    // 1. Created concurrently while the operator runs: it may see them one
    //    after the other or both at once; either way exactly one owner.
    let operator = Operator::start(&spec);
    let pair = ["pair-a", "pair-b"];
    create_in_one_second(&client, &ns, &pair.map(|n| api(n, mgr.clone(), "v1", json!({})))).await;
    let owner = sole_owner(&client, &ns, &pair).await;
    let loser = pair.into_iter().find(|n| *n != owner).unwrap();
    assert!(has_artifact(&owner) && !has_artifact(loser), "one artifact, the owner's");
    // A reconcile of the loser's new generation does not move the route.
    apply_manifest(&client, &ns, &api(loser, mgr.clone(), "v1", json!({ "description": "touched" }))).await.unwrap();
    assert_eq!(sole_owner(&client, &ns, &pair).await, owner);
    assert!(has_artifact(&owner) && !has_artifact(loser));
    // Deleting the owner hands the route over.
    let ar = tollgate_resource("ApiDeployment").unwrap();
    let apis = Api::<DynamicObject>::namespaced_with(client.clone(), &ns, &ar);
    apis.delete(&owner, &DeleteParams::default()).await.unwrap();
    expect(&client, &ns, loser, "Deployed", "True", "Deployed").await;
    eventually(Duration::from_secs(20), "artifacts handed over", || async {
        if has_artifact(loser) && !has_artifact(&owner) { Ok(()) } else { Err("not yet".to_string()) }
    })
    .await;
    apis.delete(loser, &DeleteParams::default()).await.unwrap();
    eventually(Duration::from_secs(20), "the pair is gone", || async {
        match apis.get_opt(loser).await {
            Ok(None) => Ok(()),
            other => Err(format!("{:?}", other.map(|o| o.map(|o| o.metadata.finalizers)))),
        }
    })
    .await;
    assert_eq!(operator.unexpected_errors(), 0.0, "{}", operator.proc.log_lines("failed"));
    drop(operator);

    // 2. The one serving keeps the route even when it sorts last by name.
    //    Both are created in one second while no operator runs; "z-first"
    //    serves v1 and "a-second" v2. Then "a-second" moves to v1: same
    //    creationTimestamp, "a-second" first by name, but "z-first" serves.
    create_in_one_second(
        &client,
        &ns,
        &[api("z-first", mgr.clone(), "v1", json!({})), api("a-second", mgr.clone(), "v2", json!({}))],
    )
    .await;
    let operator = Operator::start(&spec);
    expect(&client, &ns, "z-first", "Deployed", "True", "Deployed").await;
    expect(&client, &ns, "a-second", "Deployed", "True", "Deployed").await;
    apply_manifest(&client, &ns, &api("a-second", mgr.clone(), "v1", json!({}))).await.unwrap();
    let m = expect(&client, &ns, "a-second", "Accepted", "False", "Conflict").await;
    assert!(m.contains(&format!("{ns}/z-first")), "{m}");
    assert!(has_artifact("z-first") && !has_artifact("a-second"));
    // A restarted operator reads who serves from the folder: no flip.
    drop(operator);
    let operator = Operator::start(&spec);
    apply_manifest(&client, &ns, &api("a-second", mgr.clone(), "v1", json!({ "description": "again" }))).await.unwrap();
    assert_eq!(sole_owner(&client, &ns, &["a-second", "z-first"]).await, "z-first");
    assert!(has_artifact("z-first") && !has_artifact("a-second"));
    apis.delete("z-first", &DeleteParams::default()).await.unwrap();
    expect(&client, &ns, "a-second", "Deployed", "True", "Deployed").await;
    assert_eq!(operator.unexpected_errors(), 0.0, "{}", operator.proc.log_lines("failed"));
}

#[tokio::test]
async fn a_selector_the_operator_may_not_evaluate_says_why() {
    // Namespace labels need a cluster-wide read the operator does not have
    // here (rbac.readNamespaces off): the API is refused, and says why.
    let cluster = Cluster::connect().await;
    install_crds(&cluster.client).await;
    let ns = cluster.namespace("selector").await;
    let ns = ns.name().to_string();
    let client = cluster.client.clone();
    let work = tempfile::tempdir().unwrap();
    let env = WatchingOperator::start_with(&cluster, &ns, work.path(), true).await;
    let (artifacts, operator) = (&env.artifacts, &env.operator);
    let mut m = manager("apim");
    m["spec"]["allowedNamespaces"] = json!({ "from": "Selector", "selector": { "matchLabels": { "team": "pay" } } });
    apply_manifest(&client, &ns, &m).await.unwrap();
    apply_manifest(&client, &ns, &api("selected", json!({ "name": "apim" }), "v1", json!({}))).await.unwrap();
    let msg = expect(&client, &ns, "selected", "Accepted", "False", "NotAllowed").await;
    assert!(msg.contains("rbac.readNamespaces"), "{msg}");
    assert!(!artifact(artifacts, &ns, &ns, "selected").exists());
    assert_eq!(operator.unexpected_errors(), 0.0, "{}", operator.proc.log_lines("failed"));
}

#[tokio::test]
async fn operations_follow_the_openapi_definition_configmap_as_it_changes() {
    // The ConfigMap is watched (metadata): creating, editing and deleting it
    // replans its API at once, with no periodic re-read to wait for.
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::{Patch, PatchParams};
    let cluster = Cluster::connect().await;
    install_crds(&cluster.client).await;
    let ns = cluster.namespace("definition").await;
    let ns = ns.name().to_string();
    let client = cluster.client.clone();
    let work = tempfile::tempdir().unwrap();
    let env = WatchingOperator::start(&cluster, &ns, work.path()).await;
    let (artifacts, operator) = (&env.artifacts, &env.operator);
    apply_manifest(&client, &ns, &manager("apim")).await.unwrap();
    let definition = json!({ "definition": { "configMapRef": { "name": "accounts-openapi", "key": "openapi.yaml" } } });
    let mut accounts = api("accounts", json!({ "name": "apim" }), "v1", definition);
    accounts["spec"]["operations"] = json!([]);
    apply_manifest(&client, &ns, &accounts).await.unwrap();
    let msg = expect(&client, &ns, "accounts", "ResolvedRefs", "False", "DefinitionNotFound").await;
    assert!(msg.contains("accounts-openapi"), "{msg}");

    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let put = |paths: &str| {
        json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": "accounts-openapi" },
                "data": { "openapi.yaml": format!("openapi: 3.0.3\ninfo: {{title: accounts, version: '1', description: Accounts the PSU shares}}\npaths:\n{paths}") } })
    };
    let pp = PatchParams::apply("e2e").force();
    maps.patch("accounts-openapi", &pp, &Patch::Apply(put("  /accounts:\n    get: {}\n"))).await.unwrap();
    expect(&client, &ns, "accounts", "Deployed", "True", "Deployed").await;
    let file = artifact(artifacts, &ns, &ns, "accounts");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("/accounts") && !text.contains("/balances"), "{text}");
    // The document itself travels in the artifact (the portal shows it);
    // the gateways never read the ConfigMap.
    assert!(text.contains("Accounts the PSU shares") && !text.contains("configMapRef"), "{text}");

    // A document written in the ApiDeployment itself is planned the same way.
    let mut inline = api(
        "inline",
        json!({ "name": "apim" }),
        "v1",
        json!({ "context": "/inline", "definition": { "document": "openapi: 3.1.0\npaths:\n  /payments:\n    post: {summary: Pay}\n" } }),
    );
    inline["spec"]["operations"] = json!([]);
    apply_manifest(&client, &ns, &inline).await.unwrap();
    expect(&client, &ns, "inline", "Deployed", "True", "Deployed").await;
    let inline_text = std::fs::read_to_string(artifact(artifacts, &ns, &ns, "inline")).unwrap();
    assert!(inline_text.contains("path: /payments") && inline_text.contains("summary: Pay"), "{inline_text}");

    // An edit adds an operation: the artifact follows.
    maps.patch("accounts-openapi", &pp, &Patch::Apply(put("  /accounts:\n    get: {}\n  /balances:\n    get: {}\n")))
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "the artifact has the new operation", || async {
        let text = std::fs::read_to_string(&file).map_err(|e| e.to_string())?;
        if text.contains("/balances") { Ok(()) } else { Err(text) }
    })
    .await;

    // A document that is not OpenAPI 3: refused, and the artifact goes.
    maps.patch(
        "accounts-openapi",
        &pp,
        &Patch::Apply(json!({ "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": "accounts-openapi" }, "data": { "openapi.yaml": "swagger: '2.0'\n" } })),
    )
    .await
    .unwrap();
    expect(&client, &ns, "accounts", "ResolvedRefs", "False", "InvalidDefinition").await;
    eventually(Duration::from_secs(10), "the artifact is removed", || async {
        if file.exists() { Err("still there".to_string()) } else { Ok(()) }
    })
    .await;

    // Deleted: DefinitionNotFound again.
    maps.delete("accounts-openapi", &DeleteParams::default()).await.unwrap();
    expect(&client, &ns, "accounts", "ResolvedRefs", "False", "DefinitionNotFound").await;
    assert_eq!(operator.unexpected_errors(), 0.0, "{}", operator.proc.log_lines("failed"));
}

/// (status, reason, message) of an ApiManager's Ready condition.
async fn manager_ready(client: &kube::Client, ns: &str, name: &str) -> Result<(String, String, String), String> {
    manager_condition(client, ns, name, "Ready").await
}

/// (status, reason, message) of an ApiManager's condition `type_`.
async fn manager_condition(
    client: &kube::Client,
    ns: &str,
    name: &str,
    type_: &str,
) -> Result<(String, String, String), String> {
    let ar = tollgate_resource("ApiManager").unwrap();
    let obj =
        Api::<DynamicObject>::namespaced_with(client.clone(), ns, &ar).get(name).await.map_err(|e| e.to_string())?;
    let v = serde_json::to_value(obj).unwrap();
    let c = v["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_).cloned())
        .ok_or(format!("no {type_} condition yet"))?;
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    Ok((s("status"), s("reason"), s("message")))
}

#[tokio::test]
async fn a_missing_artifact_claim_is_named_on_the_api_manager() {
    let cluster = Cluster::connect().await;
    install_crds(&cluster.client).await;
    let ns = cluster.namespace("claim").await;
    let ns = ns.name().to_string();
    let client = cluster.client.clone();
    let work = tempfile::tempdir().unwrap();
    let env = WatchingOperator::start_with(&cluster, &ns, work.path(), false).await;
    let (artifacts, _operator) = (&env.artifacts, &env.operator);
    apply_manifest(&client, &ns, &manager("apim")).await.unwrap();
    let m = eventually(Duration::from_secs(20), "Ready=False ArtifactClaimNotFound", || async {
        match manager_ready(&client, &ns, "apim").await? {
            (s, r, m) if s == "False" && r == "ArtifactClaimNotFound" => Ok(m),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(m.contains(&format!("{ns}/tollgate-artifacts")), "{m}");
    // With the claim the reason goes away.
    let _volume = ArtifactVolume::create(&cluster, &ns, artifacts).await;
    eventually(Duration::from_secs(40), "the claim problem cleared", || async {
        match manager_ready(&client, &ns, "apim").await? {
            (_, r, m) if r.starts_with("ArtifactClaim") => Err(m),
            _ => Ok(()),
        }
    })
    .await;
}

#[tokio::test]
async fn an_artifact_folder_the_operator_cannot_write_is_named_on_the_api_manager() {
    // Storage that does not let the operator write (here: a file where the
    // manager's folder goes, which stops root too) shows on the ApiManager,
    // with the path and the OS error, instead of leaving it without status.
    let cluster = Cluster::connect().await;
    install_crds(&cluster.client).await;
    let ns = cluster.namespace("folder").await;
    let ns = ns.name().to_string();
    let client = cluster.client.clone();
    let work = tempfile::tempdir().unwrap();
    let env = WatchingOperator::start(&cluster, &ns, work.path()).await;
    let blocked = env.artifacts.join(&ns).join("apim");
    std::fs::create_dir_all(blocked.parent().unwrap()).unwrap();
    std::fs::write(&blocked, b"not a folder").unwrap();
    apply_manifest(&client, &ns, &manager("apim")).await.unwrap();
    let (ready, degraded) = eventually(Duration::from_secs(20), "Ready=False ArtifactWriteFailed", || async {
        let ready = manager_ready(&client, &ns, "apim").await?;
        let degraded = manager_condition(&client, &ns, "apim", "Degraded").await?;
        match (&ready, &degraded) {
            ((s, r, _), (d, dr, _)) if s == "False" && r == "ArtifactWriteFailed" && d == "True" && dr == r => {
                Ok((ready, degraded))
            }
            _ => Err(format!("{ready:?} {degraded:?}")),
        }
    })
    .await;
    assert!(ready.2.contains(&blocked.display().to_string()) && ready.2.contains("Storage"), "{ready:?}");
    assert_eq!(ready.2, degraded.2);
    // Fixed storage: the problem clears.
    std::fs::remove_file(&blocked).unwrap();
    eventually(Duration::from_secs(40), "the folder problem cleared", || async {
        match manager_ready(&client, &ns, "apim").await? {
            (_, r, m) if r == "ArtifactWriteFailed" => Err(m),
            _ => Ok(()),
        }
    })
    .await;
    assert!(blocked.join("apis").is_dir());
}

#[tokio::test]
async fn a_move_between_managers_and_deletions_during_a_burst() {
    let cluster = Cluster::connect().await;
    install_crds(&cluster.client).await;
    let ns = cluster.namespace("burst").await;
    let ns = ns.name().to_string();
    let client = cluster.client.clone();
    let work = tempfile::tempdir().unwrap();
    let env = WatchingOperator::start_with(&cluster, &ns, work.path(), true).await;
    let (artifacts, operator) = (&env.artifacts, &env.operator);
    apply_manifest(&client, &ns, &manager("apim")).await.unwrap();
    apply_manifest(&client, &ns, &manager("apim2")).await.unwrap();
    let in_folder = |mgr: &str, name: &str| artifacts.join(&ns).join(mgr).join(format!("apis/{ns}_{name}.yaml"));

    // A burst of 40 APIs; 10 of them are deleted while it is being planned.
    let names: Vec<String> = (0..40).map(|i| format!("b-{i}")).collect();
    let mut creates = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let v = format!("v{i}");
        let c = client.clone();
        let ns = ns.clone();
        let doc = api(n, json!({ "name": "apim" }), &v, json!({}));
        creates.push(async move { apply_manifest(&c, &ns, &doc).await });
    }
    for r in futures::future::join_all(creates).await {
        r.unwrap();
    }
    let ar = tollgate_resource("ApiDeployment").unwrap();
    let apis = Api::<DynamicObject>::namespaced_with(client.clone(), &ns, &ar);
    for n in &names[..10] {
        apis.delete(n, &DeleteParams::default()).await.unwrap();
    }
    eventually(Duration::from_secs(60), "30 artifacts, the deleted ones gone with their objects", || async {
        let present = names.iter().filter(|n| in_folder("apim", n).is_file()).count();
        let left = apis.list(&Default::default()).await.map_err(|e| e.to_string())?.items.len();
        if present == 30 && left == 30 && names[..10].iter().all(|n| !in_folder("apim", n).exists()) {
            Ok(())
        } else {
            Err(format!("{present} artifacts, {left} objects"))
        }
    })
    .await;
    for n in &names[10..] {
        expect(&client, &ns, n, "Deployed", "True", "Deployed").await;
    }

    // One moves to the other manager: out of the old folder, into the new one.
    apply_manifest(&client, &ns, &api("b-39", json!({ "name": "apim2" }), "v39", json!({}))).await.unwrap();
    eventually(Duration::from_secs(20), "moved", || async {
        if in_folder("apim2", "b-39").is_file() && !in_folder("apim", "b-39").exists() {
            Ok(())
        } else {
            Err("not yet".to_string())
        }
    })
    .await;
    expect(&client, &ns, "b-39", "Deployed", "True", "Deployed").await;
    // And to a manager that does not exist: the artifact leaves, the status says why.
    apply_manifest(&client, &ns, &api("b-39", json!({ "name": "nowhere" }), "v39", json!({}))).await.unwrap();
    expect(&client, &ns, "b-39", "Accepted", "False", "ApiManagerNotFound").await;
    eventually(Duration::from_secs(20), "gone from apim2", || async {
        if in_folder("apim2", "b-39").exists() { Err("still there".to_string()) } else { Ok(()) }
    })
    .await;
    assert_eq!(operator.unexpected_errors(), 0.0, "{}", operator.proc.log_lines("failed"));
}

#[tokio::test]
async fn a_folder_that_refuses_writes_is_reported_and_nothing_is_lost() {
    let cluster = Cluster::connect().await;
    install_crds(&cluster.client).await;
    let ns = cluster.namespace("refuse").await;
    let ns = ns.name().to_string();
    let client = cluster.client.clone();
    let work = tempfile::tempdir().unwrap();
    let env = WatchingOperator::start_with(&cluster, &ns, work.path(), true).await;
    let (artifacts, operator) = (&env.artifacts, &env.operator);
    let mgr = json!({ "name": "apim" });
    apply_manifest(&client, &ns, &manager("apim")).await.unwrap();
    apply_manifest(&client, &ns, &api("kept", mgr.clone(), "v1", json!({}))).await.unwrap();
    apply_manifest(&client, &ns, &api("doomed", mgr.clone(), "v2", json!({}))).await.unwrap();
    expect(&client, &ns, "kept", "Deployed", "True", "Deployed").await;
    expect(&client, &ns, "doomed", "Deployed", "True", "Deployed").await;

    // The volume breaks: `apis/` is no longer a folder (root ignores file
    // modes, so a read-only folder would not stop this test's writer).
    let apis_dir = artifacts.join(&ns).join("apim").join("apis");
    let saved = work.path().join("saved-apis");
    std::fs::rename(&apis_dir, &saved).unwrap();
    std::fs::write(&apis_dir, "not a folder").unwrap();
    apply_manifest(&client, &ns, &api("new", mgr.clone(), "v3", json!({}))).await.unwrap();
    let m = expect(&client, &ns, "new", "Deployed", "False", "ArtifactWriteFailed").await;
    assert!(m.contains("could not be written"), "{m}");
    let ar = tollgate_resource("ApiDeployment").unwrap();
    let apis = Api::<DynamicObject>::namespaced_with(client.clone(), &ns, &ar);
    apis.delete("doomed", &DeleteParams::default()).await.unwrap();
    eventually(Duration::from_secs(20), "the deletion waits and says why", || async {
        let (s, r, m) = condition(&client, &ns, "doomed", "Deployed")
            .await
            .map_err(|e| format!("{e}\n{}", operator.proc.log_tail()))?;
        if s == "False" && r == "ArtifactWriteFailed" && m.contains("cannot be removed") {
            Ok(())
        } else {
            Err(format!("{s} {r} {m}"))
        }
    })
    .await;
    assert!(apis.get_opt("doomed").await.unwrap().is_some(), "kept until its artifact is gone");

    // Repaired: everything converges, nothing was lost.
    std::fs::remove_file(&apis_dir).unwrap();
    std::fs::rename(&saved, &apis_dir).unwrap();
    expect(&client, &ns, "new", "Deployed", "True", "Deployed").await;
    expect(&client, &ns, "kept", "Deployed", "True", "Deployed").await;
    eventually(Duration::from_secs(30), "the deleted one is gone", || async {
        match apis.get_opt("doomed").await {
            Ok(None) => Ok(()),
            other => Err(format!("{:?}", other.map(|o| o.is_some()))),
        }
    })
    .await;
    assert!(artifact(artifacts, &ns, &ns, "new").is_file() && artifact(artifacts, &ns, &ns, "kept").is_file());
    assert!(!artifact(artifacts, &ns, &ns, "doomed").exists());
}
