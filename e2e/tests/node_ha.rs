//! On the real node (make e2e-node): the highly available pattern (1-HA),
//! two gateway pods on PostgreSQL and Redis that the test starts on the
//! node's address (reached by the pods like a managed database). A
//! per-consumer Cluster limit holds across both pods; a rolling restart of
//! the StatefulSet under steady load fails no request (refused connections,
//! which carry none, are counted apart); `kill -9` of one
//! gateway under load loses at most the requests in flight on it; `helm
//! upgrade` to images of another tag rolls operator and gateways with no
//! failed request; with the database and Redis gone the ApiManager says
//! so. The counts are printed (`--nocapture`) for the record.

mod node_support;

use k8s_openapi::api::{apps::v1::StatefulSet, core::v1::Pod};
use kube::api::Api;
use node_support::{
    WAIT, api_yaml, backend_yaml, cluster_ip, installed, kubectl_apply, ready_pod, secrets_yaml, uninstall, until_true,
};
use tollgate_e2e::{
    node::{NodePostgres, NodeRedis},
    repo_root,
    stack::{eventually, tool},
};

/// Load clients (each has at most one request in flight).
const CLIENTS: usize = 4;
const LIMIT: u64 = 300;

fn manifests(db: &str, redis: &str, signing_key: &str, ns: &str) -> String {
    let manager = r#"
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiManager
metadata: {name: apim}
spec:
  pattern: HighAvailability
  adminTokenSecretRef: {name: tollgate-admin, key: token}
  controlPlane:
    replicas: 2
    resources: {requests: {cpu: 50m, memory: 64Mi}, limits: {memory: 512Mi}}
  database:
    external: {urlSecretRef: {name: tollgate-db, key: url}}
  trafficManager:
    redis: {urlSecretRef: {name: tollgate-redis, key: url}}
  keyManager: {signingKeySecretName: tollgate-signing-key}
  persistence: {fixPermissions: true}
"#;
    let policy = format!(
        r#"
---
apiVersion: tollgate.dev/v1alpha1
kind: ThrottlePolicy
metadata: {{name: per-consumer}}
spec:
  description: {LIMIT} requests per consumer (X-Consumer) across every gateway pod
  limit: {{requests: {LIMIT}, per: 30d}}
  keyBy: Header
  keyName: X-Consumer
  scope: Cluster
"#
    );
    [
        secrets_yaml(db, redis, signing_key),
        manager.to_string(),
        policy,
        api_yaml(ns, "limited", "/limited", "v1", &["throttling: {policy: per-consumer}"]),
        api_yaml(ns, "accounts", "/open-banking/aisp", "v3.1", &[]),
    ]
    .concat()
}

/// The StatefulSet rolled out: every replica updated and Ready.
async fn rolled_out(sets: &Api<StatefulSet>, name: &str) -> Result<(), String> {
    let s = sets.get(name).await.map_err(|e| e.to_string())?;
    let generation = s.metadata.generation.unwrap_or(0);
    let st = s.status.unwrap_or_default();
    let want = s.spec.and_then(|s| s.replicas).unwrap_or(1);
    let done = st.observed_generation.unwrap_or(0) >= generation
        && st.updated_replicas.unwrap_or(0) == want
        && st.ready_replicas.unwrap_or(0) == want
        && st.current_revision.is_some()
        && st.current_revision == st.update_revision;
    if done { Ok(()) } else { Err(format!("{st:?}")) }
}

