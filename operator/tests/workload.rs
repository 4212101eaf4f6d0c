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
            { "name": "sandbox", "replicas": 1, "environment": "Sandbox" },
            { "name": "partners", "replicas": 1, "environment": "Both" },
        ],
        "database": { "external": { "urlSecretRef": { "name": "db", "key": "url" } } },
        "trafficManager": { "redis": { "urlSecretRef": { "name": "redis", "key": "url" } } },
    }));
    let d = workload::desired(&m, &cfg());
    // Each group accepts its own environment's credentials (production by default).
    let v = json_of(&d);
    let environments: Vec<String> = (0..4).map(|i| flags(&args_of(&v["sts"][i]), "--environments").join(" ")).collect();
    assert_eq!(environments, ["", "production", "sandbox", "production,sandbox"]);
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
    assert!(!args.contains("--key-manager-ca"), "the key manager runs in this pod");
}

#[test]
fn gateway_groups_trust_the_control_planes_listener_ca_for_its_keys() {
    let spec = |listeners: Value| {
        json!({ "pattern": "DistributedGateways", "gateways": [{ "name": "production" }], "listeners": listeners,
                "database": { "external": { "urlSecretRef": { "name": "db", "key": "url" } } },
                "trafficManager": { "redis": { "urlSecretRef": { "name": "redis", "key": "url" } } } })
    };
    let v = json_of(&workload::desired(&manager(spec(json!({ "tlsSecretName": "apim-tls" }))), &cfg()));
    let args = |i: usize| v["sts"][i]["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(
        args(1).contains("--key-manager-jwks-uri=https://apim-control-plane.banking.svc:9443/oauth2/jwks"),
        "{}",
        args(1)
    );
    assert!(args(1).contains("--key-manager-ca=/etc/tollgate/tls/ca.crt"), "{}", args(1));
    assert!(!args(0).contains("--key-manager-ca"), "the control plane fetches no key set");
    let plain = json_of(&workload::desired(&manager(spec(json!({}))), &cfg()));
    let args = plain["sts"][1]["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(args.contains("--key-manager-jwks-uri=http://") && !args.contains("--key-manager-ca"), "{args}");
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

fn args_of(sts: &Value) -> Vec<String> {
    sts["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

fn flags<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
    args.iter().filter_map(|a| a.strip_prefix(&format!("{flag}="))).collect()
}

fn named<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list.as_array().unwrap().iter().find(|v| v["name"] == name)
}

const DB_AND_REDIS: &str = r#"{ "database": { "external": { "urlSecretRef": { "name": "db", "key": "url" } } },
    "trafficManager": { "redis": { "urlSecretRef": { "name": "redis", "key": "url" } } } }"#;

fn with_db_and_redis(mut spec: Value) -> Value {
    let extra: Value = serde_json::from_str(DB_AND_REDIS).unwrap();
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    spec
}

#[test]
fn all_in_one_key_manager_defaults_to_the_service_issuer_and_a_key_folder_that_survives_restarts() {
    let m = manager(json!({ "pattern": "AllInOne" }));
    let v = json_of(&workload::desired(&m, &cfg()));
    let sts = &v["sts"][0];
    let args = args_of(sts);
    assert_eq!(flags(&args, "--issuer"), ["http://apim.banking.svc:9763/oauth2"], "{args:?}");
    assert!(flags(&args, "--signing-key-file").is_empty(), "no Secret: the pod generates its key");
    assert!(flags(&args, "--key-manager-jwks-uri").is_empty(), "the pod runs the key manager itself");
    assert!(flags(&args, "--ssa-jwks").is_empty() && flags(&args, "--token-ttl-seconds").is_empty());
    // The generated key lives on the pod's database claim (writable, kept
    // across restarts), never in an emptyDir that a restart empties.
    let pod = &sts["spec"]["template"]["spec"];
    assert_eq!(flags(&args, "--key-manager-dir"), ["/var/lib/tollgate/database/key-manager"]);
    let database = named(&pod["containers"][0]["volumeMounts"], "database").expect("database mount");
    assert_eq!(database["mountPath"], "/var/lib/tollgate/database");
    assert!(database.get("readOnly").is_none_or(|r| r == false));
    assert!(named(&pod["volumes"], "database").is_none(), "a claim template, not a pod volume");
    let templates = sts["spec"]["volumeClaimTemplates"].as_array().unwrap();
    assert!(templates.iter().any(|t| t["metadata"]["name"] == "database"), "{templates:?}");
    assert!(named(&pod["volumes"], "key-manager").is_none());
    assert!(named(&pod["volumes"], "signing-keys").is_none());
    assert_eq!(workload::unshared_signing_key(&m), None, "one pod: its own key is the only key");
    assert_eq!(workload::issuer(&m), "http://apim.banking.svc:9763/oauth2");

    // With a certificate the default issuer is the TLS management listener.
    let tls =
        manager(json!({ "pattern": "AllInOne", "listeners": { "tlsSecretName": "apim-tls", "managementTls": 19443 } }));
    let args = args_of(&json_of(&workload::desired(&tls, &cfg()))["sts"][0]);
    assert_eq!(flags(&args, "--issuer"), ["https://apim.banking.svc:19443/oauth2"]);
}

#[test]
fn high_availability_mounts_the_listed_signing_keys_and_passes_the_key_manager_settings() {
    let m = manager(with_db_and_redis(json!({
        "pattern": "HighAvailability",
        "controlPlane": { "replicas": 3 },
        "keyManager": {
            "issuer": "https://api.bank.example/oauth2",
            "signingKeySecretName": "apim-signing",
            "signingKeys": ["next.pem", "current.pem"],
            "ssaJwksConfigMapRef": { "name": "ob-directory", "key": "ssa.jwks" },
            "tokenTtlSeconds": 300,
        },
    })));
    let v = json_of(&workload::desired(&m, &cfg()));
    let args = args_of(&v["sts"][0]);
    assert_eq!(flags(&args, "--issuer"), ["https://api.bank.example/oauth2"]);
    assert_eq!(
        flags(&args, "--signing-key-file"),
        ["/etc/tollgate/signing-keys/next.pem", "/etc/tollgate/signing-keys/current.pem"],
        "one flag per listed key, in order: the first signs"
    );
    assert!(flags(&args, "--key-manager-dir").is_empty(), "nothing is generated");
    assert_eq!(flags(&args, "--ssa-jwks"), ["/etc/tollgate/ssa-jwks/jwks.json"]);
    assert_eq!(flags(&args, "--token-ttl-seconds"), ["300"]);
    assert!(flags(&args, "--key-manager-jwks-uri").is_empty());
    let pod = &v["sts"][0]["spec"]["template"]["spec"];
    let mounts = &pod["containers"][0]["volumeMounts"];
    let keys = named(mounts, "signing-keys").expect("signing-keys mount");
    assert_eq!((&keys["mountPath"], &keys["readOnly"]), (&json!("/etc/tollgate/signing-keys"), &json!(true)));
    assert_eq!(named(mounts, "ssa-jwks").unwrap()["readOnly"], true);
    let vol = named(&pod["volumes"], "signing-keys").unwrap();
    assert_eq!(vol["secret"]["secretName"], "apim-signing");
    assert_eq!(
        vol["secret"]["items"],
        json!([{ "key": "next.pem", "path": "next.pem" }, { "key": "current.pem", "path": "current.pem" }]),
        "only the listed keys are mounted"
    );
    assert_eq!(vol["secret"]["defaultMode"], 0o440);
    let ssa = named(&pod["volumes"], "ssa-jwks").unwrap();
    assert_eq!(
        ssa["configMap"],
        json!({ "name": "ob-directory", "items": [{ "key": "ssa.jwks", "path": "jwks.json" }] })
    );

    let refs: Vec<(&str, String, String)> =
        workload::secret_refs(&m).into_iter().map(|(f, r)| (f, r.name, r.key)).collect();
    for key in ["next.pem", "current.pem"] {
        assert!(
            refs.contains(&("keyManager.signingKeySecretName", "apim-signing".into(), key.into())),
            "a missing signing key is reported: {refs:?}"
        );
    }
    let maps: Vec<(&str, String, String)> =
        workload::config_map_refs(&m).into_iter().map(|(f, r)| (f, r.name, r.key)).collect();
    assert_eq!(maps, [("keyManager.ssaJwksConfigMapRef", "ob-directory".into(), "ssa.jwks".into())]);
    assert_eq!(workload::unshared_signing_key(&m), None, "every pod signs with the shared key");
}

#[test]
fn the_default_signing_key_is_signing_key_pem() {
    let m = manager(with_db_and_redis(json!({
        "pattern": "HighAvailability", "keyManager": { "signingKeySecretName": "apim-signing" },
    })));
    let args = args_of(&json_of(&workload::desired(&m, &cfg()))["sts"][0]);
    assert_eq!(flags(&args, "--signing-key-file"), ["/etc/tollgate/signing-keys/signing-key.pem"]);
    let keys: Vec<String> = workload::secret_refs(&m)
        .into_iter()
        .filter(|(f, _)| f.starts_with("keyManager"))
        .map(|(_, r)| r.key)
        .collect();
    assert_eq!(keys, ["signing-key.pem"]);
    assert!(workload::config_map_refs(&m).is_empty());
}

#[test]
fn several_key_manager_pods_without_a_shared_key_are_reported() {
    let ha = manager(with_db_and_redis(json!({ "pattern": "HighAvailability" })));
    let why = workload::unshared_signing_key(&ha).expect("HighAvailability without a signing key");
    assert!(why.contains("keyManager.signingKeySecretName"), "{why}");
    assert!(why.contains("openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256"), "{why}");
    assert!(why.contains("kubectl -n banking create secret generic apim-signing-key"), "{why}");
    // Still rolled out: the pods run, each with its own key folder.
    let d = workload::desired(&ha, &cfg());
    assert_eq!(d.stateful_sets.len(), 1);

    // An autoscaled key manager counts its most pods.
    let scaled = manager(with_db_and_redis(json!({ "pattern": "HighAvailability",
        "controlPlane": { "autoscaling": { "minReplicas": 1, "maxReplicas": 1 } } })));
    assert_eq!(workload::unshared_signing_key(&scaled), None, "at most one pod");
    let scaled = manager(with_db_and_redis(json!({ "pattern": "HighAvailability",
        "controlPlane": { "autoscaling": { "minReplicas": 1, "maxReplicas": 4 } } })));
    assert!(workload::unshared_signing_key(&scaled).is_some());

    // DistributedGateways: only the control plane's pods count, not the gateways'.
    let one_cp = manager(with_db_and_redis(json!({ "pattern": "DistributedGateways",
        "controlPlane": { "replicas": 1 }, "gateways": [{ "name": "production", "replicas": 5 }] })));
    assert_eq!(workload::unshared_signing_key(&one_cp), None);
    let two_cp = manager(with_db_and_redis(json!({ "pattern": "DistributedGateways",
        "controlPlane": { "replicas": 2 }, "gateways": [{ "name": "production" }] })));
    let why = workload::unshared_signing_key(&two_cp).unwrap();
    assert!(why.contains("apim-control-plane"), "{why}");
}

#[test]
fn distributed_gateways_trust_the_control_plane_key_manager_through_its_service() {
    for (listeners, base) in [
        (json!({}), "http://apim-control-plane.banking.svc:9763"),
        (json!({ "tlsSecretName": "apim-tls" }), "https://apim-control-plane.banking.svc:9443"),
    ] {
        let m = manager(with_db_and_redis(json!({
            "pattern": "DistributedGateways",
            "listeners": listeners,
            "gateways": [{ "name": "production" }, { "name": "sandbox" }],
            "keyManager": { "signingKeySecretName": "apim-signing", "tokenTtlSeconds": 600 },
        })));
        let v = json_of(&workload::desired(&m, &cfg()));
        let issuer = format!("{base}/oauth2");
        // The control plane runs the key manager.
        let cp = args_of(&v["sts"][0]);
        assert!(cp.contains(&"--roles=store,key-manager".to_string()), "{cp:?}");
        assert_eq!(flags(&cp, "--issuer"), [issuer.as_str()]);
        assert_eq!(flags(&cp, "--signing-key-file"), ["/etc/tollgate/signing-keys/signing-key.pem"]);
        assert_eq!(flags(&cp, "--token-ttl-seconds"), ["600"]);
        assert!(flags(&cp, "--key-manager-jwks-uri").is_empty());
        // Gateway groups: the same issuer, its JWKS from the control-plane Service, no private keys.
        for i in [1, 2] {
            let sts = &v["sts"][i];
            let args = args_of(sts);
            assert!(args.contains(&"--roles=gateway".to_string()), "{args:?}");
            assert_eq!(flags(&args, "--issuer"), [issuer.as_str()], "{args:?}");
            // The Service's management listener: over TLS with a listener
            // certificate, verified with the CA of its Secret.
            assert_eq!(flags(&args, "--key-manager-jwks-uri"), [format!("{base}/oauth2/jwks")]);
            let ca: &[&str] = if base.starts_with("https") { &["/etc/tollgate/tls/ca.crt"] } else { &[] };
            assert_eq!(flags(&args, "--key-manager-ca"), ca);
            assert!(flags(&args, "--signing-key-file").is_empty() && flags(&args, "--token-ttl-seconds").is_empty());
            let pod = &sts["spec"]["template"]["spec"];
            assert!(named(&pod["volumes"], "signing-keys").is_none(), "gateway pods never get the private keys");
            assert!(named(&pod["volumes"], "key-manager").is_none());
        }
        assert_eq!(workload::issuer(&m), issuer);
        assert_eq!(workload::key_manager_jwks_uri(&m), format!("{base}/oauth2/jwks"));
    }

    // An explicit issuer changes the `iss`, not where gateways fetch the keys.
    let m = manager(with_db_and_redis(json!({
        "pattern": "DistributedGateways", "gateways": [{ "name": "production" }],
        "keyManager": { "issuer": "https://api.bank.example/oauth2" },
    })));
    let v = json_of(&workload::desired(&m, &cfg()));
    let gw = args_of(&v["sts"][1]);
    assert_eq!(flags(&gw, "--issuer"), ["https://api.bank.example/oauth2"]);
    assert_eq!(flags(&gw, "--key-manager-jwks-uri"), ["http://apim-control-plane.banking.svc:9763/oauth2/jwks"]);
}

#[test]
fn gateway_groups_get_the_signing_keys_only_when_they_sign_answers() {
    for sign in [false, true] {
        let m = manager(with_db_and_redis(json!({
            "pattern": "DistributedGateways", "gateways": [{ "name": "production" }],
            "keyManager": { "signingKeySecretName": "apim-signing", "signingKeys": ["new.pem", "old.pem"],
                            "gatewaysSignResponses": sign },
        })));
        let v = json_of(&workload::desired(&m, &cfg()));
        let gw = &v["sts"][1];
        let args = args_of(gw);
        assert!(args.contains(&"--roles=gateway".to_string()), "{args:?}");
        let pod = &gw["spec"]["template"]["spec"];
        if sign {
            assert_eq!(
                flags(&args, "--signing-key-file"),
                ["/etc/tollgate/signing-keys/new.pem", "/etc/tollgate/signing-keys/old.pem"]
            );
            let vol = named(&pod["volumes"], "signing-keys").expect("the Secret is mounted");
            assert_eq!(vol["secret"]["secretName"], "apim-signing");
            assert_eq!(vol["secret"]["defaultMode"], 0o440);
        } else {
            assert!(flags(&args, "--signing-key-file").is_empty());
            assert!(named(&pod["volumes"], "signing-keys").is_none());
        }
        assert!(flags(&args, "--token-ttl-seconds").is_empty(), "never the key manager's own settings");
    }
}

#[test]
fn analytics_retention_goes_to_every_pod_and_the_role_to_the_control_plane() {
    let m = manager(with_db_and_redis(json!({
        "pattern": "DistributedGateways", "gateways": [{ "name": "production" }],
        "analytics": { "enabled": true, "retention": { "minuteDays": 3, "dayDays": 365 },
                       "otlpEndpoint": "http://otel-collector.monitoring.svc:4318" },
    })));
    let v = json_of(&workload::desired(&m, &cfg()));
    for (i, roles) in [(0, "--roles=store,key-manager,analytics"), (1, "--roles=gateway")] {
        let args = args_of(&v["sts"][i]);
        assert!(args.contains(&roles.to_string()), "{args:?}");
        assert_eq!(flags(&args, "--analytics-minute-retention-days"), ["3"]);
        assert_eq!(flags(&args, "--analytics-day-retention-days"), ["365"]);
        assert!(flags(&args, "--analytics-hour-retention-days").is_empty(), "unset: the gateway's default");
        assert_eq!(flags(&args, "--otlp-endpoint"), ["http://otel-collector.monitoring.svc:4318"]);
    }
}

/// The `description` of a field of the ApiManager schema (as `kubectl
/// explain` shows it), by its path of property names.
fn described(path: &[&str]) -> String {
    use kube::CustomResourceExt;
    let crd = serde_json::to_value(ApiManager::crd()).unwrap();
    let mut at = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    for p in path {
        at = &at["properties"][p];
    }
    at["description"].as_str().unwrap_or_default().to_string()
}

#[test]
fn default_replicas_are_the_ones_the_field_descriptions_give() {
    let ha = manager(json!({
        "pattern": "HighAvailability",
        "database": { "external": { "urlSecretRef": { "name": "db", "key": "url" } } },
        "trafficManager": { "redis": { "urlSecretRef": { "name": "redis", "key": "url" } } },
    }));
    let dg = manager(json!({
        "pattern": "DistributedGateways",
        "gateways": [{ "name": "production" }],
        "database": { "external": { "urlSecretRef": { "name": "db", "key": "url" } } },
        "trafficManager": { "redis": { "urlSecretRef": { "name": "redis", "key": "url" } } },
    }));
    let replicas = |m: &ApiManager| -> Vec<i64> {
        let v = json_of(&workload::desired(m, &cfg()));
        v["sts"].as_array().unwrap().iter().map(|s| s["spec"]["replicas"].as_i64().unwrap()).collect()
    };
    let (ha, dg) = (replicas(&ha), replicas(&dg));
    let control_plane = described(&["spec", "controlPlane", "replicas"]);
    assert!(control_plane.contains(&format!("HighAvailability: 2 or more, default {}", ha[0])), "{control_plane}");
    assert!(control_plane.contains(&format!("DistributedGateways: default {}", dg[0])), "{control_plane}");
    let crd = serde_json::to_value(<ApiManager as kube::CustomResourceExt>::crd()).unwrap();
    let group = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["gateways"]
        ["items"]["properties"]["replicas"]["description"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(group.contains(&format!("Default {}.", dg[1])), "{group}");
}

#[test]
fn fix_permissions_adds_a_chown_only_root_init_step_for_the_pod_volumes_and_nothing_by_default() {
    let plain = workload::desired(&manager(json!({ "pattern": "AllInOne" })), &cfg());
    let sts = serde_json::to_value(&plain.stateful_sets[0]).unwrap();
    assert!(sts["spec"]["template"]["spec"].get("initContainers").is_none(), "opt-in only");

    let d = workload::desired(
        &manager(json!({ "pattern": "AllInOne", "persistence": { "fixPermissions": true } })),
        &cfg(),
    );
    let sts = serde_json::to_value(&d.stateful_sets[0]).unwrap();
    let pod = &sts["spec"]["template"]["spec"];
    let init = pod["initContainers"].as_array().unwrap();
    assert_eq!(init.len(), 1);
    let step = &init[0];
    assert_eq!(step["name"], "fix-permissions");
    assert_eq!(step["image"], pod["containers"][0]["image"], "the gateway's own image");
    assert_eq!(
        step["args"],
        json!([
            "fix-permissions",
            "--uid=65532",
            "--gid=65532",
            "/var/lib/tollgate/search-index",
            "/var/lib/tollgate/database"
        ])
    );
    let mounts: Vec<(&str, &str)> = step["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["name"].as_str().unwrap(), m["mountPath"].as_str().unwrap()))
        .collect();
    assert_eq!(
        mounts,
        vec![("search-index", "/var/lib/tollgate/search-index"), ("database", "/var/lib/tollgate/database")]
    );
    let sc = &step["securityContext"];
    assert_eq!(sc["runAsUser"], 0);
    assert_eq!(sc["runAsNonRoot"], false);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"], json!({ "drop": ["ALL"], "add": ["CHOWN"] }));
    // The gateway itself stays as locked down as without the step.
    assert_eq!(pod["containers"][0]["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
}

#[test]
fn only_the_gateway_groups_serving_an_api_that_signs_hold_the_signing_keys() {
    let m = manager(with_db_and_redis(json!({
        "pattern": "DistributedGateways",
        "gateways": [{ "name": "production" }, { "name": "sandbox" }, { "name": "partners" }],
        "keyManager": { "signingKeySecretName": "apim-signing", "gatewaysSignResponses": true },
    })));
    let api = |name: &str, gateways: Value, signs: bool, deleting: bool| -> tollgate_crds::ApiDeployment {
        let mut a = json!({
            "apiVersion": "tollgate.dev/v1alpha1", "kind": "ApiDeployment",
            "metadata": { "name": name, "namespace": "banking" },
            "spec": { "apiManagerRef": { "name": "apim" }, "context": format!("/{name}"), "version": "v1",
                      "gateways": gateways,
                      "openBanking": { "jws": { "signResponses": signs } },
                      "backend": { "endpoints": [{ "url": "http://b" }] } },
        });
        if deleting {
            a["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        serde_json::from_value(a).unwrap()
    };
    let apis = [
        api("payments", json!(["production"]), true, false),
        api("accounts", json!([]), false, false),
        api("unknown-group", json!(["nowhere"]), true, false),
        api("leaving", json!(["partners"]), true, true),
    ];
    let signing = workload::signing_groups(&m, apis.iter());
    assert_eq!(signing.into_iter().collect::<Vec<_>>(), vec!["production".to_string()]);
    let everywhere = workload::signing_groups(&m, [api("all", json!([]), true, false)].iter());
    assert_eq!(everywhere.len(), 3, "an API of every group signs on every group");

    let signing = workload::signing_groups(&m, apis.iter());
    let v = json_of(&workload::desired_for(&m, &cfg(), Some(&signing)));
    let holds = |i: usize| {
        let pod = &v["sts"][i]["spec"]["template"]["spec"];
        let args = args_of(&v["sts"][i]);
        let mounted = named(&pod["volumes"], "signing-keys").is_some();
        assert_eq!(mounted, !flags(&args, "--signing-key-file").is_empty(), "flags and volume agree");
        (v["sts"][i]["metadata"]["name"].as_str().unwrap().to_string(), mounted)
    };
    assert_eq!(
        (1..4).map(holds).collect::<Vec<_>>(),
        vec![
            ("apim-gateway-production".to_string(), true),
            ("apim-gateway-sandbox".to_string(), false),
            ("apim-gateway-partners".to_string(), false),
        ]
    );
    assert!(holds(0).1, "the control plane (the key manager) always holds them");
}
