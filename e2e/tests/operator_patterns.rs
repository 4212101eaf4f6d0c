//! HighAvailability and DistributedGateways: the operator creates the objects
//! the pattern promises (replicas, HPA, PDB, per-group StatefulSets, Secret
//! references), reports missing Secrets and a key manager without a shared
//! signing key, wires the gateway groups to the control plane's JWKS, and
//! leaves the replica count to the HPA.

use std::time::Duration;

use k8s_openapi::api::{
    apps::v1::StatefulSet, autoscaling::v2::HorizontalPodAutoscaler, core::v1::Secret, core::v1::Service,
    policy::v1::PodDisruptionBudget,
};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tollgate_e2e::{
    Cluster, apply_manifest, install_crds,
    stack::{ArtifactVolume, Operator, OperatorAccess, OperatorSpec, eventually},
    tollgate_resource,
};

async fn manager_status(client: &kube::Client, ns: &str, name: &str) -> Result<Value, String> {
    let ar = tollgate_resource("ApiManager").expect("kind");
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    let obj = api.get(name).await.map_err(|e| e.to_string())?;
    Ok(serde_json::to_value(obj).map_err(|e| e.to_string())?["status"].clone())
}

fn cond<'a>(status: &'a Value, type_: &str) -> Option<&'a Value> {
    status["conditions"].as_array()?.iter().find(|c| c["type"] == type_)
}

async fn secret(client: &kube::Client, ns: &str, name: &str) {
    let s: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": { "name": name },
        "stringData": { "url": "postgres://tollgate:secret@db.example:5432/tollgate" }
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), ns).create(&PostParams::default(), &s).await.expect("secret");
}

struct Env {
    _work: tempfile::TempDir,
    _access: OperatorAccess,
    _volume: ArtifactVolume,
    operator: Operator,
}

async fn start(cluster: &Cluster, ns: &str) -> Env {
    let work = tempfile::tempdir().expect("tempdir");
    let artifacts = work.path().join("artifacts");
    let access = OperatorAccess::create(cluster, &[ns], false, work.path()).await;
    let volume = ArtifactVolume::create(cluster, ns, &artifacts).await;
    let operator = Operator::start(&OperatorSpec {
        kubeconfig: access.kubeconfig.clone(),
        artifact_dir: artifacts,
        namespaces: vec![ns.to_string()],
        identity: "op".into(),
        leader_election: false,
        work: work.path().to_path_buf(),
    });
    Env { _work: work, _access: access, _volume: volume, operator }
}

