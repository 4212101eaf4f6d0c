//! What users see when something is wrong: a missing ThrottlePolicy, a
//! missing ApiManager, a namespace that may not deploy, and two APIs on one
//! route. Each gets the right condition and reason, and recovers when fixed.

use std::{path::Path, time::Duration};

use kube::api::{Api, DeleteParams, DynamicObject};
use serde_json::{Value, json};
use tollgate_e2e::{
    Cluster, apply_manifest, install_crds,
    stack::{ArtifactVolume, Operator, OperatorAccess, OperatorSpec, eventually},
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

    // Conflict: the newer API on the same context/version loses.
    apply_manifest(&client, &home, &api("copycat", json!({ "name": "apim" }), "v1", json!({}))).await.unwrap();
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
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &home);
    let reasons: Vec<String> =
        events.list(&Default::default()).await.unwrap().items.into_iter().filter_map(|e| e.reason).collect();
    for r in ["Conflict", "Deployed", "PolicyNotFound"] {
        assert!(reasons.iter().any(|x| x == r), "event {r} missing: {reasons:?}");
    }
    assert_eq!(operator.unexpected_errors(), 0.0, "{}", operator.proc.log_lines("failed"));
}