#[tokio::test]
async fn high_availability_holds_a_cluster_limit_and_serves_through_a_rolling_restart_a_kill_and_an_upgrade() {
    let t = installed("node-ha").await;
    let (cluster, node, client, ns) = (&t.cluster, t.node.clone(), t.cluster.client.clone(), t.ns.clone());
    let work = tempfile::tempdir().unwrap();

    let postgres = NodePostgres::start(&node);
    let redis = NodeRedis::start(&node, work.path());
    let signing_key = rcgen::KeyPair::generate().expect("key").serialize_pem();
    kubectl_apply(cluster, &ns, &backend_yaml(2));
    kubectl_apply(cluster, &ns, &manifests(&postgres.url, &redis.url, &signing_key, &ns));

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    ready_pod(&pods, "apim-0", None).await;
    ready_pod(&pods, "apim-1", None).await;
    until_true(&client, &ns, "ApiManager", "apim", "Ready").await;
    until_true(&client, &ns, "ApiDeployment", "limited", "Deployed").await;
    until_true(&client, &ns, "ApiDeployment", "accounts", "Deployed").await;
    let gateway = std::net::SocketAddr::from((cluster_ip(&client, &ns, "apim").await, 8280));
    eventually(WAIT, "both APIs answer through the Service", || {
        let node = node.clone();
        async move {
            for path in ["/open-banking/aisp/v3.1/accounts/1", "/limited/v1/accounts/1"] {
                let consumer = [("X-Consumer", "warm-up")];
                match node.request(gateway, "GET", path, &consumer, "").await {
                    Ok((200, _)) => {}
                    other => return Err(format!("{path}: {other:?}")),
                }
            }
            Ok(())
        }
    })
    .await;

    // The Cluster limit across both pods: 400 requests of one consumer,
    // spread by the Service over both gateways, 300 allowed.
    let (ok, limited, other) = node
        .spawn(move || {
            let clients: Vec<_> = (0..CLIENTS)
                .map(|_| {
                    std::thread::spawn(move || {
                        let mut counts = (0u64, 0u64, Vec::new());
                        for _ in 0..(LIMIT + 100) / CLIENTS as u64 {
                            let headers = [("X-Consumer", "tpp-a")];
                            match tollgate_e2e::stack::request(gateway, "GET", "/limited/v1/accounts/1", &headers, "") {
                                Ok((200, _)) => counts.0 += 1,
                                Ok((429, _)) => counts.1 += 1,
                                other => counts.2.push(format!("{other:?}")),
                            }
                        }
                        counts
                    })
                })
                .collect();
            clients.into_iter().map(|c| c.join().unwrap()).fold((0, 0, Vec::new()), |mut a, c| {
                a.0 += c.0;
                a.1 += c.1;
                a.2.extend(c.2);
                a
            })
        })
        .join()
        .unwrap();
    eprintln!("cluster limit {LIMIT}: {ok} allowed, {limited} refused with 429, other {other:?}");
    assert!(other.is_empty(), "{other:?}");
    assert!(ok <= LIMIT, "never over the limit: {ok} > {LIMIT}");
    assert!(ok * 100 >= LIMIT * 98, "within 2 % of the limit: {ok} of {LIMIT}");

    // A rolling restart under steady load: no request fails.
    let load = node.load(gateway, "/open-banking/aisp/v3.1/accounts/1", &[], CLIENTS);
    load.until_more_answered(50).await;
    let before: Vec<Option<String>> = [pods.get("apim-0").await, pods.get("apim-1").await]
        .into_iter()
        .map(|p| p.ok().and_then(|p| p.metadata.uid))
        .collect();
    tool(cluster, "kubectl", &["-n", &ns, "rollout", "restart", "statefulset/apim"]);
    eventually(WAIT, "the restart rolled out", || async {
        rolled_out(&sets, "apim").await?;
        for (i, old) in before.iter().enumerate() {
            let pod = pods.get(&format!("apim-{i}")).await.map_err(|e| e.to_string())?;
            if pod.metadata.uid == *old {
                return Err(format!("apim-{i} not replaced yet"));
            }
        }
        Ok(())
    })
    .await;
    load.until_more_answered(50).await;
    let rolling = load.stop();
    eprintln!("rolling restart under load: {rolling:?}");
    assert!(rolling.sent > 100, "{rolling:?}");
    assert_eq!(rolling.failed(), 0, "no request fails during a rolling restart: {rolling:?}");
    // Refused connections never carried a request (the client tries
    // again); they are counted and printed above, not failures.

    // kill -9 of one gateway under load: only what was in flight on it.
    let victim = ready_pod(&pods, "apim-1", None).await;
    let uid = victim.metadata.uid.clone().unwrap();
    let restarts_before = restarts(&victim);
    let load = node.load(gateway, "/open-banking/aisp/v3.1/accounts/1", &[], CLIENTS);
    load.until_more_answered(50).await;
    let procs: Vec<_> =
        node.container_processes("/usr/local/bin/tollgate-gateway").into_iter().filter(|p| p.in_pod(&uid)).collect();
    assert_eq!(procs.len(), 1, "the gateway process of apim-1: {procs:?}");
    let killed = std::process::Command::new("kill").args(["-KILL", &procs[0].pid.to_string()]).status().unwrap();
    assert!(killed.success());
    eventually(WAIT, "apim-1 restarted and Ready", || async {
        let pod = pods.get("apim-1").await.map_err(|e| e.to_string())?;
        if restarts(&pod) > restarts_before && node_support::is_ready(&pod) {
            Ok(())
        } else {
            Err(node_support::pod_state(&pod))
        }
    })
    .await;
    load.until_more_answered(50).await;
    let kill = load.stop();
    eprintln!("kill -9 of apim-1 under load: {kill:?}");
    assert!(kill.sent > 100, "{kill:?}");
    assert!(kill.other.is_empty(), "no error answers: {kill:?}");
    assert!(
        kill.lost <= CLIENTS as u64,
        "at most the requests in flight on the killed pod ({CLIENTS} clients, one request each) are lost: {kill:?}"
    );

    // helm upgrade to images of another tag: the operator rolls, the new
    // leader rolls the gateways, no request fails.
    let version = env!("CARGO_PKG_VERSION");
    let next = format!("{version}-next");
    for image in ["operator", "gateway"] {
        let repo = format!("ghcr.io/tollgate-dev/tollgate-{image}");
        node.tag_image(&format!("{repo}:{version}"), &format!("{repo}:{next}"));
    }
    let load = node.load(gateway, "/open-banking/aisp/v3.1/accounts/1", &[], CLIENTS);
    load.until_more_answered(50).await;
    let chart = repo_root().join("charts/tollgate").display().to_string();
    let (tag, gateway_tag) = (format!("image.tag={next}"), format!("gatewayImage.tag={next}"));
    tool(
        cluster,
        "helm",
        &["upgrade", "tollgate", &chart, "-n", &ns, "--reuse-values", "--set", &tag, "--set", &gateway_tag],
    );
    let want = format!("ghcr.io/tollgate-dev/tollgate-gateway:{next}");
    eventually(WAIT, "the gateways rolled to the new tag", || async {
        rolled_out(&sets, "apim").await?;
        for i in 0..2 {
            let pod = pods.get(&format!("apim-{i}")).await.map_err(|e| e.to_string())?;
            let image =
                pod.spec.as_ref().map(|s| s.containers[0].image.clone().unwrap_or_default()).unwrap_or_default();
            if image != want || !node_support::is_ready(&pod) {
                return Err(format!("apim-{i}: {image} {}", node_support::pod_state(&pod)));
            }
        }
        Ok(())
    })
    .await;
    let (operators, _) = node_support::operators_ready(cluster, &ns).await;
    for name in &operators {
        let pod = pods.get(name).await.unwrap();
        let image = pod.spec.unwrap().containers[0].image.clone().unwrap_or_default();
        assert_eq!(image, format!("ghcr.io/tollgate-dev/tollgate-operator:{next}"), "{name}");
    }
    load.until_more_answered(50).await;
    let upgrade = load.stop();
    eprintln!("helm upgrade under load: {upgrade:?}");
    assert!(upgrade.sent > 100, "{upgrade:?}");
    assert_eq!(upgrade.failed(), 0, "no request fails during helm upgrade: {upgrade:?}");

    // The database and Redis go away: the ApiManager says so, naming the
    // pods and what each cannot reach, while the pods stay Ready.
    drop(postgres);
    drop(redis);
    let manager = eventually(WAIT, "the ApiManager reports the unreachable database and Redis", || {
        let (node, client, ns) = (node.clone(), client.clone(), ns.clone());
        async move {
            // Limited traffic makes the gateways try Redis.
            let _ = node.request(gateway, "GET", "/limited/v1/accounts/1", &[("X-Consumer", "tpp-b")], "").await;
            let m = node_support::get(&client, &ns, "ApiManager", "apim").await?;
            let ready = node_support::condition(&m, "Ready");
            let degraded = node_support::condition(&m, "Degraded");
            let message = m["status"]["conditions"]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["type"] == "Degraded"))
                .and_then(|c| c["message"].as_str())
                .unwrap_or("")
                .to_string();
            let named =
                message.contains("database unreachable") && message.contains("Redis (traffic manager) unreachable");
            match (ready, degraded) {
                (Some((r, rr)), Some((d, dr)))
                    if r == "False"
                        && rr == "DependencyUnreachable"
                        && d == "True"
                        && dr == "DependencyUnreachable"
                        && named =>
                {
                    Ok(message)
                }
                other => Err(format!("{other:?}: {message}")),
            }
        }
    })
    .await;
    eprintln!("with the database and Redis gone: Degraded=True DependencyUnreachable: {manager}");
    assert!(manager.contains("pod apim-0:") && manager.contains("pod apim-1:"), "{manager}");

    uninstall(cluster, &ns, t.release);
}

fn restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == "gateway"))
        .map(|c| c.restart_count)
        .unwrap_or(0)
}
