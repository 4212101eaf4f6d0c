//! The single-node pattern end to end: the operator (a local process held to
//! the chart's RBAC) turns an AllInOne ApiManager, a ThrottlePolicy and an
//! ApiDeployment into a StatefulSet whose pod becomes Ready (kwok) and an
//! artifact that a real gateway process serves; policy edits and deletions
//! reach the gateway (waited for as conditions; how long they take is
//! measured by `make bench`, cluster section).

use std::time::{Duration, Instant};

use k8s_openapi::api::{apps::v1::StatefulSet, core::v1::PersistentVolumeClaim, core::v1::Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::{Value, json};
use tollgate_e2e::{
    Cluster, apply_manifest, install_crds,
    stack::{ArtifactVolume, Gateway, Operator, OperatorAccess, OperatorSpec, backend, eventually, request},
    tollgate_resource,
};

fn condition(obj: &Value, type_: &str) -> Option<(String, String)> {
    obj.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| (c["status"].as_str().unwrap_or("").to_string(), c["reason"].as_str().unwrap_or("").to_string()))
}

async fn get(client: &kube::Client, ns: &str, kind: &str, name: &str) -> Result<Value, String> {
    let ar = tollgate_resource(kind).expect("kind");
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    let obj = api.get(name).await.map_err(|e| e.to_string())?;
    serde_json::to_value(obj).map_err(|e| e.to_string())
}

