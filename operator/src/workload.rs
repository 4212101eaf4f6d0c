//! The Kubernetes objects an ApiManager stands for (DESIGN.md "Deployment
//! patterns"): StatefulSets of tollgate-gateway, their Services, and an HPA
//! and a PodDisruptionBudget where they apply. A pure function of the
//! ApiManager and the operator configuration.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::{
    api::{
        apps::v1::{StatefulSet, StatefulSetSpec},
        autoscaling::v2::{
            CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricIdentifier,
            MetricSpec, MetricTarget, PodsMetricSource, ResourceMetricSource,
        },
        core::v1::{
            Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
            HTTPGetAction, KeyToPath, Lifecycle, LifecycleHandler, ObjectFieldSelector, PersistentVolumeClaim,
            PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec,
            Probe, SeccompProfile, SecretKeySelector, SecretVolumeSource, SecurityContext, Service, ServicePort,
            ServiceSpec, SleepAction, Volume, VolumeMount, VolumeResourceRequirements,
        },
        policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec},
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};
use kube::{Resource, ResourceExt};
use tollgate_crds::{
    ApiDeployment, ApiManager,
    api_deployment::ConfigMapKeyRef,
    api_manager::{AutoscalingSpec, ClientAuth, FailureMode, Pattern, PullPolicy, VolumeSpec},
    common::SecretKeyRef,
};

/// Label on every object the operator creates for an ApiManager.
pub const MANAGER_LABEL: &str = "tollgate.dev/api-manager";
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "tollgate-operator";
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";

/// Where things are mounted in the gateway container.
pub const ARTIFACT_MOUNT: &str = "/etc/tollgate/artifacts";
pub const DATA_DIR: &str = "/var/lib/tollgate";
pub const TLS_MOUNT: &str = "/etc/tollgate/tls";
pub const CLIENT_CA_MOUNT: &str = "/etc/tollgate/client-ca";
/// The key of `listeners.clientCaSecretName` that holds the CA bundle.
pub const CLIENT_CA_KEY: &str = "ca.crt";
pub const ADMIN_TOKEN_MOUNT: &str = "/etc/tollgate/admin";
/// The keys of `keyManager.signingKeySecretName`, one file per listed key.
pub const SIGNING_KEYS_MOUNT: &str = "/etc/tollgate/signing-keys";
/// `keyManager.ssaJwksConfigMapRef`, as the file [`SSA_JWKS_FILE`].
pub const SSA_JWKS_MOUNT: &str = "/etc/tollgate/ssa-jwks";
pub const SSA_JWKS_FILE: &str = "jwks.json";
/// Where a key manager without a signing-key Secret keeps the keys it
/// generates (`--key-manager-dir`): on the pod's `database` claim, so a
/// restarted pod signs with the same key and earlier tokens still verify.
pub const KEY_MANAGER_DATA: &str = "/var/lib/tollgate/database/key-manager";
/// The role that runs the built-in key manager.
pub const KEY_MANAGER_ROLE: &str = "key-manager";

/// preStop pause before SIGTERM, so Services stop sending new connections first.
pub const PRE_STOP_SECONDS: i64 = 5;

/// preStop + the gateway's drain + 5 s of margin.
pub fn termination_grace_seconds(cfg: &WorkloadConfig) -> i64 {
    PRE_STOP_SECONDS + i64::from(cfg.drain_seconds) + 5
}

/// Settings of the operator that shape the workloads.
#[derive(Clone, Debug)]
pub struct WorkloadConfig {
    pub image_repository: String,
    pub image_tag: String,
    pub artifact_claim: String,
    pub drain_seconds: u32,
}

/// One StatefulSet of an ApiManager.
#[derive(Clone, Debug, PartialEq)]
pub struct Component {
    /// `all-in-one`, `control-plane` or `gateway-<group>`.
    pub name: String,
    pub stateful_set: String,
    pub roles: Vec<&'static str>,
    pub gateway_group: Option<String>,
    /// The credentials a gateway group accepts (None: every environment).
    pub environment: Option<tollgate_crds::api_manager::GroupEnvironment>,
    /// None when an HPA owns the replica count.
    pub replicas: Option<i32>,
    pub autoscaling: Option<AutoscalingSpec>,
    pub resources: Option<k8s_openapi::api::core::v1::ResourceRequirements>,
}

