//! On the real node (make e2e-node): pattern 3 (DistributedGateways), a
//! control plane and two gateway groups on PostgreSQL and Redis on the
//! node's address. The gateways fetch the built-in key manager's keys from
//! the control plane by its Service's DNS name, so a TPP's token from the
//! control plane is accepted by the production group; under load from load
//! pods the production group's HPA scales up on real CPU, the new pods
//! serve the same APIs, and it scales back down once the load is gone. The
//! replica timeline is printed (`--nocapture`) for the record. Only the group
//! serving an API that signs its answers holds the signing key.

mod node_support;

use std::time::Instant;

use base64::Engine;
use k8s_openapi::api::{autoscaling::v2::HorizontalPodAutoscaler, core::v1::Pod};
use kube::api::{Api, ListParams};
use node_support::{
    ADMIN_HEADERS, WAIT, api_yaml, backend_yaml, cluster_ip, installed, kubectl_apply, secrets_yaml, uninstall,
    until_true,
};
use serde_json::{Value, json};
use tollgate_e2e::{
    node::{NodePostgres, NodeRedis},
    stack::{eventually, tool},
};

const PRODUCTION: &str = "apim-gateway-production";

fn manifests(db: &str, redis: &str, signing_key: &str, ns: &str) -> String {
    let manager = r#"
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiManager
metadata: {name: apim}
spec:
  pattern: DistributedGateways
  adminTokenSecretRef: {name: tollgate-admin, key: token}
  controlPlane:
    replicas: 2
    resources: {requests: {cpu: 50m, memory: 64Mi}, limits: {memory: 512Mi}}
  gateways:
  - name: production
    environment: Production
    autoscaling: {minReplicas: 1, maxReplicas: 3, targetCPUUtilizationPercentage: 50}
    resources: {requests: {cpu: 100m, memory: 64Mi}, limits: {memory: 256Mi}}
  - name: sandbox
    environment: Sandbox
    replicas: 1
    resources: {requests: {cpu: 50m, memory: 64Mi}, limits: {memory: 256Mi}}
  database:
    external: {urlSecretRef: {name: tollgate-db, key: url}}
  trafficManager:
    redis: {urlSecretRef: {name: tollgate-redis, key: url}}
  keyManager: {signingKeySecretName: tollgate-signing-key, gatewaysSignResponses: true}
  persistence: {fixPermissions: true}
---
apiVersion: tollgate.dev/v1alpha1
kind: ThrottlePolicy
metadata: {name: unlimited}
spec:
  limit: {requests: 1000000000, per: 1s}
  keyBy: Consumer
"#;
    [
        secrets_yaml(db, redis, signing_key),
        manager.to_string(),
        api_yaml(ns, "accounts", "/open-banking/aisp", "v3.1", &["security: {oauth2: {}}"]),
        api_yaml(
            ns,
            "signed",
            "/signed",
            "v1",
            &["gateways: [production]", "openBanking: {jws: {signResponses: true}}"],
        ),
        api_yaml(ns, "rates", "/rates", "v1", &[]),
    ]
    .concat()
}

/// Load pods: busybox clients calling the production group through its
/// Service's DNS name, one request after another.
fn load_yaml(ns: &str, replicas: u32) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: load}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: load}}}}
  template:
    metadata: {{labels: {{app: load}}}}
    spec:
      securityContext: {{runAsUser: 65532, runAsGroup: 65532, runAsNonRoot: true}}
      terminationGracePeriodSeconds: 1
      containers:
      - name: load
        image: tollgate.test/busybox:1
        imagePullPolicy: Never
        command: [sh, -c, 'while true; do wget -q -O /dev/null http://{PRODUCTION}.{ns}.svc.cluster.local:8280/rates/v1/accounts/1; done']
"#
    )
}