#[tokio::test]
async fn high_availability_objects_and_the_hpa_owns_replicas() {
    let cluster = Cluster::connect().await;
    install_crds(&cluster.client).await;
    let ns = cluster.namespace("ha").await;
    let ns = ns.name().to_string();
    let client = cluster.client.clone();
    let env = start(&cluster, &ns).await;

    // The update that adds analytics also sets the shared signing key.
    let manifest = |analytics: bool| {
        let key_manager = if analytics { json!({ "signingKeySecretName": "apim-signing" }) } else { json!({}) };
        json!({ "apiVersion": "tollgate.dev/v1alpha1", "kind": "ApiManager", "metadata": { "name": "apim" },
                "spec": { "pattern": "HighAvailability",
                          "controlPlane": { "autoscaling": { "minReplicas": 2, "maxReplicas": 5, "targetCPUUtilizationPercentage": 70 } },
                          "database": { "external": { "urlSecretRef": { "name": "apim-db", "key": "url" } } },
                          "trafficManager": { "redis": { "urlSecretRef": { "name": "apim-redis", "key": "url" } } },
                          "keyManager": key_manager,
                          "analytics": { "enabled": analytics } } })
    };
    apply_manifest(&client, &ns, &manifest(false)).await.expect("apimanager");

    // Secrets missing: Degraded with reason SecretNotFound, naming them.
    let status = eventually(Duration::from_secs(30), "Degraded=SecretNotFound", || async {
        let s = manager_status(&client, &ns, "apim").await?;
        match cond(&s, "Degraded") {
            Some(c) if c["status"] == "True" && c["reason"] == "SecretNotFound" => Ok(s),
            other => Err(format!("{other:?}\n{}", env.operator.proc.log_tail())),
        }
    })
    .await;
    let msg = cond(&status, "Degraded").unwrap()["message"].as_str().unwrap().to_string();
    assert!(msg.contains("apim-db") && msg.contains("apim-redis"), "{msg}");
    assert!(!msg.contains("postgres://"), "no secret values in status");

    secret(&client, &ns, "apim-db").await;
    secret(&client, &ns, "apim-redis").await;

    let stss: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    let sts = stss.get("apim").await.expect("StatefulSet apim");
    let spec = sts.spec.clone().unwrap();
    let c = &spec.template.spec.as_ref().unwrap().containers[0];
    let env_vars = c.env.clone().unwrap_or_default();
    let db = env_vars.iter().find(|e| e.name == "TOLLGATE_DATABASE_URL").expect("database URL env");
    assert!(db.value.is_none(), "the URL is never copied into the pod spec");
    let r = db.value_from.as_ref().and_then(|v| v.secret_key_ref.as_ref()).expect("secretKeyRef");
    assert_eq!((r.name.as_str(), r.key.as_str()), ("apim-db", "url"));
    assert!(env_vars.iter().any(|e| e.name == "TOLLGATE_REDIS_URL"));

    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &ns);
    let hpa = hpas.get("apim").await.expect("HPA");
    let hspec = hpa.spec.unwrap();
    assert_eq!((hspec.min_replicas, hspec.max_replicas), (Some(2), 5));
    assert_eq!(hspec.scale_target_ref.name, "apim");
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns);
    pdbs.get("apim").await.expect("PDB for a multi-pod pattern");
    let svcs: Api<Service> = Api::namespaced(client.clone(), &ns);
    assert_eq!(svcs.get("apim-headless").await.unwrap().spec.unwrap().cluster_ip.as_deref(), Some("None"));
    svcs.get("apim").await.expect("client Service");

    // Once the Secrets exist, what is left is the key manager: up to five
    // pods, each signing with its own key. Reported, not held back.
    let status = eventually(Duration::from_secs(30), "Degraded=SigningKeySecretRequired", || async {
        let s = manager_status(&client, &ns, "apim").await?;
        match cond(&s, "Degraded") {
            Some(c) if c["status"] == "True" && c["reason"] == "SigningKeySecretRequired" => Ok(s),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let msg = cond(&status, "Degraded").unwrap()["message"].as_str().unwrap().to_string();
    assert!(msg.contains("keyManager.signingKeySecretName") && msg.contains("openssl genpkey"), "{msg}");
    assert_eq!(status["endpoints"]["issuer"], format!("http://apim.{ns}.svc:9763/oauth2"), "{status}");
    let args = sts.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0].args.clone().unwrap();
    assert!(args.contains(&format!("--issuer=http://apim.{ns}.svc:9763/oauth2")), "{args:?}");
    let signing: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "apim-signing" },
        "stringData": { "signing-key.pem": "placeholder: kwok runs no gateway" }
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), &ns).create(&PostParams::default(), &signing).await.expect("secret");

    // The HPA (here: someone using the scale subresource as the HPA does)
    // sets replicas; a later reconcile of a spec change leaves them alone.
    stss.patch_scale("apim", &PatchParams::default(), &Patch::Merge(json!({ "spec": { "replicas": 4 } })))
        .await
        .expect("scale");
    apply_manifest(&client, &ns, &manifest(true)).await.expect("apimanager update");
    let sts = eventually(Duration::from_secs(30), "analytics role rolled into the StatefulSet", || async {
        let s = stss.get("apim").await.map_err(|e| e.to_string())?;
        let args =
            s.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0].args.clone().unwrap_or_default();
        if args.iter().any(|a| a.contains("analytics")) { Ok(s) } else { Err(format!("{args:?}")) }
    })
    .await;
    assert_eq!(sts.spec.unwrap().replicas, Some(4), "the operator does not fight the HPA over replicas");
    // The reconcile of that generation has finished (status written after
    // the workloads): replicas are still the HPA's.
    eventually(Duration::from_secs(30), "ApiManager status observed the update", || async {
        let ar = tollgate_resource("ApiManager").expect("kind");
        let obj = Api::<kube::api::DynamicObject>::namespaced_with(client.clone(), &ns, &ar)
            .get("apim")
            .await
            .map_err(|e| e.to_string())?;
        let v = serde_json::to_value(obj).map_err(|e| e.to_string())?;
        let (observed, generation) = (&v["status"]["observedGeneration"], &v["metadata"]["generation"]);
        if observed == generation { Ok(()) } else { Err(format!("observed {observed}, generation {generation}")) }
    })
    .await;
    assert_eq!(stss.get("apim").await.unwrap().spec.unwrap().replicas, Some(4));
    let args = sts_args(&stss, "apim").await;
    assert!(args.contains(&"--signing-key-file=/etc/tollgate/signing-keys/signing-key.pem".to_string()), "{args:?}");

    // Degraded clears once every pod signs with the shared key.
    eventually(Duration::from_secs(30), "Degraded=False with the shared signing key", || async {
        let s = manager_status(&client, &ns, "apim").await?;
        match cond(&s, "Degraded") {
            Some(c) if c["status"] == "False" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

async fn sts_args(stss: &Api<StatefulSet>, name: &str) -> Vec<String> {
    let sts = stss.get(name).await.unwrap_or_else(|e| panic!("StatefulSet {name}: {e}"));
    sts.spec.unwrap().template.spec.unwrap().containers[0].args.clone().unwrap_or_default()
}

#[tokio::test]
async fn distributed_gateways_get_a_statefulset_hpa_and_pdb_per_group() {
    let cluster = Cluster::connect().await;
    install_crds(&cluster.client).await;
    let ns = cluster.namespace("distributed").await;
    let ns = ns.name().to_string();
    let client = cluster.client.clone();
    let env = start(&cluster, &ns).await;
    secret(&client, &ns, "db").await;
    secret(&client, &ns, "redis").await;

    let manifest = |groups: Value| {
        json!({ "apiVersion": "tollgate.dev/v1alpha1", "kind": "ApiManager", "metadata": { "name": "apim" },
                "spec": { "pattern": "DistributedGateways",
                          "controlPlane": { "replicas": 2 },
                          "gateways": groups,
                          "database": { "external": { "urlSecretRef": { "name": "db", "key": "url" } } },
                          "trafficManager": { "redis": { "urlSecretRef": { "name": "redis", "key": "url" } } } } })
    };
    apply_manifest(
        &client,
        &ns,
        &manifest(json!([
            { "name": "production", "autoscaling": { "minReplicas": 2, "maxReplicas": 10, "targetCPUUtilizationPercentage": 70 } },
            { "name": "sandbox", "autoscaling": { "minReplicas": 1, "maxReplicas": 3, "targetCPUUtilizationPercentage": 80 } },
        ])),
    )
    .await
    .expect("apimanager");

    let stss: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &ns);
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns);
    eventually(Duration::from_secs(30), "three StatefulSets", || async {
        let names: Vec<String> = stss
            .list(&Default::default())
            .await
            .map_err(|e| e.to_string())?
            .items
            .into_iter()
            .filter_map(|s| s.metadata.name)
            .collect();
        if names == ["apim-control-plane", "apim-gateway-production", "apim-gateway-sandbox"] {
            Ok(())
        } else {
            Err(format!("{names:?}\n{}", env.operator.proc.log_tail()))
        }
    })
    .await;
    let cp = stss.get("apim-control-plane").await.unwrap().spec.unwrap();
    assert_eq!(cp.replicas, Some(2));
    let cp_args = cp.template.spec.unwrap().containers[0].args.clone().unwrap();
    assert!(cp_args.contains(&"--roles=store,key-manager".to_string()), "{cp_args:?}");
    let prod = stss.get("apim-gateway-production").await.unwrap().spec.unwrap();
    let prod_args = prod.template.spec.unwrap().containers[0].args.clone().unwrap();
    assert!(
        prod_args.contains(&"--gateway-group=production".to_string())
            && prod_args.contains(&"--roles=gateway".to_string())
    );
    // The gateway groups trust the control plane's key manager through its Service.
    let issuer = format!("--issuer=http://apim-control-plane.{ns}.svc:9763/oauth2");
    assert!(cp_args.contains(&issuer) && prod_args.contains(&issuer), "{cp_args:?} {prod_args:?}");
    let jwks = format!("--key-manager-jwks-uri=http://apim-control-plane.{ns}.svc:9763/oauth2/jwks");
    assert!(prod_args.contains(&jwks) && !cp_args.contains(&jwks), "{prod_args:?}");
    eventually(Duration::from_secs(30), "an HPA per group and three PDBs", || async {
        let hpa_names: Vec<String> = hpas
            .list(&Default::default())
            .await
            .map_err(|e| e.to_string())?
            .items
            .into_iter()
            .filter_map(|p| p.metadata.name)
            .collect();
        let pdb_names: Vec<String> = pdbs
            .list(&Default::default())
            .await
            .map_err(|e| e.to_string())?
            .items
            .into_iter()
            .filter_map(|p| p.metadata.name)
            .collect();
        if hpa_names == ["apim-gateway-production", "apim-gateway-sandbox"]
            && pdb_names == ["apim-control-plane", "apim-gateway-production", "apim-gateway-sandbox"]
        {
            Ok(())
        } else {
            Err(format!("HPAs {hpa_names:?}, PDBs {pdb_names:?}"))
        }
    })
    .await;
    for group in ["production", "sandbox"] {
        let hpa = hpas.get(&format!("apim-gateway-{group}")).await.expect("HPA per group").spec.unwrap();
        assert_eq!(hpa.scale_target_ref.name, format!("apim-gateway-{group}"));
    }
    eventually(Duration::from_secs(30), "status lists the three components", || async {
        let status = manager_status(&client, &ns, "apim").await?;
        let comps: Vec<String> = status["components"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["statefulSet"].as_str().map(str::to_string))
            .collect();
        if comps == ["apim-control-plane", "apim-gateway-production", "apim-gateway-sandbox"] {
            Ok(())
        } else {
            Err(format!("{comps:?}"))
        }
    })
    .await;

    // Dropping a group removes its StatefulSet, HPA and PDB.
    apply_manifest(
        &client,
        &ns,
        &manifest(json!([{ "name": "production", "autoscaling": { "minReplicas": 2, "maxReplicas": 10, "targetCPUUtilizationPercentage": 70 } }])),
    )
    .await
    .expect("apimanager update");
    eventually(Duration::from_secs(30), "sandbox group removed", || async {
        let sts = stss.get_opt("apim-gateway-sandbox").await.map_err(|e| e.to_string())?;
        let hpa = hpas.get_opt("apim-gateway-sandbox").await.map_err(|e| e.to_string())?;
        let pdb = pdbs.get_opt("apim-gateway-sandbox").await.map_err(|e| e.to_string())?;
        if sts.is_none() && hpa.is_none() && pdb.is_none() { Ok(()) } else { Err("still there".into()) }
    })
    .await;
    assert!(stss.get_opt("apim-gateway-production").await.unwrap().is_some());
    assert_eq!(
        env.operator.metric("tollgate_operator_reconcile_errors_total"),
        0.0,
        "{}",
        env.operator.proc.log_tail()
    );
}

#[tokio::test]
async fn switching_autoscaling_on_keeps_the_replica_count() {
    let cluster = Cluster::connect().await;
    install_crds(&cluster.client).await;
    let ns = cluster.namespace("hpa-on").await;
    let ns = ns.name().to_string();
    let client = cluster.client.clone();
    let _env = start(&cluster, &ns).await;
    secret(&client, &ns, "apim-db").await;
    secret(&client, &ns, "apim-redis").await;
    let manifest = |control_plane: Value| {
        json!({ "apiVersion": "tollgate.dev/v1alpha1", "kind": "ApiManager", "metadata": { "name": "apim" },
                "spec": { "pattern": "HighAvailability", "controlPlane": control_plane,
                          "database": { "external": { "urlSecretRef": { "name": "apim-db", "key": "url" } } },
                          "trafficManager": { "redis": { "urlSecretRef": { "name": "apim-redis", "key": "url" } } } } })
    };
    apply_manifest(&client, &ns, &manifest(json!({ "replicas": 3 }))).await.expect("apimanager");
    let stss: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    eventually(Duration::from_secs(30), "3 replicas", || async {
        match stss.get_opt("apim").await.map_err(|e| e.to_string())?.and_then(|s| s.spec).and_then(|s| s.replicas) {
            Some(3) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    // Autoscaling on (2..5): the HPA takes the count over from 3, never from 1.
    apply_manifest(
        &client,
        &ns,
        &manifest(
            json!({ "autoscaling": { "minReplicas": 2, "maxReplicas": 5, "targetCPUUtilizationPercentage": 70 } }),
        ),
    )
    .await
    .expect("apimanager");
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &ns);
    eventually(Duration::from_secs(30), "the HPA exists", || async {
        hpas.get_opt("apim").await.map_err(|e| e.to_string())?.map(|_| ()).ok_or("no HPA yet".to_string())
    })
    .await;
    let mut seen = Vec::new();
    for _ in 0..30 {
        let r = stss.get("apim").await.unwrap().spec.and_then(|s| s.replicas);
        seen.push(r);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen.iter().all(|r| r.is_some_and(|n| n >= 2)), "replicas after the switch: {seen:?}");
    let live = stss.get("apim").await.unwrap();
    let ours = live.metadata.managed_fields.iter().flatten().any(|e| {
        e.manager.as_deref() == Some("tollgate-operator")
            && e.fields_v1.as_ref().and_then(|f| f.0.get("f:spec")).and_then(|s| s.get("f:replicas")).is_some()
    });
    assert!(!ours, "the operator's apply no longer owns spec.replicas");
}