impl Component {
    /// The most pods this component can run.
    pub fn max_pods(&self) -> i32 {
        self.autoscaling.as_ref().map(|a| a.max_replicas).or(self.replicas).unwrap_or(1)
    }
}

/// Everything the operator applies for one ApiManager.
#[derive(Clone, Debug, Default)]
pub struct Desired {
    pub stateful_sets: Vec<StatefulSet>,
    pub services: Vec<Service>,
    pub autoscalers: Vec<HorizontalPodAutoscaler>,
    pub disruption_budgets: Vec<PodDisruptionBudget>,
}

/// The components of the manager's pattern.
pub fn components(m: &ApiManager) -> Vec<Component> {
    let name = m.name_any();
    let analytics = m.spec.analytics.enabled;
    let mut control_roles = vec!["store", KEY_MANAGER_ROLE];
    if analytics {
        control_roles.push("analytics");
    }
    let mut all_roles = vec!["gateway"];
    all_roles.extend(control_roles.iter().copied());
    let cp = m.spec.control_plane.as_ref();
    let cp_autoscaling = cp.and_then(|c| c.autoscaling.clone());
    let cp_resources = cp.and_then(|c| c.resources.clone());
    match m.spec.pattern {
        Pattern::AllInOne => vec![Component {
            name: "all-in-one".into(),
            stateful_set: name,
            roles: all_roles,
            gateway_group: None,
            environment: None,
            replicas: Some(1),
            autoscaling: None,
            resources: cp_resources,
        }],
        Pattern::HighAvailability => vec![Component {
            name: "all-in-one".into(),
            stateful_set: name,
            roles: all_roles,
            gateway_group: None,
            environment: None,
            replicas: if cp_autoscaling.is_some() { None } else { Some(cp.and_then(|c| c.replicas).unwrap_or(2)) },
            autoscaling: cp_autoscaling,
            resources: cp_resources,
        }],
        Pattern::DistributedGateways => {
            let mut out = vec![Component {
                name: "control-plane".into(),
                stateful_set: format!("{name}-control-plane"),
                roles: control_roles,
                gateway_group: None,
                environment: None,
                replicas: if cp_autoscaling.is_some() { None } else { Some(cp.and_then(|c| c.replicas).unwrap_or(2)) },
                autoscaling: cp_autoscaling,
                resources: cp_resources,
            }];
            for g in &m.spec.gateways {
                out.push(Component {
                    name: format!("gateway-{}", g.name),
                    stateful_set: format!("{name}-gateway-{}", g.name),
                    roles: vec!["gateway"],
                    gateway_group: Some(g.name.clone()),
                    environment: Some(g.environment),
                    replicas: if g.autoscaling.is_some() { None } else { Some(g.replicas.unwrap_or(2)) },
                    autoscaling: g.autoscaling.clone(),
                    resources: g.resources.clone(),
                });
            }
            out
        }
    }
}

/// The component whose pods run the built-in key manager (the all-in-one
/// pods, or the DistributedGateways control plane).
pub fn key_manager_component(m: &ApiManager) -> Component {
    components(m).into_iter().find(|c| c.roles.contains(&KEY_MANAGER_ROLE)).expect("every pattern runs a key manager")
}

/// `http(s)://<service>.<namespace>.svc:<port>` of the key-manager pods'
/// management listener: the TLS one when the listeners have a certificate.
fn key_manager_base(m: &ApiManager) -> String {
    let svc = key_manager_component(m).stateful_set;
    let ns = m.namespace().unwrap_or_default();
    let l = &m.spec.listeners;
    if l.tls_secret_name.is_some() {
        format!("https://{svc}.{ns}.svc:{}", l.management_tls)
    } else {
        format!("http://{svc}.{ns}.svc:{}", l.management)
    }
}

/// The built-in key manager's issuer: `keyManager.issuer`, else the
/// in-cluster address of the key-manager Service + `/oauth2`.
pub fn issuer(m: &ApiManager) -> String {
    m.spec
        .key_manager
        .as_ref()
        .and_then(|k| k.issuer.clone())
        .unwrap_or_else(|| format!("{}/oauth2", key_manager_base(m)))
}

/// Where the processes without the key-manager role (DistributedGateways
/// groups) fetch the built-in key manager's JWKS: the control-plane
/// Service in the cluster, whatever the issuer's public address. With a
/// listener certificate (`listeners.tlsSecretName`) over TLS on the
/// management TLS port, verified with the CA in that Secret's `ca.crt`
/// (`--key-manager-ca`): the certificate must name the Service
/// (`<name>-control-plane.<namespace>.svc`). Without one, the plain port.
pub fn key_manager_jwks_uri(m: &ApiManager) -> String {
    format!("{}/oauth2/jwks", key_manager_base(m))
}

