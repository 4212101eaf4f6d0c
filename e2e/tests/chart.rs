//! The Helm chart (charts/tollgate) with a real helm and kube-apiserver:
//! lint, render + server-side dry run, install / upgrade / uninstall, and the
//! operator ServiceAccount's permissions checked with `kubectl auth can-i`.

use std::{collections::BTreeSet, time::Duration};

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::PersistentVolumeClaim,
    rbac::v1::{ClusterRole, ClusterRoleBinding, RoleBinding},
};
use kube::api::Api;
use serde_json::Value;
use tollgate_e2e::{
    Cluster, install_crds, repo_root,
    stack::{ArtifactVolume, eventually, run_tool, tool},
    yaml_to_json,
};

fn chart() -> String {
    repo_root().join("charts/tollgate").display().to_string()
}

/// Every key of values.yaml is described by values.schema.json.
#[test]
fn values_schema_covers_every_value() {
    fn walk(values: &Value, schema: &Value, path: &str, missing: &mut Vec<String>) {
        let Some(map) = values.as_object() else { return };
        let Some(props) = schema.get("properties").and_then(Value::as_object) else {
            return; // a free-form object (resources, affinity, ...)
        };
        for (k, v) in map {
            match props.get(k) {
                None => missing.push(format!("{path}.{k}")),
                Some(s) => {
                    if s.get("description").and_then(Value::as_str).is_none_or(str::is_empty) {
                        missing.push(format!("{path}.{k} (no description)"));
                    }
                    walk(v, s, &format!("{path}.{k}"), missing);
                }
            }
        }
    }
    let dir = repo_root().join("charts/tollgate");
    let values = yaml_to_json(&std::fs::read_to_string(dir.join("values.yaml")).unwrap()).unwrap();
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("values.schema.json")).unwrap()).unwrap();
    let mut missing = Vec::new();
    walk(&values, &schema, "", &mut missing);
    assert!(missing.is_empty(), "values without schema: {missing:?}");
    // The chart README documents every top-level value.
    let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
    for k in values.as_object().unwrap().keys() {
        assert!(readme.contains(&format!("`{k}")), "charts/tollgate/README.md does not document {k}");
    }
}

#[tokio::test]
async fn chart_lints_and_every_rendering_passes_a_server_side_dry_run() {
    let cluster = Cluster::connect().await;
    install_crds(&cluster.client).await;
    let ns = cluster.namespace("chart-dry-run").await;
    let out = tool(&cluster, "helm", &["lint", "--strict", &chart()]);
    assert!(out.contains("0 chart(s) failed") && !out.contains("[WARNING]"), "{out}");

    // Namespaced objects for other namespaces need them to exist for a dry run.
    let (team_a, team_b) = (format!("{}-a", ns.name()), format!("{}-b", ns.name()));
    for team in [&team_a, &team_b] {
        tool(&cluster, "kubectl", &["create", "namespace", team]);
    }
    let watch_one = format!("watchNamespaces={{{team_a}}}");
    let secrets_in = format!("rbac.secretNamespaces={{{team_a},{team_b}}}");
    let variants: [&[&str]; 4] = [
        &[],
        &["--set", &watch_one, "--set", "replicaCount=3"],
        &[
            "--set",
            "apiManager.enabled=true",
            "--set",
            "artifacts.existingClaim=shared",
            "--set",
            "leaderElection.enabled=false",
        ],
        &[
            "--set",
            &secrets_in,
            "--set",
            "artifacts.storageClassName=-",
            "--set",
            "metrics.service.enabled=false",
            "--set",
            "grafanaDashboard.enabled=true",
        ],
    ];
    for extra in variants {
        let chart = chart();
        let mut args = vec!["template", "tg-dry", &chart, "--namespace", ns.name(), "--include-crds"];
        args.extend_from_slice(extra);
        let rendered = tool(&cluster, "helm", &args);
        let kubectl =
            ["apply", "--server-side", "--dry-run=server", "--force-conflicts", "--field-manager=helm-e2e", "-f", "-"];
        let (ok, out) = run_tool(&cluster, "kubectl", &kubectl, Some(&rendered));
        assert!(ok, "server-side dry run of `helm template {extra:?}` failed:\n{out}");
        assert!(out.contains("deployment.apps/tg-dry-tollgate-operator serverside-applied (server dry run)"), "{out}");
    }
    // The ServiceMonitor renders (its CRD is not installed here, so no dry run).
    let rendered =
        tool(&cluster, "helm", &["template", "tg-dry", &chart(), "--set", "metrics.serviceMonitor.enabled=true"]);
    assert!(rendered.contains("kind: ServiceMonitor"));
    // The dashboard is off by default; on, its JSON is a Grafana dashboard over our metrics.
    assert!(!tool(&cluster, "helm", &["template", "tg-dry", &chart()]).contains("grafana_dashboard"));
    let rendered = tool(&cluster, "helm", &["template", "tg-dry", &chart(), "--set", "grafanaDashboard.enabled=true"]);
    let doc = rendered.split("\n---").find(|d| d.contains("grafana_dashboard")).expect("the dashboard ConfigMap");
    let cm: serde_json::Value = serde_saphyr::from_str(doc).unwrap();
    let dash: serde_json::Value =
        serde_json::from_str(cm["data"]["tollgate-gateway.json"].as_str().unwrap()).expect("valid dashboard JSON");
    assert_eq!(dash["uid"], "tollgate-gateway");
    assert!(dash["panels"].as_array().unwrap().iter().any(|p| p.to_string().contains("tollgate_requests_total")));
    // Bad values are refused by the schema with a clear message.
    let (ok, out) = run_tool(&cluster, "helm", &["template", "tg-dry", &chart(), "--set", "replicaCount=0"], None);
    assert!(!ok && out.contains("replicaCount"), "{out}");
    for team in [&team_a, &team_b] {
        let _ = run_tool(&cluster, "kubectl", &["delete", "namespace", team, "--wait=false"], None);
    }
}