#[tokio::test]
async fn all_in_one_serves_throttles_and_removes_apis() {
    let cluster = Cluster::connect().await;
    install_crds(&cluster.client).await;
    let ns = cluster.namespace("all-in-one").await;
    let ns = ns.name().to_string();
    let client = cluster.client.clone();
    let work = tempfile::tempdir().expect("tempdir");
    let artifacts = work.path().join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();

    let access = OperatorAccess::create(&cluster, &[&ns], false, work.path()).await;
    let _volume = ArtifactVolume::create(&cluster, &ns, &artifacts).await;
    let operator = Operator::start(&OperatorSpec {
        kubeconfig: access.kubeconfig.clone(),
        artifact_dir: artifacts.clone(),
        namespaces: vec![ns.clone()],
        identity: "op-1".into(),
        leader_election: true,
        work: work.path().to_path_buf(),
    });
    let (_backend, backend_addr) = backend(work.path(), "accounts-backend");

    // The subscription tiers of the README's walk-through, named by no API.
    let tiers =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/policies/tiers.yaml")).unwrap();
    for doc in serde_saphyr::from_multiple::<Value>(&tiers).expect("tiers.yaml") {
        apply_manifest(&client, &ns, &doc).await.expect("tier");
    }

    apply_manifest(
        &client,
        &ns,
        &json!({ "apiVersion": "tollgate.dev/v1alpha1", "kind": "ThrottlePolicy", "metadata": { "name": "gold" },
                 "spec": { "limit": { "requests": 1000, "per": "1m" }, "keyBy": "Api" } }),
    )
    .await
    .expect("policy");
    apply_manifest(
        &client,
        &ns,
        &json!({ "apiVersion": "tollgate.dev/v1alpha1", "kind": "ApiManager", "metadata": { "name": "apim" },
                 "spec": { "pattern": "AllInOne" } }),
    )
    .await
    .expect("apimanager");
    apply_manifest(
        &client,
        &ns,
        &json!({ "apiVersion": "tollgate.dev/v1alpha1", "kind": "ApiDeployment", "metadata": { "name": "accounts" },
                 "spec": { "apiManagerRef": { "name": "apim" }, "context": "/open-banking/aisp", "version": "v3.1",
                           "throttling": { "policy": "gold" },
                           "backend": { "endpoints": [{ "url": format!("http://{backend_addr}/bank") }] } } }),
    )
    .await
    .expect("apideployment");

    // The StatefulSet: both claim templates and every named port.
    let sts_api: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    let sts = eventually(Duration::from_secs(30), "StatefulSet apim", || async {
        sts_api.get("apim").await.map_err(|e| format!("{e}\n{}", operator.proc.log_tail()))
    })
    .await;
    let spec = sts.spec.as_ref().unwrap();
    let templates: Vec<String> =
        spec.volume_claim_templates.iter().flatten().filter_map(|t| t.metadata.name.clone()).collect();
    assert_eq!(templates, vec!["search-index", "database"]);
    let ports: Vec<(String, i32)> = spec.template.spec.as_ref().unwrap().containers[0]
        .ports
        .iter()
        .flatten()
        .map(|p| (p.name.clone().unwrap_or_default(), p.container_port))
        .collect();
    assert_eq!(
        ports,
        vec![
            ("http".into(), 8280),
            ("https".into(), 8243),
            ("management".into(), 9763),
            ("management-tls".into(), 9443)
        ]
    );

    // Claims Bound, pod Ready, ApiManager Ready.
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    for claim in ["search-index-apim-0", "database-apim-0", "tollgate-artifacts"] {
        eventually(Duration::from_secs(60), &format!("claim {claim} Bound"), || async {
            let pvc = pvcs.get(claim).await.map_err(|e| e.to_string())?;
            let phase = pvc.status.and_then(|s| s.phase).unwrap_or_default();
            if phase == "Bound" { Ok(()) } else { Err(phase) }
        })
        .await;
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    eventually(Duration::from_secs(60), "pod apim-0 Ready", || async {
        let pod = pods.get("apim-0").await.map_err(|e| e.to_string())?;
        let ready = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        if ready { Ok(()) } else { Err(format!("{:?}", pod.status.map(|s| s.phase))) }
    })
    .await;
    let manager = eventually(Duration::from_secs(60), "ApiManager Ready", || async {
        let m = get(&client, &ns, "ApiManager", "apim").await?;
        match condition(&m, "Ready") {
            Some((s, _)) if s == "True" => Ok(m),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(manager["status"]["components"][0]["readyReplicas"], 1);
    assert_eq!(manager["status"]["observedGeneration"], manager["metadata"]["generation"]);
    assert_eq!(condition(&manager, "Degraded").map(|c| c.0), Some("False".into()));

    // The artifact and the ApiDeployment's status.
    let folder = artifacts.join(&ns).join("apim");
    let artifact = folder.join(format!("apis/{ns}_accounts.yaml"));
    let api = eventually(Duration::from_secs(30), "ApiDeployment Deployed", || async {
        let a = get(&client, &ns, "ApiDeployment", "accounts").await?;
        match condition(&a, "Deployed") {
            Some((s, _)) if s == "True" => Ok(a),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(artifact.is_file() && folder.join(format!("policies/{ns}_gold.yaml")).is_file());
    assert_eq!(api["status"]["url"], "/open-banking/aisp/v3.1");
    assert!(api["status"]["artifact"]["revision"].as_str().is_some_and(|r| !r.is_empty()));
    assert_eq!(api["metadata"]["finalizers"], json!(["tollgate.dev/artifact"]));

    // Every tier of the namespace is in the folder, named by an API or not.
    for tier in ["gold", "silver", "bronze"] {
        assert!(folder.join(format!("policies/{ns}_{tier}.yaml")).is_file(), "tier {tier}");
    }

    // A real gateway on the artifact folder reaches the backend.
    let token_file = work.path().join("admin-token");
    std::fs::write(&token_file, "e2e-admin-token-0123456789abcdef").unwrap();
    let gateway = Gateway::start(&folder, work.path(), &["--admin-token-file", token_file.to_str().unwrap()]);
    eventually(Duration::from_secs(10), "request through the gateway", || async {
        match gateway.get("/open-banking/aisp/v3.1/accounts/1") {
            200 => Ok(()),
            s => Err(format!("status {s}")),
        }
    })
    .await;

    // A subscription on a tier no API names (the README's example): 201.
    let auth = [("Authorization", "Bearer e2e-admin-token-0123456789abcdef"), ("Content-Type", "application/json")];
    let (status, body) = eventually(Duration::from_secs(60), "the store ready", || async {
        match request(gateway.management, "POST", "/api/v1/applications", &auth, r#"{"name":"tpp-one"}"#) {
            Ok((201, body)) => Ok((201, body)),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(status, 201, "{body}");
    let app: Value = serde_json::from_str(&body).unwrap();
    let subscription = json!({ "applicationId": app["id"], "api": format!("{ns}/accounts"), "policy": "silver" });
    let (status, body) =
        request(gateway.management, "POST", "/api/v1/subscriptions", &auth, &subscription.to_string()).unwrap();
    assert_eq!(status, 201, "{body}");

    // kubectl patch of the policy is enforced.
    let tp = tollgate_resource("ThrottlePolicy").unwrap();
    let tps: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), &ns, &tp);
    let patched = Instant::now();
    tps.patch("gold", &PatchParams::default(), &Patch::Merge(json!({ "spec": { "limit": { "requests": 2 } } })))
        .await
        .expect("patch policy");
    eventually(Duration::from_secs(120), "the patched limit enforced (429)", || async {
        match gateway.get("/open-banking/aisp/v3.1/accounts/1") {
            429 => Ok(()),
            s => Err(format!("status {s}\n{}", gateway.proc.log_tail())),
        }
    })
    .await;
    eprintln!("policy patch -> enforced in {:?}", patched.elapsed());

    // Deleting the ApiDeployment: 404, artifact gone, object gone.
    let ad = tollgate_resource("ApiDeployment").unwrap();
    let ads: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ad);
    let deleted = Instant::now();
    ads.delete("accounts", &DeleteParams::default()).await.expect("delete");
    eventually(Duration::from_secs(120), "the deleted API answers 404", || async {
        match gateway.get("/open-banking/aisp/v3.1/accounts/1") {
            404 => Ok(()),
            s => Err(format!("status {s}")),
        }
    })
    .await;
    eprintln!("delete -> 404 in {:?}", deleted.elapsed());
    assert!(!artifact.exists(), "the artifact was removed");
    for tier in ["gold", "silver", "bronze"] {
        assert!(!folder.join(format!("policies/{ns}_{tier}.yaml")).exists(), "no API can use {tier} any more");
    }
    eventually(Duration::from_secs(10), "ApiDeployment gone (finalizer released)", || async {
        match ads.get_opt("accounts").await {
            Ok(None) => Ok(()),
            other => Err(format!("{:?}", other.map(|o| o.map(|o| o.metadata.finalizers)))),
        }
    })
    .await;
    assert_eq!(operator.unexpected_errors(), 0.0, "{}", operator.proc.log_lines("failed"));
}
