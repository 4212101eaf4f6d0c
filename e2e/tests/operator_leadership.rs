//! Operator restarts and replicas: killed mid-reconcile it converges on
//! restart, and a restart with nothing changed rewrites no artifact; of two
//! replicas only the Lease holder writes, and the other takes over when the
//! leader dies.

use std::{path::PathBuf, time::Duration};

use kube::api::{Api, DynamicObject};
use serde_json::json;
use tollgate_e2e::{
    Cluster, apply_manifest, install_crds,
    stack::{ArtifactVolume, Operator, OperatorAccess, OperatorSpec, artifact_snapshot, eventually},
    tollgate_resource,
};

const APIS: usize = 6;

async fn setup_objects(client: &kube::Client, ns: &str, first: usize, count: usize) {
    for i in first..first + count {
        apply_manifest(
            client,
            ns,
            &json!({ "apiVersion": "tollgate.dev/v1alpha1", "kind": "ApiDeployment", "metadata": { "name": format!("api-{i}") },
                     "spec": { "apiManagerRef": { "name": "apim" }, "context": format!("/open-banking/api-{i}"), "version": "v1",
                               "throttling": { "policy": "bronze" },
                               "backend": { "endpoints": [{ "url": "http://127.0.0.1:9" }] } } }),
        )
        .await
        .expect("apideployment");
    }
}

async fn deployed_count(client: &kube::Client, ns: &str) -> Result<usize, String> {
    let ar = tollgate_resource("ApiDeployment").unwrap();
    let list = Api::<DynamicObject>::namespaced_with(client.clone(), ns, &ar)
        .list(&Default::default())
        .await
        .map_err(|e| e.to_string())?;
    Ok(list
        .items
        .iter()
        .filter(|o| {
            let v = serde_json::to_value(o).unwrap();
            v["status"]["conditions"]
                .as_array()
                .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Deployed" && c["status"] == "True"))
                && v["status"]["observedGeneration"] == v["metadata"]["generation"]
        })
        .count())
}

/// path -> (inode, mtime in ns) of every artifact.
struct Env {
    work: tempfile::TempDir,
    access: OperatorAccess,
    _volume: ArtifactVolume,
    ns: String,
}

impl Env {
    async fn new(cluster: &Cluster, ns: &str) -> Env {
        let work = tempfile::tempdir().unwrap();
        let access = OperatorAccess::create(cluster, &[ns], false, work.path()).await;
        let volume = ArtifactVolume::create(cluster, ns, &work.path().join("artifacts")).await;
        Env { work, access, _volume: volume, ns: ns.to_string() }
    }
    fn artifacts(&self) -> PathBuf {
        self.work.path().join("artifacts")
    }
    fn operator(&self, identity: &str) -> Operator {
        Operator::start(&OperatorSpec {
            kubeconfig: self.access.kubeconfig.clone(),
            artifact_dir: self.artifacts(),
            namespaces: vec![self.ns.clone()],
            identity: identity.into(),
            leader_election: true,
            work: self.work.path().to_path_buf(),
        })
    }
}