/// `helm upgrade` of the release keeping its values, with `sets` changed.
fn upgrade(cluster: &Cluster, release: &str, ns: &str, sets: &[&str]) {
    let chart = chart();
    let mut args = vec!["upgrade", release, &chart, "--namespace", ns, "--reuse-values"];
    for s in sets {
        args.extend(["--set", s]);
    }
    args.extend(["--wait", "--timeout", "120s"]);
    tool(cluster, "helm", &args);
}

fn can_i(cluster: &Cluster, sa: &str, verb_resource: &[&str]) -> bool {
    let mut args = vec!["auth", "can-i", "--as", sa];
    args.extend_from_slice(verb_resource);
    let (_, out) = run_tool(cluster, "kubectl", &args, None);
    // (Cluster-scoped resources come with a warning line on stderr.)
    out.lines().any(|l| l.trim() == "yes")
}

#[tokio::test]
async fn chart_installs_upgrades_and_uninstalls_with_least_privilege() {
    let cluster = Cluster::connect().await;
    install_crds(&cluster.client).await;
    let ns = cluster.namespace("chart").await;
    let ns = ns.name().to_string();
    let release = format!("r{}", &ns[ns.len() - 8..]);
    let operator = format!("{release}-tollgate-operator");
    let sa = format!("system:serviceaccount:{ns}:{operator}");
    let work = tempfile::tempdir().unwrap();
    let _pv = ArtifactVolume::volume_only(&cluster, &ns, "tollgate-artifacts", &work.path().join("artifacts")).await;
    let client = cluster.client.clone();

    let install = [
        "install",
        &release,
        &chart(),
        "--namespace",
        &ns,
        "--set",
        "artifacts.storageClassName=-",
        "--wait",
        "--timeout",
        "120s",
    ];
    let out = tool(&cluster, "helm", &install);
    assert!(out.contains("STATUS: deployed") && out.contains("watches all namespaces"), "{out}");

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let d = deployments.get(&operator).await.expect("operator Deployment");
    let spec = d.spec.clone().unwrap();
    assert_eq!(spec.replicas, Some(2));
    assert_eq!(d.status.and_then(|s| s.ready_replicas), Some(2), "helm --wait saw the pods Ready");
    let pod = spec.template.spec.unwrap();
    let c = &pod.containers[0];
    let sc = c.security_context.clone().unwrap();
    assert_eq!(
        (sc.run_as_non_root, sc.read_only_root_filesystem, sc.allow_privilege_escalation),
        (Some(true), Some(true), Some(false))
    );
    assert_eq!(sc.capabilities.unwrap().drop, Some(vec!["ALL".to_string()]));
    assert_eq!(pod.security_context.unwrap().seccomp_profile.unwrap().type_, "RuntimeDefault");
    let args = c.args.clone().unwrap();
    assert!(
        args.contains(&"--leader-election=true".to_string())
            && args.contains(&"--artifact-claim=tollgate-artifacts".to_string())
    );
    assert!(c.readiness_probe.is_some() && c.liveness_probe.is_some() && c.resources.is_some());
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    let pvc = pvcs.get("tollgate-artifacts").await.expect("artifact claim");
    assert_eq!(pvc.status.and_then(|s| s.phase).as_deref(), Some("Bound"));
    Api::<ClusterRoleBinding>::all(client.clone()).get(&operator).await.expect("ClusterRoleBinding");
    let role = Api::<ClusterRole>::all(client.clone()).get(&operator).await.expect("ClusterRole");
    for rule in role.rules.unwrap_or_default() {
        let all = [
            rule.verbs.clone(),
            rule.resources.clone().unwrap_or_default(),
            rule.api_groups.clone().unwrap_or_default(),
        ];
        assert!(all.iter().flatten().all(|x| x != "*"), "no wildcards: {rule:?}");
    }

    // What the operator may and may not do.
    let yes: [&[&str]; 10] = [
        &["list", "apideployments.tollgate.dev", "--all-namespaces"],
        &["patch", "apimanagers.tollgate.dev", "--subresource=status", "-n", "default"],
        &["update", "apimanagers.tollgate.dev", "--subresource=finalizers", "-n", "default"],
        &["patch", "statefulsets.apps", "-n", "default"],
        &["delete", "horizontalpodautoscalers.autoscaling", "-n", "default"],
        &["create", "poddisruptionbudgets.policy", "-n", "default"],
        &["create", "events.events.k8s.io", "-n", "default"],
        &["update", "leases.coordination.k8s.io", "-n", &ns],
        &["get", "secrets", "-n", &ns],
        &["list", "pods", "-n", "default"],
    ];
    for q in yes {
        assert!(can_i(&cluster, &sa, q), "the operator should be allowed to {q:?}");
    }
    let no: [&[&str]; 17] = [
        &["patch", "apimanagers.tollgate.dev", "-n", "default"],
        &["update", "apideployments.tollgate.dev", "-n", "default"],
        &["patch", "throttlepolicies.tollgate.dev", "-n", "default"],
        &["update", "apimanagers.tollgate.dev", "--subresource=status", "-n", "default"],
        &["get", "namespaces"],
        &["get", "secrets", "-n", "kube-system"],
        &["list", "secrets", "-n", &ns],
        &["watch", "secrets", "--all-namespaces"],
        &["create", "clusterroles.rbac.authorization.k8s.io"],
        &["create", "clusterrolebindings.rbac.authorization.k8s.io"],
        &["delete", "nodes"],
        &["create", "namespaces"],
        &["update", "leases.coordination.k8s.io", "-n", "kube-system"],
        &["delete", "customresourcedefinitions.apiextensions.k8s.io"],
        &["create", "pods", "-n", &ns],
        &["get", "pods", "-n", "default"],
        &["delete", "pods", "-n", "default"],
    ];
    for q in no {
        assert!(!can_i(&cluster, &sa, q), "the operator must not be allowed to {q:?}");
    }

    // Upgrade with changed values: 3 replicas, one watched namespace.
    let watch = format!("watchNamespaces={{{ns}}}");
    upgrade(&cluster, &release, &ns, &["replicaCount=3", &watch]);
    let spec = deployments.get(&operator).await.unwrap().spec.unwrap();
    assert_eq!(spec.replicas, Some(3));
    assert!(
        spec.template.spec.unwrap().containers[0].args.clone().unwrap().contains(&format!("--watch-namespaces={ns}"))
    );
    eventually(Duration::from_secs(10), "ClusterRoleBinding replaced by a RoleBinding", || async {
        let crb = Api::<ClusterRoleBinding>::all(client.clone()).get_opt(&operator).await.map_err(|e| e.to_string())?;
        let rb =
            Api::<RoleBinding>::namespaced(client.clone(), &ns).get_opt(&operator).await.map_err(|e| e.to_string())?;
        if crb.is_none() && rb.is_some() {
            Ok(())
        } else {
            Err(format!("crb {:?} rb {:?}", crb.is_some(), rb.is_some()))
        }
    })
    .await;
    assert!(can_i(&cluster, &sa, &["list", "apideployments.tollgate.dev", "-n", &ns]));
    assert!(!can_i(&cluster, &sa, &["list", "apideployments.tollgate.dev", "-n", "default"]), "namespaced only now");

    // Two watched namespaces: one watch across them (cluster-wide reads),
    // writes only in them; namespace labels only when asked for.
    let other = cluster.namespace("chart-b").await;
    let watch_two = format!("watchNamespaces={{{ns},{}}}", other.name());
    upgrade(&cluster, &release, &ns, &[&watch_two, "rbac.readNamespaces=true"]);
    eventually(Duration::from_secs(10), "reads cluster-wide, writes in the two namespaces", || async {
        let checks = [
            can_i(&cluster, &sa, &["list", "apideployments.tollgate.dev", "--all-namespaces"]),
            can_i(&cluster, &sa, &["patch", "statefulsets.apps", "-n", other.name()]),
            !can_i(&cluster, &sa, &["patch", "statefulsets.apps", "-n", "default"]),
            !can_i(&cluster, &sa, &["patch", "apideployments.tollgate.dev", "--subresource=status", "-n", "default"]),
            can_i(&cluster, &sa, &["get", "namespaces"]),
        ];
        if checks.iter().all(|c| *c) { Ok(()) } else { Err(format!("{checks:?}")) }
    })
    .await;

    // Uninstall: the release's objects go; the artifact claim stays (kept on purpose), CRDs stay.
    tool(&cluster, "helm", &["uninstall", &release, "--namespace", &ns, "--wait"]);
    assert!(deployments.get_opt(&operator).await.unwrap().is_none());
    assert!(Api::<ClusterRole>::all(client.clone()).get_opt(&operator).await.unwrap().is_none());
    let selector = format!("app.kubernetes.io/instance={release}");
    let left = tool(
        &cluster,
        "kubectl",
        &["get", "all,sa,role,rolebinding,pdb,pvc,cm", "-n", &ns, "-l", &selector, "-o", "name"],
    );
    let left: BTreeSet<&str> = left.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(left, BTreeSet::from(["persistentvolumeclaim/tollgate-artifacts"]), "only the kept claim remains");
    let crds = tool(&cluster, "kubectl", &["get", "crd", "apideployments.tollgate.dev", "-o", "name"]);
    assert!(crds.contains("apideployments.tollgate.dev"), "CRDs are kept");
}
