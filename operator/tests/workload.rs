//! The objects each deployment pattern produces.

use serde_json::{Value, json};
use tollgate_crds::ApiManager;
use tollgate_operator::workload::{self, Desired, WorkloadConfig};

fn manager(spec: Value) -> ApiManager {
    serde_json::from_value(json!({
        "apiVersion": "tollgate.dev/v1alpha1", "kind": "ApiManager",
        "metadata": { "name": "apim", "namespace": "banking", "uid": "u-1" },
        "spec": spec,
    }))
    .unwrap()
}

fn cfg() -> WorkloadConfig {
    WorkloadConfig {
        image_repository: "registry.local/tollgate-gateway".into(),
        image_tag: "1.0".into(),
        artifact_claim: "tollgate-artifacts".into(),
        drain_seconds: 20,
    }
}

fn json_of(d: &Desired) -> Value {
    json!({ "sts": d.stateful_sets, "svc": d.services, "hpa": d.autoscalers, "pdb": d.disruption_budgets })
}

fn names<T: kube::Resource>(objs: &[T]) -> Vec<String> {
    objs.iter().map(|o| o.meta().name.clone().unwrap()).collect()
}

#[test]
fn all_in_one_is_one_pod_with_every_role_port_probe_and_volume() {
    let d = workload::desired(&manager(json!({ "pattern": "AllInOne" })), &cfg());
    assert_eq!(names(&d.stateful_sets), vec!["apim"]);
    assert_eq!(names(&d.services), vec!["apim-headless", "apim"]);
    assert!(d.autoscalers.is_empty() && d.disruption_budgets.is_empty());
    let sts = serde_json::to_value(&d.stateful_sets[0]).unwrap();
    assert_eq!(sts["spec"]["replicas"], 1);
    assert_eq!(sts["metadata"]["ownerReferences"][0]["uid"], "u-1");
    assert_eq!(sts["metadata"]["ownerReferences"][0]["controller"], true);
    let templates: Vec<&str> = sts["spec"]["volumeClaimTemplates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(templates, vec!["search-index", "database"]);
    assert_eq!(sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"], "1Gi");
    let pod = &sts["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(c["image"], "registry.local/tollgate-gateway:1.0");
    let ports: Vec<(String, i64)> = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap().to_string(), p["containerPort"].as_i64().unwrap()))
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
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    let args: Vec<&str> = c["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert!(args.contains(&"--roles=gateway,store,key-manager"), "{args:?}");
    assert!(args.contains(&"--config-dir=/etc/tollgate/artifacts"));
    let artifacts = c["volumeMounts"].as_array().unwrap().iter().find(|m| m["name"] == "artifacts").unwrap();
    assert_eq!(artifacts["subPath"], "banking/apim");
    assert_eq!(artifacts["readOnly"], true);
    let claim = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "artifacts").unwrap();
    assert_eq!(claim["persistentVolumeClaim"]["claimName"], "tollgate-artifacts");
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(pod["terminationGracePeriodSeconds"], 30, "preStop 5 s + drain 20 s + 5 s margin");
    assert_eq!(c["lifecycle"]["preStop"]["sleep"]["seconds"], 5);
    assert_eq!(d.services[0].spec.as_ref().unwrap().cluster_ip.as_deref(), Some("None"));
}

#[test]
fn high_availability_injects_secrets_by_reference_and_adds_a_pdb() {
    let m = manager(json!({
        "pattern": "HighAvailability",
        "controlPlane": { "replicas": 3 },
        "database": { "external": { "urlSecretRef": { "name": "apim-db", "key": "url" } } },
        "trafficManager": { "redis": { "urlSecretRef": { "name": "apim-redis", "key": "url" } } },
        "analytics": { "enabled": true },
        "persistence": { "database": { "size": "5Gi", "storageClassName": "fast" }, "searchIndex": { "size": "2Gi" } },
    }));
    let d = workload::desired(&m, &cfg());
    let v = json_of(&d);
    assert_eq!(v["sts"][0]["spec"]["replicas"], 3);
    let env = v["sts"][0]["spec"]["template"]["spec"]["containers"][0]["env"].as_array().unwrap();
    let db = env.iter().find(|e| e["name"] == "TOLLGATE_DATABASE_URL").unwrap();
    assert_eq!(db["valueFrom"]["secretKeyRef"], json!({ "name": "apim-db", "key": "url", "optional": false }));
    assert!(db.get("value").is_none(), "secret values are never copied");
    assert!(env.iter().any(|e| e["name"] == "TOLLGATE_REDIS_URL"));
    let value = |n: &str| env.iter().find(|e| e["name"] == n).map(|e| e["value"].clone());
    assert_eq!(value("TOLLGATE_REDIS_FAILURE_MODE"), Some(json!("open")), "the default failure mode");
    assert_eq!(value("TOLLGATE_REDIS_KEY_PREFIX"), Some(json!("tollgate:banking/apim")));
    let args = v["sts"][0]["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(args.contains("--roles=gateway,store,key-manager,analytics"));
    assert_eq!(v["sts"][0]["spec"]["volumeClaimTemplates"][1]["spec"]["storageClassName"], "fast");
    assert_eq!(v["sts"][0]["spec"]["volumeClaimTemplates"][1]["spec"]["resources"]["requests"]["storage"], "5Gi");
    assert_eq!(names(&d.disruption_budgets), vec!["apim"]);
    assert_eq!(v["pdb"][0]["spec"]["maxUnavailable"], 1);
    let secrets: Vec<String> = workload::secret_refs(&m).into_iter().map(|(_, r)| r.name).collect();
    assert_eq!(secrets, vec!["apim-db", "apim-redis"]);
}

#[test]
fn autoscaling_leaves_replicas_to_the_hpa() {
    let m = manager(json!({
        "pattern": "HighAvailability",
        "controlPlane": { "autoscaling": { "minReplicas": 2, "maxReplicas": 6, "targetCPUUtilizationPercentage": 60, "targetRequestsPerSecond": 500 } },
        "database": { "external": { "urlSecretRef": { "name": "db", "key": "url" } } },
        "trafficManager": { "redis": { "urlSecretRef": { "name": "redis", "key": "url" } } },
    }));
    let d = workload::desired(&m, &cfg());
    let v = json_of(&d);
    assert!(v["sts"][0]["spec"].get("replicas").is_none(), "no replicas field: the HPA owns it");
    assert_eq!(
        v["hpa"][0]["spec"]["scaleTargetRef"],
        json!({ "apiVersion": "apps/v1", "kind": "StatefulSet", "name": "apim" })
    );
    assert_eq!(
        (v["hpa"][0]["spec"]["minReplicas"].as_i64(), v["hpa"][0]["spec"]["maxReplicas"].as_i64()),
        (Some(2), Some(6))
    );
    assert_eq!(v["hpa"][0]["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"], 60);
    assert_eq!(v["hpa"][0]["spec"]["metrics"][1]["pods"]["metric"]["name"], "tollgate_requests_per_second");
    assert_eq!(v["hpa"][0]["spec"]["metrics"][1]["pods"]["target"]["averageValue"], "500");
}

#[test]
fn distributed_gateways_get_one_statefulset_per_group() {
    let m = manager(json!({
        "pattern": "DistributedGateways",
        "controlPlane": { "replicas": 2 },
        "gateways": [
            { "name": "production", "autoscaling": { "minReplicas": 2, "maxReplicas": 10, "targetCPUUtilizationPercentage": 70 } },
            { "name": "sandbox", "replicas": 1 },
        ],
        "database": { "external": { "urlSecretRef": { "name": "db", "key": "url" } } },
        "trafficManager": { "redis": { "urlSecretRef": { "name": "redis", "key": "url" } } },
    }));
    let d = workload::desired(&m, &cfg());
    assert_eq!(names(&d.stateful_sets), vec!["apim-control-plane", "apim-gateway-production", "apim-gateway-sandbox"]);
    assert_eq!(names(&d.autoscalers), vec!["apim-gateway-production"]);
    assert_eq!(names(&d.disruption_budgets), vec!["apim-control-plane", "apim-gateway-production"]);
    let v = json_of(&d);
    let args = |i: usize| v["sts"][i]["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(args(0).contains("--roles=store,key-manager") && !args(0).contains("gateway-group"));
    assert!(args(1).contains("--roles=gateway") && args(1).contains("--gateway-group=production"));
    assert!(args(2).contains("--gateway-group=sandbox"));
    assert_eq!(v["sts"][2]["spec"]["replicas"], 1);
    // Selectors of different groups never overlap.
    let sel = |i: usize| v["sts"][i]["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"].clone();
    assert_eq!(
        (sel(0), sel(1), sel(2)),
        (json!("control-plane"), json!("gateway-production"), json!("gateway-sandbox"))
    );
}

#[test]
fn admin_token_secret_is_mounted_as_a_file() {
    let m = manager(json!({ "pattern": "AllInOne", "adminTokenSecretRef": { "name": "apim-admin", "key": "token" } }));
    let d = workload::desired(&m, &cfg());
    let v = json_of(&d);
    let pod = &v["sts"][0]["spec"]["template"]["spec"];
    assert!(pod["containers"][0]["args"].to_string().contains("--admin-token-file=/etc/tollgate/admin/token"));
    let vol = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "admin-token").unwrap();
    assert_eq!(vol["secret"]["secretName"], "apim-admin");
    assert_eq!(vol["secret"]["items"][0], json!({ "key": "token", "path": "token" }));
    let refs: Vec<String> = workload::secret_refs(&m).into_iter().map(|(_, r)| r.name).collect();
    assert_eq!(refs, vec!["apim-admin"], "a missing token Secret is reported");
}

#[test]
fn tls_secret_is_mounted_and_passed_to_the_gateway() {
    let m = manager(
        json!({ "pattern": "AllInOne", "image": { "repository": "mine/gw", "tag": "2.0", "pullPolicy": "Always" },
                            "listeners": { "tlsSecretName": "apim-tls", "http": 18280 } }),
    );
    let d = workload::desired(&m, &cfg());
    let v = json_of(&d);
    let c = &v["sts"][0]["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], "mine/gw:2.0");
    assert_eq!(c["imagePullPolicy"], "Always");
    let args = c["args"].to_string();
    assert!(args.contains("--tls-cert=/etc/tollgate/tls/tls.crt") && args.contains("--http=0.0.0.0:18280"));
    let vols = v["sts"][0]["spec"]["template"]["spec"]["volumes"].to_string();
    assert!(vols.contains("apim-tls"));
    assert_eq!(v["svc"][1]["spec"]["ports"][0]["port"], 18280);
}

#[test]
fn client_ca_secret_is_mounted_and_client_auth_passed_to_the_gateway() {
    for (mode, flag) in [("None", "none"), ("Optional", "optional"), ("Required", "required")] {
        let m = manager(json!({ "pattern": "DistributedGateways", "gateways": [{ "name": "production" }],
                                "listeners": { "tlsSecretName": "apim-tls", "clientCaSecretName": "tpp-ca",
                                               "clientAuth": mode } }));
        let d = workload::desired(&m, &cfg());
        assert_eq!(d.stateful_sets.len(), 2);
        // Every pod that terminates TLS verifies clients the same way.
        for sts in &d.stateful_sets {
            let pod = serde_json::to_value(sts).unwrap()["spec"]["template"]["spec"].clone();
            let c = &pod["containers"][0];
            let args: Vec<&str> = c["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
            assert!(args.contains(&"--client-ca=/etc/tollgate/client-ca/ca.crt"), "{args:?}");
            assert!(args.contains(&format!("--client-auth={flag}").as_str()), "{mode}: {args:?}");
            let mount = c["volumeMounts"].as_array().unwrap().iter().find(|v| v["name"] == "client-ca").unwrap();
            assert_eq!(mount["mountPath"], "/etc/tollgate/client-ca");
            assert_eq!(mount["readOnly"], true);
            let vol = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "client-ca").unwrap();
            assert_eq!(vol["secret"]["secretName"], "tpp-ca");
            assert_eq!(vol["secret"]["items"], json!([{ "key": "ca.crt", "path": "ca.crt" }]), "only the CA bundle");
        }
        let refs: Vec<(&str, String, String)> =
            workload::secret_refs(&m).into_iter().map(|(f, r)| (f, r.name, r.key)).collect();
        assert!(
            refs.contains(&("listeners.clientCaSecretName", "tpp-ca".into(), "ca.crt".into())),
            "a missing client CA Secret is reported: {refs:?}"
        );
    }
}

#[test]
fn without_a_client_ca_no_client_auth_flags_or_volume() {
    // clientAuth alone means nothing without a CA to verify against.
    let m = manager(
        json!({ "pattern": "AllInOne", "listeners": { "tlsSecretName": "apim-tls", "clientAuth": "Required" } }),
    );
    let v = json_of(&workload::desired(&m, &cfg()));
    let pod = &v["sts"][0]["spec"]["template"]["spec"];
    let args = pod["containers"][0]["args"].to_string();
    assert!(!args.contains("--client-ca") && !args.contains("--client-auth"), "{args}");
    assert!(!pod["volumes"].to_string().contains("client-ca"));
}
