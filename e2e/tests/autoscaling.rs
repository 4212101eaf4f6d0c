//! Gateway autoscaling with simulated load: kwok reports the CPU usage a pod
//! annotation asks for, metrics-server serves it, and the HPA the operator
//! created scales the gateway StatefulSet up from its minimum. The operator
//! then leaves the new replica count alone.
//!
//! Needs kwok nodes and metrics-server (the local control plane started by
//! `make e2e`, i.e. `e2e/cluster/up.sh --metrics`).

use std::time::Duration;

use k8s_openapi::api::{apps::v1::StatefulSet, core::v1::Pod, core::v1::Secret};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use tollgate_e2e::{
    Cluster, apply_manifest, install_crds,
    stack::{ArtifactVolume, Operator, OperatorAccess, OperatorSpec, eventually, run_tool},
};

fn manager(analytics: bool) -> serde_json::Value {
    json!({ "apiVersion": "tollgate.dev/v1alpha1", "kind": "ApiManager", "metadata": { "name": "apim" },
            "spec": { "pattern": "HighAvailability",
                      "analytics": { "enabled": analytics },
                      "controlPlane": {
                          "autoscaling": { "minReplicas": 1, "maxReplicas": 3, "targetCPUUtilizationPercentage": 50 },
                          "resources": { "requests": { "cpu": "100m", "memory": "64Mi" } } },
                      "database": { "external": { "urlSecretRef": { "name": "db", "key": "url" } } },
                      "trafficManager": { "redis": { "urlSecretRef": { "name": "redis", "key": "url" } } } } })
}

#[tokio::test]
async fn hpa_scales_the_gateways_up_under_cpu_load_and_the_operator_keeps_out() {
    let cluster = Cluster::connect().await;
    let (ok, out) = run_tool(
        &cluster,
        "kubectl",
        &[
            "get",
            "apiservice",
            "v1beta1.metrics.k8s.io",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Available\")].status}",
        ],
        None,
    );
    assert!(
        ok && out.trim() == "True",
        "the metrics API is not available ({out}); this test needs kwok nodes and metrics-server: \
         run it on the local control plane (`make e2e`), or skip it with E2E_ARGS='--skip hpa_scales'"
    );
    install_crds(&cluster.client).await;
    let ns = cluster.namespace("autoscaling").await;
    let ns = ns.name().to_string();
    let client = cluster.client.clone();
    let work = tempfile::tempdir().unwrap();
    let access = OperatorAccess::create(&cluster, &[&ns], false, work.path()).await;
    let _volume = ArtifactVolume::create(&cluster, &ns, &work.path().join("artifacts")).await;
    let operator = Operator::start(&OperatorSpec {
        kubeconfig: access.kubeconfig.clone(),
        artifact_dir: work.path().join("artifacts"),
        namespaces: vec![ns.clone()],
        identity: "op".into(),
        leader_election: false,
        work: work.path().to_path_buf(),
    });
    for name in ["db", "redis"] {
        let s: Secret =
            serde_json::from_value(json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": name },
                                                        "stringData": { "url": "redis://127.0.0.1:1" } }))
            .unwrap();
        Api::<Secret>::namespaced(client.clone(), &ns).create(&PostParams::default(), &s).await.unwrap();
    }
    apply_manifest(&client, &ns, &manager(false)).await.expect("apimanager");

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    eventually(Duration::from_secs(60), "pod apim-0 Ready", || async {
        let p = pods.get("apim-0").await.map_err(|e| format!("{e}\n{}", operator.proc.log_tail()))?;
        let ready = p
            .status
            .and_then(|s| s.conditions)
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        if ready { Ok(()) } else { Err("not Ready".into()) }
    })
    .await;
    // 400m of CPU against a 100m request: 400 % of a 50 % target.
    pods.patch(
        "apim-0",
        &PatchParams::default(),
        &Patch::Merge(json!({ "metadata": { "annotations": { "kwok.x-k8s.io/usage-cpu": "400m" } } })),
    )
    .await
    .expect("annotate");

    let stss: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    eventually(Duration::from_secs(180), "the HPA scales apim from 1 to 3", || async {
        let s = stss.get("apim").await.map_err(|e| e.to_string())?;
        let want = s.spec.as_ref().and_then(|s| s.replicas);
        if want == Some(3) {
            Ok(())
        } else {
            let (_, hpa) = run_tool(&cluster, "kubectl", &["get", "hpa", "apim", "-n", &ns], None);
            Err(format!("replicas {want:?}\n{hpa}"))
        }
    })
    .await;

    // A spec change makes the operator re-apply the StatefulSet; replicas stay the HPA's.
    apply_manifest(&client, &ns, &manager(true)).await.expect("apimanager update");
    eventually(Duration::from_secs(30), "analytics rolled into the StatefulSet", || async {
        let s = stss.get("apim").await.map_err(|e| e.to_string())?;
        let args =
            s.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0].args.clone().unwrap_or_default();
        if args.iter().any(|a| a.contains("analytics")) { Ok(()) } else { Err(format!("{args:?}")) }
    })
    .await;
    assert_eq!(
        stss.get("apim").await.unwrap().spec.unwrap().replicas,
        Some(3),
        "the operator left replicas to the HPA"
    );
    assert_eq!(operator.unexpected_errors(), 0.0, "{}", operator.proc.log_lines("failed"));
}
