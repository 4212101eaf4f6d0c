//! Every deployment-pattern manifest in examples/ applies with
//! `kubectl apply`, together with the sample policies and APIs, and reaches
//! Ready with the objects its pattern promises.

use std::time::Duration;

use kube::api::{Api, DynamicObject};
use serde_json::Value;
use tollgate_e2e::{
    Cluster, install_crds, repo_root,
    stack::{ArtifactVolume, Operator, OperatorAccess, OperatorSpec, eventually, tool},
    tollgate_resource,
};

fn ready(obj: &Value, type_: &str) -> bool {
    obj["status"]["conditions"]
        .as_array()
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == type_ && c["status"] == "True"))
        && obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
}

/// The ApiDeployments the files under `paths` (files or folders) declare.
fn declared_apis(paths: &[std::path::PathBuf]) -> usize {
    let mut count = 0;
    for p in paths {
        let files: Vec<std::path::PathBuf> = if p.is_dir() {
            std::fs::read_dir(p).unwrap().map(|e| e.unwrap().path()).collect()
        } else {
            vec![p.clone()]
        };
        for f in files.iter().filter(|f| f.extension().is_some_and(|e| e == "yaml")) {
            let text = std::fs::read_to_string(f).unwrap();
            let docs: Vec<Value> =
                serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            count += docs.iter().filter(|d| d["kind"] == "ApiDeployment").count();
        }
    }
    count
}

/// The Secrets the pattern files' headers tell users to create for the
/// HTTPS listeners and the key manager's signing key (placeholder contents:
/// kwok runs no gateway).
fn create_listener_secrets(cluster: &Cluster, ns: &str) {
    #[rustfmt::skip]
    let secrets: [&[&str]; 3] = [
        &["create", "secret", "generic", "tollgate-tls", "--type=kubernetes.io/tls", "-n", ns,
          "--from-literal=tls.crt=placeholder", "--from-literal=tls.key=placeholder"],
        &["create", "secret", "generic", "tpp-client-ca", "-n", ns, "--from-literal=ca.crt=placeholder"],
        &["create", "secret", "generic", "tollgate-signing-key", "-n", ns,
          "--from-literal=signing-key.pem=placeholder"],
    ];
    for args in secrets {
        tool(cluster, "kubectl", args);
    }
}