async fn admin(node: &tollgate_e2e::node::NodeNet, addr: std::net::SocketAddr, path: &str, body: Value) -> Value {
    let auth = ADMIN_HEADERS;
    let (status, text) = node.request(addr, "POST", path, &auth, &body.to_string()).await.expect("management API");
    assert!(status == 201 || status == 200, "POST {path}: {status} {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("POST {path}: {e}: {text}"))
}

/// The HPA's replica counts each time they changed.
struct Timeline {
    start: Instant,
    points: std::sync::Mutex<Vec<(u64, i32, i32)>>,
}

impl Timeline {
    fn new() -> Timeline {
        Timeline { start: Instant::now(), points: std::sync::Mutex::new(Vec::new()) }
    }

    fn record(&self, hpa: &HorizontalPodAutoscaler) {
        let (current, desired) = replicas_of(hpa);
        let mut points = self.points.lock().unwrap();
        if points.last().is_none_or(|l| (l.1, l.2) != (current, desired)) {
            points.push((self.start.elapsed().as_secs(), current, desired));
        }
    }
}

fn replicas_of(hpa: &HorizontalPodAutoscaler) -> (i32, i32) {
    let s = hpa.status.clone().unwrap_or_default();
    (s.current_replicas.unwrap_or(0), s.desired_replicas)
}

#[tokio::test]
async fn distributed_gateways_trust_the_control_plane_by_dns_and_the_production_group_autoscales_on_cpu() {
    let t = installed("node-p3").await;
    let (cluster, node, client, ns) = (&t.cluster, t.node.clone(), t.cluster.client.clone(), t.ns.clone());
    let work = tempfile::tempdir().unwrap();
    let postgres = NodePostgres::start(&node);
    let redis = NodeRedis::start(&node, work.path());
    let signing_key = rcgen::KeyPair::generate().expect("key").serialize_pem();
    kubectl_apply(cluster, &ns, &backend_yaml(1));
    kubectl_apply(cluster, &ns, &manifests(&postgres.url, &redis.url, &signing_key, &ns));

    until_true(&client, &ns, "ApiManager", "apim", "Ready").await;
    until_true(&client, &ns, "ApiDeployment", "accounts", "Deployed").await;
    until_true(&client, &ns, "ApiDeployment", "rates", "Deployed").await;

    // Only the group serving the API that signs holds the private key.
    let sets: Api<k8s_openapi::api::apps::v1::StatefulSet> = Api::namespaced(client.clone(), &ns);
    let mounts_key = |sts: &k8s_openapi::api::apps::v1::StatefulSet| {
        sts.spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|p| p.volumes.as_ref())
            .is_some_and(|v| v.iter().any(|v| v.name == "signing-keys"))
    };
    let keys = eventually(WAIT, "the signing keys on the production group only", || async {
        let mut out = Vec::new();
        for name in ["apim-control-plane", PRODUCTION, "apim-gateway-sandbox"] {
            out.push(mounts_key(&sets.get(name).await.map_err(|e| e.to_string())?));
        }
        if out == [true, true, false] { Ok(out) } else { Err(format!("{out:?}")) }
    })
    .await;
    assert_eq!(keys, [true, true, false]);
    until_true(&client, &ns, "ApiDeployment", "signed", "Deployed").await;
    until_true(&client, &ns, "ApiManager", "apim", "Ready").await;

    // The production gateways fetch the keys from the control plane's
    // Service by name.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let gateway_pod = pods.get(&format!("{PRODUCTION}-0")).await.expect("production pod");
    let args = gateway_pod.spec.unwrap().containers[0].args.clone().unwrap_or_default();
    let jwks = format!("--key-manager-jwks-uri=http://apim-control-plane.{ns}.svc:9763/oauth2/jwks");
    assert!(
        args.iter().any(|a| a.starts_with(&format!("--key-manager-jwks-uri=http://apim-control-plane.{ns}.svc"))),
        "{jwks} in {args:?}"
    );

    // A TPP's client of the built-in key manager, subscribed; its token
    // from the control plane opens the API on the production group.
    let control = std::net::SocketAddr::from((cluster_ip(&client, &ns, "apim-control-plane").await, 9763));
    let production = std::net::SocketAddr::from((cluster_ip(&client, &ns, PRODUCTION).await, 8280));
    let app = eventually(WAIT, "the store answers on the control plane", || {
        let node = node.clone();
        async move {
            let auth = ADMIN_HEADERS;
            match node.request(control, "POST", "/api/v1/applications", &auth, r#"{"name":"tpp-p3"}"#).await {
                Ok((201, body)) => serde_json::from_str::<Value>(&body).map_err(|e| e.to_string()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    let app_id = app["id"].as_str().unwrap().to_string();
    admin(
        &node,
        control,
        "/api/v1/subscriptions",
        json!({"applicationId": app_id, "api": format!("{ns}/accounts"), "policy": "unlimited"}),
    )
    .await;
    let oauth = admin(
        &node,
        control,
        &format!("/api/v1/applications/{app_id}/oauth-clients"),
        json!({"tokenEndpointAuthMethod": "client_secret_basic", "scopes": ["accounts"]}),
    )
    .await;
    let (id, secret) = (oauth["clientId"].as_str().unwrap(), oauth["clientSecret"].as_str().unwrap());
    let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}")));
    let form = [("Authorization", basic.as_str()), ("Content-Type", "application/x-www-form-urlencoded")];
    let (status, body) = node
        .request(control, "POST", "/oauth2/token", &form, "grant_type=client_credentials&scope=accounts")
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let token: Value = serde_json::from_str(&body).unwrap();
    let bearer = format!("Bearer {}", token["access_token"].as_str().unwrap());
    eventually(WAIT, "the production group answers 401 without a token", || {
        let node = node.clone();
        async move {
            match node.request(production, "GET", "/open-banking/aisp/v3.1/accounts/1", &[], "").await {
                Ok((401, _)) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    let answer = eventually(WAIT, "the control plane's token accepted on the production group", || {
        let (node, bearer) = (node.clone(), bearer.clone());
        async move {
            match node
                .request(production, "GET", "/open-banking/aisp/v3.1/accounts/1", &[("Authorization", &bearer)], "")
                .await
            {
                Ok((200, body)) => Ok(body),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    assert!(answer.contains(r#""AccountId":"1""#), "{answer}");

    // Autoscaling on real CPU.
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &ns);
    eventually(WAIT, "the HPA reads CPU metrics", || async {
        let hpa = hpas.get(PRODUCTION).await.map_err(|e| e.to_string())?;
        let current = hpa.status.as_ref().and_then(|s| s.current_metrics.clone()).unwrap_or_default();
        if current.iter().any(|m| m.resource.as_ref().is_some_and(|r| r.current.average_utilization.is_some())) {
            Ok(())
        } else {
            Err(format!("{:?}", hpa.status))
        }
    })
    .await;
    let timeline = Timeline::new();
    kubectl_apply(cluster, &ns, &load_yaml(&ns, 3));
    let scaled = eventually(WAIT, "the production group scaled up under load", || {
        let (hpas, timeline) = (hpas.clone(), &timeline);
        async move {
            let hpa = hpas.get(PRODUCTION).await.map_err(|e| e.to_string())?;
            timeline.record(&hpa);
            let (current, _) = replicas_of(&hpa);
            if current >= 2 { Ok(current) } else { Err(format!("{:?}", hpa.status)) }
        }
    })
    .await;
    // The new pods become Ready and serve the same APIs.
    let selector = format!("app.kubernetes.io/instance=apim,statefulset.kubernetes.io/pod-name!={PRODUCTION}-0");
    let served = eventually(WAIT, "the new production pods serve the APIs", || {
        let (pods, node, selector) = (pods.clone(), node.clone(), selector.clone());
        async move {
            let list = pods.list(&ListParams::default().labels(&selector)).await.map_err(|e| e.to_string())?.items;
            let new: Vec<&Pod> = list
                .iter()
                .filter(|p| p.metadata.name.as_deref().is_some_and(|n| n.starts_with(PRODUCTION)))
                .filter(|p| node_support::is_ready(p))
                .collect();
            if new.is_empty() {
                return Err("no new production pod Ready yet".into());
            }
            let mut names = Vec::new();
            for p in new {
                let ip: std::net::IpAddr = p
                    .status
                    .as_ref()
                    .and_then(|s| s.pod_ip.clone())
                    .ok_or("no IP")?
                    .parse()
                    .map_err(|e: std::net::AddrParseError| e.to_string())?;
                let (status, body) = node
                    .request((ip, 8280).into(), "GET", "/rates/v1/accounts/1", &[], "")
                    .await
                    .map_err(|e| e.to_string())?;
                if status != 200 || !body.contains("AccountId") {
                    return Err(format!("{:?}: {status} {body}", p.metadata.name));
                }
                names.push(p.metadata.name.clone().unwrap_or_default());
            }
            Ok(names)
        }
    })
    .await;
    eprintln!("scaled to {scaled}; new pods serving: {served:?}");

    // Without the load it scales back down.
    tool(cluster, "kubectl", &["-n", &ns, "delete", "deployment", "load", "--wait=true", "--timeout=300s"]);
    eventually(WAIT * 2, "the production group scaled back down", || {
        let (hpas, timeline) = (hpas.clone(), &timeline);
        async move {
            let hpa = hpas.get(PRODUCTION).await.map_err(|e| e.to_string())?;
            timeline.record(&hpa);
            let (current, desired) = replicas_of(&hpa);
            if current == 1 && desired == 1 { Ok(()) } else { Err(format!("{:?}", hpa.status)) }
        }
    })
    .await;
    let timeline = timeline.points.into_inner().unwrap();
    eprintln!("HPA {PRODUCTION} timeline (seconds since the load started, current, desired): {timeline:?}");
    assert!(timeline.iter().any(|t| t.1 >= 2), "{timeline:?}");
    assert_eq!(timeline.last().map(|t| (t.1, t.2)), Some((1, 1)), "{timeline:?}");

    uninstall(cluster, &ns, t.release);
    drop(postgres);
    drop(redis);
}