async fn base_objects(client: &kube::Client, ns: &str) {
    apply_manifest(
        client,
        ns,
        &json!({ "apiVersion": "tollgate.dev/v1alpha1", "kind": "ThrottlePolicy", "metadata": { "name": "bronze" },
                 "spec": { "limit": { "requests": 100, "per": "1m" } } }),
    )
    .await
    .unwrap();
    apply_manifest(
        client,
        ns,
        &json!({ "apiVersion": "tollgate.dev/v1alpha1", "kind": "ApiManager", "metadata": { "name": "apim" },
                 "spec": { "pattern": "AllInOne" } }),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn killed_mid_reconcile_converges_and_a_clean_restart_rewrites_nothing() {
    let cluster = Cluster::connect().await;
    install_crds(&cluster.client).await;
    let ns = cluster.namespace("restart").await;
    let env = Env::new(&cluster, ns.name()).await;
    let client = cluster.client.clone();

    let mut first = env.operator("op-a");
    eventually(Duration::from_secs(20), "op-a leads", || async {
        if first.metric("tollgate_operator_leader") == 1.0 { Ok(()) } else { Err("not yet".into()) }
    })
    .await;
    base_objects(&client, ns.name()).await;
    setup_objects(&client, ns.name(), 0, APIS).await;
    // Crash once it has started working through the new objects (whatever
    // it has or has not finished, the next operator must converge).
    eventually(Duration::from_secs(20), "op-a wrote its first artifact", || async {
        let n = first.metric("tollgate_operator_artifacts_written_total");
        if n >= 1.0 { Ok(()) } else { Err(format!("{n}\n{}", first.proc.log_tail())) }
    })
    .await;
    first.proc.kill();

    let second = env.operator("op-b");
    eventually(Duration::from_secs(60), "all APIs Deployed after the restart", || async {
        match deployed_count(&client, ns.name()).await? {
            APIS => Ok(()),
            n => Err(format!("{n}/{APIS}\n{}", second.proc.log_tail())),
        }
    })
    .await;
    let folder = env.artifacts().join(ns.name()).join("apim");
    let before = artifact_snapshot(&folder);
    assert_eq!(before.len(), APIS + 1, "six APIs and one policy: {before:?}");
    assert!(before.keys().all(|p| p.extension().is_some_and(|e| e == "yaml")), "no temp files left: {before:?}");

    // A clean restart (SIGTERM) with nothing changed: everything reconciled, nothing written.
    drop(second);
    let third = env.operator("op-c");
    eventually(Duration::from_secs(30), "op-c reconciled every API", || async {
        let n = third.metric("tollgate_operator_reconciles_total{controller=\"apideployment\"}");
        if n >= APIS as f64 { Ok(()) } else { Err(format!("{n} reconciles\n{}", third.proc.log_tail())) }
    })
    .await;
    eventually(Duration::from_secs(10), "op-c reconciled the ApiManager", || async {
        let n = third.metric("tollgate_operator_reconciles_total{controller=\"apimanager\"}");
        if n >= 1.0 { Ok(()) } else { Err(format!("{n}")) }
    })
    .await;
    eventually(Duration::from_secs(15), "op-c reports an empty queue and nothing in flight", || async {
        let text = tollgate_e2e::stack::http(third.metrics, "GET", "/metrics").map_err(|e| e.to_string())?.1;
        let idle = ["tollgate_operator_queue_depth", "tollgate_operator_reconciles_in_flight"]
            .iter()
            .all(|m| text.contains(&format!("{m}{{controller=\"apideployment\"}} 0")));
        if idle {
            Ok(())
        } else {
            Err(text.lines().filter(|l| l.contains("queue_depth") || l.contains("in_flight")).collect())
        }
    })
    .await;
    assert_eq!(third.metric("tollgate_operator_artifacts_written_total"), 0.0);
    assert_eq!(third.metric("tollgate_operator_artifacts_removed_total"), 0.0);
    assert_eq!(
        third.metric("tollgate_operator_status_writes_total{controller=\"apideployment\"}"),
        0.0,
        "statuses were already right"
    );
    assert_eq!(artifact_snapshot(&folder), before, "no artifact rewritten (same inodes and mtimes)");
}

#[tokio::test]
async fn only_the_leader_writes_and_the_follower_takes_over() {
    let cluster = Cluster::connect().await;
    install_crds(&cluster.client).await;
    let ns = cluster.namespace("leader").await;
    let env = Env::new(&cluster, ns.name()).await;
    let client = cluster.client.clone();

    let one = env.operator("op-1");
    let two = env.operator("op-2");
    let one_leads = eventually(Duration::from_secs(30), "one leader", || async {
        match (one.metric("tollgate_operator_leader"), two.metric("tollgate_operator_leader")) {
            (1.0, 0.0) => Ok(true),
            (0.0, 1.0) => Ok(false),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let (mut leader, follower) = if one_leads { (one, two) } else { (two, one) };

    base_objects(&client, ns.name()).await;
    setup_objects(&client, ns.name(), 0, 2).await;
    eventually(Duration::from_secs(30), "APIs Deployed", || async {
        match deployed_count(&client, ns.name()).await? {
            2 => Ok(()),
            n => Err(format!("{n}/2")),
        }
    })
    .await;
    assert!(leader.metric("tollgate_operator_artifacts_written_total") >= 3.0);
    assert_eq!(follower.metric("tollgate_operator_artifacts_written_total"), 0.0, "the follower writes nothing");
    assert_eq!(follower.metric("tollgate_operator_reconciles_total"), 0.0, "the follower does not reconcile");
    assert_eq!(follower.metric("tollgate_operator_leader"), 0.0);

    // The leader dies without releasing the Lease; the follower takes over
    // after it expires and handles new objects.
    leader.proc.kill();
    eventually(Duration::from_secs(30), "the follower leads", || async {
        if follower.metric("tollgate_operator_leader") == 1.0 { Ok(()) } else { Err("not yet".into()) }
    })
    .await;
    setup_objects(&client, ns.name(), 2, 1).await;
    eventually(Duration::from_secs(30), "the new API Deployed by the new leader", || async {
        match deployed_count(&client, ns.name()).await? {
            3 => Ok(()),
            n => Err(format!("{n}/3\n{}", follower.proc.log_tail())),
        }
    })
    .await;
    assert!(follower.metric("tollgate_operator_artifacts_written_total") >= 1.0);
    assert!(env.artifacts().join(ns.name()).join("apim").join(format!("apis/{}_api-2.yaml", ns.name())).is_file());
}

#[tokio::test]
async fn a_stalled_leader_is_replaced_and_writes_nothing_when_it_wakes() {
    let cluster = Cluster::connect().await;
    install_crds(&cluster.client).await;
    let ns = cluster.namespace("stall").await;
    let env = Env::new(&cluster, ns.name()).await;
    let client = cluster.client.clone();

    let one = env.operator("op-s1");
    eventually(Duration::from_secs(30), "op-s1 leads", || async {
        if one.metric("tollgate_operator_leader") == 1.0 { Ok(()) } else { Err("not yet".into()) }
    })
    .await;
    let two = env.operator("op-s2");
    base_objects(&client, ns.name()).await;
    setup_objects(&client, ns.name(), 0, 1).await;
    eventually(Duration::from_secs(30), "api-0 Deployed", || async {
        match deployed_count(&client, ns.name()).await? {
            1 => Ok(()),
            n => Err(format!("{n}/1")),
        }
    })
    .await;

    // The leader stalls (SIGSTOP): the follower takes over once the lease
    // (4 s here) runs out, and serves a new API. How soon is not asserted
    // (a loaded machine delays the follower's own timers); the log says.
    let mut stalled = one;
    stalled.proc.signal("STOP");
    let stopped = std::time::Instant::now();
    eventually(Duration::from_secs(20), "op-s2 leads", || async {
        if two.metric("tollgate_operator_leader") == 1.0 { Ok(()) } else { Err(two.proc.log_tail()) }
    })
    .await;
    eprintln!("leader stalled -> follower leads in {:?}", stopped.elapsed());
    setup_objects(&client, ns.name(), 1, 1).await;
    eventually(Duration::from_secs(30), "api-1 Deployed by the new leader", || async {
        match deployed_count(&client, ns.name()).await? {
            2 => Ok(()),
            n => Err(format!("{n}/2\n{}", two.proc.log_tail())),
        }
    })
    .await;
    let folder = env.artifacts().join(ns.name()).join("apim");
    let before = artifact_snapshot(&folder);
    assert!(before.contains_key(&folder.join(format!("apis/{}_api-1.yaml", ns.name()))));

    // It wakes with caches that know nothing of api-1: it must write
    // nothing (its plan would remove api-1) and stand down.
    stalled.proc.signal("CONT");
    let code = stalled.proc.wait_exit(tollgate_e2e::stack::CONDITION_FLOOR);
    assert_eq!(code, Some(2), "the woken leader stands down:\n{}", stalled.proc.log_tail());
    assert!(stalled.proc.log_lines("artifacts synced").lines().count() <= 1, "{}", stalled.proc.log_lines("synced"));
    assert_eq!(artifact_snapshot(&folder), before, "nothing in the folder changed");
    assert_eq!(deployed_count(&client, ns.name()).await.unwrap(), 2);
    assert_eq!(two.metric("tollgate_operator_leader"), 1.0);
}