fn condition(obj: &Value, type_: &str) -> Option<(String, String)> {
    let c = obj["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_)?;
    Some((c["status"].as_str()?.to_string(), c["reason"].as_str()?.to_string()))
}

fn names(cluster: &Cluster, kind: &str, ns: &str) -> Vec<String> {
    let out = tool(cluster, "kubectl", &["get", kind, "-n", ns, "-o", "jsonpath={.items[*].metadata.name}"]);
    let mut v: Vec<String> = out.split_whitespace().map(str::to_string).collect();
    v.sort();
    v
}

/// Applies the pattern file with the sample policies and APIs, waits until
/// the ApiManager is Ready and every API Deployed, and returns the namespace
/// (kept alive by the returned guard) for object checks.
async fn apply_pattern(
    cluster: &Cluster,
    file: &str,
) -> (tollgate_e2e::TestNamespace, Operator, tempfile::TempDir, OperatorAccess, ArtifactVolume) {
    install_crds(&cluster.client).await;
    let ns = cluster.namespace(&format!("example-{}", file.trim_end_matches(".yaml"))).await;
    let work = tempfile::tempdir().unwrap();
    let artifacts = work.path().join("artifacts");
    let access = OperatorAccess::create(cluster, &[ns.name()], false, work.path()).await;
    let volume = ArtifactVolume::create(cluster, ns.name(), &artifacts).await;
    let operator = Operator::start(&OperatorSpec {
        kubeconfig: access.kubeconfig.clone(),
        artifact_dir: artifacts,
        namespaces: vec![ns.name().to_string()],
        identity: "op".into(),
        leader_election: false,
        work: work.path().to_path_buf(),
    });
    let root = repo_root().join("examples");
    let expected_apis = declared_apis(&[root.join(file), root.join("apis")]);
    let pattern = root.join(file).display().to_string();
    let policies = root.join("policies").display().to_string();
    let apis = root.join("apis").display().to_string();
    create_listener_secrets(cluster, ns.name());
    tool(cluster, "kubectl", &["apply", "-n", ns.name(), "-f", &pattern, "-f", &policies, "-f", &apis]);

    let mgr_ar = tollgate_resource("ApiManager").unwrap();
    let managers: Api<DynamicObject> = Api::namespaced_with(cluster.client.clone(), ns.name(), &mgr_ar);
    eventually(Duration::from_secs(90), &format!("{file}: ApiManager tollgate Ready"), || async {
        let m = serde_json::to_value(managers.get("tollgate").await.map_err(|e| e.to_string())?).unwrap();
        if ready(&m, "Ready") { Ok(()) } else { Err(format!("{}\n{}", m["status"], operator.proc.log_tail())) }
    })
    .await;
    let api_ar = tollgate_resource("ApiDeployment").unwrap();
    let apis_api: Api<DynamicObject> = Api::namespaced_with(cluster.client.clone(), ns.name(), &api_ar);
    eventually(Duration::from_secs(30), &format!("{file}: every sample API Deployed"), || async {
        let list = apis_api.list(&Default::default()).await.map_err(|e| e.to_string())?;
        let not: Vec<String> = list
            .items
            .iter()
            .map(|o| serde_json::to_value(o).unwrap())
            .filter(|v| !ready(v, "Deployed"))
            .map(|v| format!("{}: {}", v["metadata"]["name"], v["status"]["conditions"]))
            .collect();
        if list.items.len() == expected_apis && not.is_empty() {
            Ok(())
        } else {
            Err(format!("{} APIs; not deployed: {not:?}", list.items.len()))
        }
    })
    .await;
    (ns, operator, work, access, volume)
}

#[tokio::test]
async fn pattern_1_all_in_one() {
    let cluster = Cluster::connect().await;
    let (ns, op, work, _a, _v) = apply_pattern(&cluster, "pattern-1.yaml").await;
    assert_eq!(names(&cluster, "statefulsets", ns.name()), vec!["tollgate"]);
    let replicas = tool(
        &cluster,
        "kubectl",
        &["get", "sts", "tollgate", "-n", ns.name(), "-o", "jsonpath={.status.readyReplicas}"],
    );
    assert_eq!(replicas, "1");
    assert!(names(&cluster, "hpa", ns.name()).is_empty() && names(&cluster, "pdb", ns.name()).is_empty());
    assert_eq!(names(&cluster, "services", ns.name()), vec!["tollgate", "tollgate-headless"]);
    assert_oauth2_and_mtls(&cluster, ns.name(), &work.path().join("artifacts")).await;
    assert_eq!(op.unexpected_errors(), 0.0, "{}", op.proc.log_lines("failed"));
}

/// The KeyManager is trusted (its artifact is in the folder; the API that
/// names it was Deployed above), the gateway pods verify client certificates
/// with the CA Secret, and the Secrets the header names are the ones the
/// ApiManager uses.
async fn assert_oauth2_and_mtls(cluster: &Cluster, ns: &str, artifacts: &std::path::Path) {
    let km_ar = tollgate_resource("KeyManager").unwrap();
    let kms: Api<DynamicObject> = Api::namespaced_with(cluster.client.clone(), ns, &km_ar);
    let km = serde_json::to_value(kms.get("bank-idp").await.unwrap()).unwrap();
    assert_eq!(condition(&km, "Accepted"), Some(("True".into(), "Accepted".into())), "{}", km["status"]);
    let km_file = artifacts.join(ns).join(format!("tollgate/keymanagers/{ns}_bank-idp.yaml"));
    assert!(km_file.is_file(), "{} missing", km_file.display());
    let mgr_ar = tollgate_resource("ApiManager").unwrap();
    let managers: Api<DynamicObject> = Api::namespaced_with(cluster.client.clone(), ns, &mgr_ar);
    let m = serde_json::to_value(managers.get("tollgate").await.unwrap()).unwrap();
    assert_eq!(condition(&m, "Degraded"), Some(("False".into(), "AsExpected".into())), "{}", m["status"]);
    let args = tool(
        cluster,
        "kubectl",
        &["get", "sts", "tollgate", "-n", ns, "-o", "jsonpath={.spec.template.spec.containers[0].args}"],
    );
    assert!(
        args.contains("--client-ca=/etc/tollgate/client-ca/ca.crt") && args.contains("--client-auth=optional"),
        "{args}"
    );
}

#[tokio::test]
async fn pattern_1_ha() {
    let cluster = Cluster::connect().await;
    let (ns, op, work, _a, _v) = apply_pattern(&cluster, "pattern-1-ha.yaml").await;
    let replicas = tool(
        &cluster,
        "kubectl",
        &["get", "sts", "tollgate", "-n", ns.name(), "-o", "jsonpath={.status.readyReplicas}"],
    );
    assert_eq!(replicas, "2");
    assert_eq!(names(&cluster, "pdb", ns.name()), vec!["tollgate"]);
    let env = tool(
        &cluster,
        "kubectl",
        &["get", "sts", "tollgate", "-n", ns.name(), "-o", "jsonpath={.spec.template.spec.containers[0].env}"],
    );
    assert!(env.contains("tollgate-db") && env.contains("tollgate-redis") && !env.contains("postgres://"), "{env}");
    assert_oauth2_and_mtls(&cluster, ns.name(), &work.path().join("artifacts")).await;
    assert_eq!(op.unexpected_errors(), 0.0, "{}", op.proc.log_lines("failed"));
}

#[tokio::test]
async fn pattern_2_with_analytics_and_autoscaling() {
    let cluster = Cluster::connect().await;
    let (ns, op, _w, _a, _v) = apply_pattern(&cluster, "pattern-2.yaml").await;
    assert_eq!(names(&cluster, "hpa", ns.name()), vec!["tollgate"]);
    let args = tool(
        &cluster,
        "kubectl",
        &["get", "sts", "tollgate", "-n", ns.name(), "-o", "jsonpath={.spec.template.spec.containers[0].args}"],
    );
    assert!(args.contains("analytics"), "{args}");
    // The HPA brings the StatefulSet to its minimum of 2.
    let replicas = tool(
        &cluster,
        "kubectl",
        &["get", "sts", "tollgate", "-n", ns.name(), "-o", "jsonpath={.status.readyReplicas}"],
    );
    assert_eq!(replicas, "2");
    assert_eq!(op.unexpected_errors(), 0.0, "{}", op.proc.log_lines("failed"));
}

#[tokio::test]
async fn pattern_3_distributed_gateways() {
    let cluster = Cluster::connect().await;
    let (ns, op, _w, _a, _v) = apply_pattern(&cluster, "pattern-3.yaml").await;
    assert_eq!(
        names(&cluster, "statefulsets", ns.name()),
        vec!["tollgate-control-plane", "tollgate-gateway-production", "tollgate-gateway-sandbox"]
    );
    assert_eq!(names(&cluster, "hpa", ns.name()), vec!["tollgate-gateway-production", "tollgate-gateway-sandbox"]);
    assert_eq!(
        names(&cluster, "pdb", ns.name()),
        vec!["tollgate-control-plane", "tollgate-gateway-production", "tollgate-gateway-sandbox"]
    );
    // payments targets only the production group.
    let folder = _w.path().join("artifacts").join(ns.name()).join("tollgate/apis");
    let text = std::fs::read_to_string(folder.join(format!("{}_payments-v3-1.yaml", ns.name()))).unwrap();
    assert!(text.contains("production"), "{text}");
    assert_eq!(op.unexpected_errors(), 0.0, "{}", op.proc.log_lines("failed"));
}