/// Why the built-in key manager's tokens will not verify on every pod, when
/// more than one pod runs it and no shared signing key is set.
pub fn unshared_signing_key(m: &ApiManager) -> Option<String> {
    let km = m.spec.key_manager.as_ref();
    if km.is_some_and(|k| k.signing_key_secret_name.is_some()) {
        return None;
    }
    let c = key_manager_component(m);
    let pods = c.max_pods();
    if pods <= 1 {
        return None;
    }
    let ns = m.namespace().unwrap_or_default();
    let secret = format!("{}-signing-key", m.name_any());
    Some(format!(
        "up to {pods} pods of StatefulSet {} run the key manager and keyManager.signingKeySecretName is not set: \
         each pod signs with its own generated key, so its tokens fail verification on the other pods. \
         Create a shared key with `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out signing-key.pem` \
         and `kubectl -n {ns} create secret generic {secret} --from-file=signing-key.pem`, \
         then set spec.keyManager.signingKeySecretName: {secret}",
        c.stateful_set
    ))
}

/// Labels that select the pods of one component.
pub fn selector_labels(m: &ApiManager, c: &Component) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "tollgate-gateway".to_string()),
        ("app.kubernetes.io/instance".to_string(), m.name_any()),
        (COMPONENT_LABEL.to_string(), c.name.clone()),
    ])
}

fn labels(m: &ApiManager, c: &Component) -> BTreeMap<String, String> {
    let mut l = selector_labels(m, c);
    l.insert(MANAGED_BY.into(), MANAGED_BY_VALUE.into());
    l.insert(MANAGER_LABEL.into(), m.name_any());
    l
}

fn meta(m: &ApiManager, c: &Component, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: m.namespace(),
        labels: Some(labels(m, c)),
        owner_references: m.controller_owner_ref(&()).map(|o| vec![o]),
        ..Default::default()
    }
}

/// All objects of the manager.
pub fn desired(m: &ApiManager, cfg: &WorkloadConfig) -> Desired {
    desired_for(m, cfg, None)
}

/// [`desired`], where the gateway groups (DistributedGateways with
/// `keyManager.gatewaysSignResponses`) hold the signing keys only when they
/// are in `signing` (see [`signing_groups`]); `None`: every group does.
pub fn desired_for(m: &ApiManager, cfg: &WorkloadConfig, signing: Option<&BTreeSet<String>>) -> Desired {
    let mut d = Desired::default();
    for c in components(m) {
        let holds_keys = match (&c.gateway_group, signing) {
            (Some(group), Some(groups)) => groups.contains(group),
            _ => true,
        };
        d.stateful_sets.push(stateful_set(m, &c, cfg, holds_keys));
        d.services.push(service(m, &c, format!("{}-headless", c.stateful_set), true));
        d.services.push(service(m, &c, c.stateful_set.clone(), false));
        if let Some(a) = &c.autoscaling {
            d.autoscalers.push(autoscaler(m, &c, a));
        }
        if c.max_pods() > 1 {
            d.disruption_budgets.push(PodDisruptionBudget {
                metadata: meta(m, &c, c.stateful_set.clone()),
                spec: Some(PodDisruptionBudgetSpec {
                    max_unavailable: Some(IntOrString::Int(1)),
                    selector: Some(LabelSelector { match_labels: Some(selector_labels(m, &c)), ..Default::default() }),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
    }
    d
}

fn ports(m: &ApiManager) -> [(&'static str, i32); 4] {
    let l = &m.spec.listeners;
    [("http", l.http), ("https", l.https), ("management", l.management), ("management-tls", l.management_tls)]
}

fn service(m: &ApiManager, c: &Component, name: String, headless: bool) -> Service {
    Service {
        metadata: meta(m, c, name),
        spec: Some(ServiceSpec {
            cluster_ip: headless.then(|| "None".to_string()),
            publish_not_ready_addresses: headless.then_some(true),
            selector: Some(selector_labels(m, c)),
            ports: Some(
                ports(m)
                    .into_iter()
                    .map(|(n, p)| ServicePort {
                        name: Some(n.into()),
                        port: p,
                        target_port: Some(IntOrString::String(n.into())),
                        protocol: Some("TCP".into()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn secret_env(name: &str, r: &SecretKeyRef) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector { name: r.name.clone(), key: r.key.clone(), optional: Some(false) }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector { field_path: path.into(), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn claim_template(name: &str, v: &VolumeSpec) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: v.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_string(), Quantity(v.size.0.clone()))])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("management".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Default::default()
    }
}

fn stateful_set(m: &ApiManager, c: &Component, cfg: &WorkloadConfig, holds_keys: bool) -> StatefulSet {
    let spec = &m.spec;
    let ns = m.namespace().unwrap_or_default();
    let l = &spec.listeners;
    let image = spec.image.as_ref();
    let repo = image.and_then(|i| i.repository.clone()).unwrap_or_else(|| cfg.image_repository.clone());
    let tag = image.and_then(|i| i.tag.clone()).unwrap_or_else(|| cfg.image_tag.clone());
    let pull = image.and_then(|i| i.pull_policy).map(|p| match p {
        PullPolicy::Always => "Always",
        PullPolicy::IfNotPresent => "IfNotPresent",
        PullPolicy::Never => "Never",
    });

    let mut args = vec![
        format!("--config-dir={ARTIFACT_MOUNT}"),
        format!("--data-dir={DATA_DIR}"),
        format!("--roles={}", c.roles.join(",")),
        format!("--http=0.0.0.0:{}", l.http),
        format!("--https=0.0.0.0:{}", l.https),
        format!("--management=0.0.0.0:{}", l.management),
        format!("--management-tls=0.0.0.0:{}", l.management_tls),
        format!("--drain-seconds={}", cfg.drain_seconds),
    ];
    if let Some(e) = c.environment {
        use tollgate_crds::api_manager::GroupEnvironment;
        let accepted = match e {
            GroupEnvironment::Production => "production",
            GroupEnvironment::Sandbox => "sandbox",
            GroupEnvironment::Both => "production,sandbox",
        };
        args.push(format!("--environments={accepted}"));
    }
    if let Some(g) = &c.gateway_group {
        args.push(format!("--gateway-group={g}"));
    }
    if let Some(u) = &spec.analytics.otlp_endpoint {
        args.push(format!("--otlp-endpoint={u}"));
    }
    // Every pod records and may expire usage rows: all get the same retention.
    if let Some(r) = &spec.analytics.retention {
        for (flag, days) in [("minute", r.minute_days), ("hour", r.hour_days), ("day", r.day_days)] {
            if let Some(d) = days {
                args.push(format!("--analytics-{flag}-retention-days={d}"));
            }
        }
    }
    let mut env = vec![field_env("POD_NAME", "metadata.name"), field_env("POD_NAMESPACE", "metadata.namespace")];
    if let Some(db) = spec.database.as_ref().and_then(|d| d.external.as_ref()) {
        env.push(secret_env("TOLLGATE_DATABASE_URL", &db.url_secret_ref));
    }
    if let Some(tm) = spec.traffic_manager.as_ref()
        && let Some(redis) = tm.redis.as_ref()
    {
        env.push(secret_env("TOLLGATE_REDIS_URL", &redis.url_secret_ref));
        let mode = match tm.failure_mode {
            FailureMode::Open => "open",
            FailureMode::Closed => "closed",
        };
        env.push(EnvVar { name: "TOLLGATE_REDIS_FAILURE_MODE".into(), value: Some(mode.into()), ..Default::default() });
        // Gateways of one ApiManager share counters; other managers on the same Redis do not.
        env.push(EnvVar {
            name: "TOLLGATE_REDIS_KEY_PREFIX".into(),
            value: Some(format!("tollgate:{ns}/{}", m.name_any())),
            ..Default::default()
        });
    }

    let mut mounts = vec![
        VolumeMount {
            name: "artifacts".into(),
            mount_path: ARTIFACT_MOUNT.into(),
            sub_path: Some(format!("{ns}/{}", m.name_any())),
            read_only: Some(true),
            ..Default::default()
        },
        VolumeMount {
            name: "search-index".into(),
            mount_path: format!("{DATA_DIR}/search-index"),
            ..Default::default()
        },
        VolumeMount { name: "database".into(), mount_path: format!("{DATA_DIR}/database"), ..Default::default() },
        VolumeMount { name: "tmp".into(), mount_path: "/tmp".into(), ..Default::default() },
    ];
    let mut volumes = vec![
        Volume {
            name: "artifacts".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: cfg.artifact_claim.clone(),
                read_only: Some(true),
            }),
            ..Default::default()
        },
        Volume { name: "tmp".into(), empty_dir: Some(EmptyDirVolumeSource::default()), ..Default::default() },
    ];
    if let Some(secret) = &l.tls_secret_name {
        args.push(format!("--tls-cert={TLS_MOUNT}/tls.crt"));
        args.push(format!("--tls-key={TLS_MOUNT}/tls.key"));
        mounts.push(VolumeMount {
            name: "tls".into(),
            mount_path: TLS_MOUNT.into(),
            read_only: Some(true),
            ..Default::default()
        });
        volumes.push(Volume {
            name: "tls".into(),
            secret: Some(SecretVolumeSource { secret_name: Some(secret.clone()), ..Default::default() }),
            ..Default::default()
        });
    }

    if let Some(secret) = &l.client_ca_secret_name {
        let mode = match l.client_auth {
            ClientAuth::None => "none",
            ClientAuth::Optional => "optional",
            ClientAuth::Required => "required",
        };
        args.push(format!("--client-ca={CLIENT_CA_MOUNT}/{CLIENT_CA_KEY}"));
        args.push(format!("--client-auth={mode}"));
        mounts.push(VolumeMount {
            name: "client-ca".into(),
            mount_path: CLIENT_CA_MOUNT.into(),
            read_only: Some(true),
            ..Default::default()
        });
        // Only ca.crt: a Secret made by a certificate tool may also hold a
        // private key, which the gateway has no use for.
        volumes.push(Volume {
            name: "client-ca".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.clone()),
                items: Some(vec![KeyToPath {
                    key: CLIENT_CA_KEY.into(),
                    path: CLIENT_CA_KEY.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        });
    }

    if let Some(r) = &spec.admin_token_secret_ref {
        args.push(format!("--admin-token-file={ADMIN_TOKEN_MOUNT}/token"));
        mounts.push(VolumeMount {
            name: "admin-token".into(),
            mount_path: ADMIN_TOKEN_MOUNT.into(),
            read_only: Some(true),
            ..Default::default()
        });
        volumes.push(Volume {
            name: "admin-token".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(r.name.clone()),
                items: Some(vec![KeyToPath { key: r.key.clone(), path: "token".into(), ..Default::default() }]),
                default_mode: Some(0o440),
                ..Default::default()
            }),
            ..Default::default()
        });
    }

    key_manager_flags(m, c, holds_keys, &mut args, &mut mounts, &mut volumes);

    let container = Container {
        name: "gateway".into(),
        image: Some(format!("{repo}:{tag}")),
        image_pull_policy: pull.map(str::to_string),
        args: Some(args),
        env: Some(env),
        ports: Some(
            ports(m)
                .into_iter()
                .map(|(n, p)| ContainerPort {
                    name: Some(n.into()),
                    container_port: p,
                    protocol: Some("TCP".into()),
                    ..Default::default()
                })
                .collect(),
        ),
        // Let endpoints drop the pod before SIGTERM starts the gateway's drain.
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction { seconds: PRE_STOP_SECONDS }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        readiness_probe: Some(probe("/readyz", 5, 2)),
        liveness_probe: Some(probe("/healthz", 10, 3)),
        resources: c.resources.clone(),
        volume_mounts: Some(mounts),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    };

    let init_containers = spec.persistence.fix_permissions.then(|| {
        vec![fix_permissions_container(
            container.image.clone(),
            container.image_pull_policy.clone(),
            &["search-index", "database"],
        )]
    });

    StatefulSet {
        metadata: meta(m, c, c.stateful_set.clone()),
        spec: Some(StatefulSetSpec {
            replicas: c.replicas,
            service_name: Some(format!("{}-headless", c.stateful_set)),
            pod_management_policy: Some("Parallel".into()),
            selector: LabelSelector { match_labels: Some(selector_labels(m, c)), ..Default::default() },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels(m, c)), ..Default::default() }),
                spec: Some(PodSpec {
                    init_containers,
                    containers: vec![container],
                    volumes: Some(volumes),
                    termination_grace_period_seconds: Some(termination_grace_seconds(cfg)),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(65532),
                        run_as_group: Some(65532),
                        fs_group: Some(65532),
                        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..Default::default() }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            },
            volume_claim_templates: Some(vec![
                claim_template("search-index", &spec.persistence.search_index),
                claim_template("database", &spec.persistence.database),
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `spec.persistence.fixPermissions`: the gateway image's `fix-permissions`
/// step gives the named per-pod volumes (mounted under DATA_DIR) to the
/// gateway's user; root with CAP_CHOWN only, nothing else.
fn fix_permissions_container(image: Option<String>, pull: Option<String>, volumes: &[&str]) -> Container {
    let mut args = vec!["fix-permissions".to_string(), "--uid=65532".into(), "--gid=65532".into()];
    args.extend(volumes.iter().map(|v| format!("{DATA_DIR}/{v}")));
    Container {
        name: "fix-permissions".into(),
        image,
        image_pull_policy: pull,
        args: Some(args),
        volume_mounts: Some(
            volumes
                .iter()
                .map(|v| VolumeMount { name: (*v).into(), mount_path: format!("{DATA_DIR}/{v}"), ..Default::default() })
                .collect(),
        ),
        security_context: Some(SecurityContext {
            run_as_user: Some(0),
            run_as_group: Some(0),
            run_as_non_root: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), add: Some(vec!["CHOWN".into()]) }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The gateway groups of `m` that serve an API signing its answers
/// (`openBanking.jws.signResponses`) among `apis` (the manager's own,
/// being deleted or not): an API names its groups in `gateways`, or is
/// served by every group.
pub fn signing_groups<'a>(m: &ApiManager, apis: impl IntoIterator<Item = &'a ApiDeployment>) -> BTreeSet<String> {
    let all: BTreeSet<String> = m.spec.gateways.iter().map(|g| g.name.clone()).collect();
    let mut out = BTreeSet::new();
    for api in apis {
        let signs = api.spec.open_banking.as_ref().and_then(|o| o.jws.as_ref()).is_some_and(|j| j.sign_responses);
        if !signs || api.metadata.deletion_timestamp.is_some() {
            continue;
        }
        if api.spec.gateways.is_empty() {
            out.extend(all.iter().cloned());
        } else {
            out.extend(api.spec.gateways.iter().filter(|g| all.contains(*g)).cloned());
        }
    }
    out
}

/// The built-in key manager's flags, files and volumes: its own settings on
/// the pods that run it, and on the others (DistributedGateways gateway
/// groups) the issuer and where its JWKS is.
fn key_manager_flags(
    m: &ApiManager,
    c: &Component,
    holds_keys: bool,
    args: &mut Vec<String>,
    mounts: &mut Vec<VolumeMount>,
    volumes: &mut Vec<Volume>,
) {
    args.push(format!("--issuer={}", issuer(m)));
    let km = m.spec.key_manager.clone().unwrap_or_default();
    if !c.roles.contains(&KEY_MANAGER_ROLE) {
        args.push(format!("--key-manager-jwks-uri={}", key_manager_jwks_uri(m)));
        // The control plane answers on TLS with the listeners' certificate:
        // trusted through the CA its Secret carries (ca.crt, as cert-manager
        // writes it; the same Secret is mounted for this pod's listeners).
        if m.spec.listeners.tls_secret_name.is_some() {
            args.push(format!("--key-manager-ca={TLS_MOUNT}/{CLIENT_CA_KEY}"));
        }
        // Gateway groups hold the private keys only when asked to sign
        // answers, and only the groups that serve an API that signs.
        if km.gateways_sign_responses
            && holds_keys
            && let Some(secret) = &km.signing_key_secret_name
        {
            signing_keys(&km, secret, args, mounts, volumes);
        }
        return;
    }
    if km.signing_key_secret_name.is_none() {
        args.push(format!("--key-manager-dir={KEY_MANAGER_DATA}"));
    }
    if let Some(secret) = &km.signing_key_secret_name {
        signing_keys(&km, secret, args, mounts, volumes);
    }
    if let Some(r) = &km.ssa_jwks_config_map_ref {
        args.push(format!("--ssa-jwks={SSA_JWKS_MOUNT}/{SSA_JWKS_FILE}"));
        mounts.push(VolumeMount {
            name: "ssa-jwks".into(),
            mount_path: SSA_JWKS_MOUNT.into(),
            read_only: Some(true),
            ..Default::default()
        });
        volumes.push(Volume {
            name: "ssa-jwks".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: r.name.clone(),
                items: Some(vec![KeyToPath { key: r.key.clone(), path: SSA_JWKS_FILE.into(), ..Default::default() }]),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    if let Some(ttl) = km.token_ttl_seconds {
        args.push(format!("--token-ttl-seconds={ttl}"));
    }
}

/// The signing-key Secret's listed keys, mounted read-only, one
/// --signing-key-file each (the first signs).
fn signing_keys(
    km: &tollgate_crds::api_manager::BuiltInKeyManager,
    secret: &str,
    args: &mut Vec<String>,
    mounts: &mut Vec<VolumeMount>,
    volumes: &mut Vec<Volume>,
) {
    let keys = km.signing_keys();
    for k in &keys {
        args.push(format!("--signing-key-file={SIGNING_KEYS_MOUNT}/{k}"));
    }
    mounts.push(VolumeMount {
        name: "signing-keys".into(),
        mount_path: SIGNING_KEYS_MOUNT.into(),
        read_only: Some(true),
        ..Default::default()
    });
    // Only the listed keys, readable by the gateway's group alone.
    volumes.push(Volume {
        name: "signing-keys".into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.to_string()),
            items: Some(
                keys.iter().map(|k| KeyToPath { key: k.clone(), path: k.clone(), ..Default::default() }).collect(),
            ),
            default_mode: Some(0o440),
            ..Default::default()
        }),
        ..Default::default()
    });
}

fn autoscaler(m: &ApiManager, c: &Component, a: &AutoscalingSpec) -> HorizontalPodAutoscaler {
    let mut metrics = vec![MetricSpec {
        type_: "Resource".into(),
        resource: Some(ResourceMetricSource {
            name: "cpu".into(),
            target: MetricTarget {
                type_: "Utilization".into(),
                average_utilization: Some(a.target_cpu_utilization_percentage),
                ..Default::default()
            },
        }),
        ..Default::default()
    }];
    if let Some(rps) = a.target_requests_per_second {
        metrics.push(MetricSpec {
            type_: "Pods".into(),
            pods: Some(PodsMetricSource {
                metric: MetricIdentifier { name: "tollgate_requests_per_second".into(), ..Default::default() },
                target: MetricTarget {
                    type_: "AverageValue".into(),
                    average_value: Some(Quantity(rps.to_string())),
                    ..Default::default()
                },
            }),
            ..Default::default()
        });
    }
    HorizontalPodAutoscaler {
        metadata: meta(m, c, c.stateful_set.clone()),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "StatefulSet".into(),
                name: c.stateful_set.clone(),
            },
            min_replicas: Some(a.min_replicas),
            max_replicas: a.max_replicas,
            metrics: Some(metrics),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Secrets the manager's pods need, with what each is for.
pub fn secret_refs(m: &ApiManager) -> Vec<(&'static str, SecretKeyRef)> {
    let mut out = Vec::new();
    if let Some(db) = m.spec.database.as_ref().and_then(|d| d.external.as_ref()) {
        out.push(("database.external.urlSecretRef", db.url_secret_ref.clone()));
    }
    if let Some(r) = m.spec.traffic_manager.as_ref().and_then(|t| t.redis.as_ref()) {
        out.push(("trafficManager.redis.urlSecretRef", r.url_secret_ref.clone()));
    }
    if let Some(r) = &m.spec.admin_token_secret_ref {
        out.push(("adminTokenSecretRef", r.clone()));
    }
    if let Some(name) = &m.spec.listeners.tls_secret_name {
        out.push(("listeners.tlsSecretName", SecretKeyRef { name: name.clone(), key: "tls.crt".into() }));
    }
    if let Some(name) = &m.spec.listeners.client_ca_secret_name {
        out.push(("listeners.clientCaSecretName", SecretKeyRef { name: name.clone(), key: CLIENT_CA_KEY.into() }));
    }
    if let Some(km) = &m.spec.key_manager
        && let Some(name) = &km.signing_key_secret_name
    {
        for key in km.signing_keys() {
            out.push(("keyManager.signingKeySecretName", SecretKeyRef { name: name.clone(), key }));
        }
    }
    out
}

/// ConfigMaps the manager's pods need, with what each is for.
pub fn config_map_refs(m: &ApiManager) -> Vec<(&'static str, ConfigMapKeyRef)> {
    let mut out = Vec::new();
    if let Some(r) = m.spec.key_manager.as_ref().and_then(|k| k.ssa_jwks_config_map_ref.as_ref()) {
        out.push(("keyManager.ssaJwksConfigMapRef", r.clone()));
    }
    out
}
