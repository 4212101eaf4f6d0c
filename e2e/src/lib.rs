//! End-to-end test support for Tollgate (tests live in `e2e/tests/`).
//!
//! The tests run against the cluster named by `KUBECONFIG`, so they work
//! unchanged against kind or k3d. Without `KUBECONFIG` they use the local
//! control plane's admin kubeconfig (`target/cluster/kubeconfig`, written by
//! `make cluster-up`). With neither, every test fails with a message that says
//! how to start a cluster: an e2e test never passes without a cluster.
//!
//! - [`Cluster::connect`]: a [`kube::Client`] (plus its [`kube::Config`]),
//!   checked to reach the apiserver.
//! - [`install_crds`]: server-side apply of the three CRDs from
//!   [`tollgate_crds::crds`] (field manager [`FIELD_MANAGER`]), then waits
//!   until each is Established and its resource is served.
//! - [`TestNamespace`]: a uniquely named namespace per test, deleted
//!   (best effort) when the guard is dropped, also when the test panics.

pub mod node;
pub mod stack;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, Config};
use serde_json::{Value, json};

/// Field manager of everything the e2e tests apply.
pub const FIELD_MANAGER: &str = "tollgate-e2e";

/// Label put on every namespace the tests create (value `true`), so leftovers
/// can be removed with `kubectl delete ns -l tollgate.dev/e2e=true`.
pub const NAMESPACE_LABEL: &str = "tollgate.dev/e2e";

/// Set to `1` to keep test namespaces for inspection instead of deleting them.
pub const KEEP_NAMESPACES_ENV: &str = "TOLLGATE_E2E_KEEP_NAMESPACES";

/// How long to wait for the apiserver to answer at all.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long to wait for CRDs to become Established and served.
const CRD_TIMEOUT: Duration = Duration::from_secs(120);

/// Root of the repository (the workspace).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("e2e/ has a parent").to_path_buf()
}

/// The local control plane's admin kubeconfig: `target/cluster/kubeconfig`
/// (or `$CLUSTER_STATE_DIR/kubeconfig`, as in e2e/cluster/lib.sh).
pub fn local_kubeconfig() -> PathBuf {
    match std::env::var_os("CLUSTER_STATE_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("kubeconfig"),
        None => repo_root().join("target/cluster/kubeconfig"),
    }
}

/// Where the cluster's kubeconfig comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KubeconfigSource {
    /// The `KUBECONFIG` environment variable (one or more files).
    Env(String),
    /// The local control plane's kubeconfig file.
    Local(PathBuf),
}

impl std::fmt::Display for KubeconfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KubeconfigSource::Env(v) => write!(f, "KUBECONFIG={v}"),
            KubeconfigSource::Local(p) => write!(f, "{}", p.display()),
        }
    }
}

/// The message every e2e test fails with when there is no cluster.
pub fn no_cluster_message() -> String {
    format!(
        "no Kubernetes cluster for the e2e tests: KUBECONFIG is not set and {} does not exist.\n\
         Start the local control plane with `make cluster-up` (or e2e/cluster/up.sh) and run the tests again,\n\
         or run them with `make e2e` (starts and stops the cluster itself),\n\
         or point KUBECONFIG at a cluster of your own (kind, k3d, ...).",
        local_kubeconfig().display()
    )
}

/// Picks the kubeconfig: `KUBECONFIG` when set (and not empty), else the local
/// control plane's file when it exists, else an error ([`no_cluster_message`]).
pub fn kubeconfig_source() -> Result<KubeconfigSource, String> {
    if let Some(v) = std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) {
        return Ok(KubeconfigSource::Env(v.to_string_lossy().into_owned()));
    }
    let local = local_kubeconfig();
    if local.is_file() { Ok(KubeconfigSource::Local(local)) } else { Err(no_cluster_message()) }
}

/// A connected client and the configuration it was made from.
#[derive(Clone)]
pub struct Cluster {
    /// Client bound to the current test's tokio runtime.
    pub client: Client,
    /// The configuration, for clients on other runtimes (see [`TestNamespace`]).
    pub config: Config,
    /// Where the kubeconfig came from.
    pub source: KubeconfigSource,
}

impl Cluster {
    /// Connects to the e2e cluster. Panics with a clear message when there is
    /// no cluster, the kubeconfig is unusable or the apiserver does not answer.
    pub async fn connect() -> Cluster {
        match Self::try_connect().await {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        }
    }

    /// [`Cluster::connect`] without the panic.
    pub async fn try_connect() -> Result<Cluster, String> {
        let source = kubeconfig_source()?;
        let kubeconfig = match &source {
            KubeconfigSource::Env(_) => Kubeconfig::from_env()
                .map_err(|e| format!("cannot read the kubeconfig from {source}: {e}"))?
                .ok_or_else(no_cluster_message)?,
            KubeconfigSource::Local(path) => {
                Kubeconfig::read_from(path).map_err(|e| format!("cannot read the kubeconfig {source}: {e}"))?
            }
        };
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(|e| format!("unusable kubeconfig {source}: {e}"))?;
        let client = Client::try_from(config.clone()).map_err(|e| format!("cannot build a client ({source}): {e}"))?;
        let hint = match &source {
            KubeconfigSource::Local(_) => " (a stale target/cluster? `make cluster-up` restarts it; or run `make e2e`)",
            KubeconfigSource::Env(_) => "",
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, client.apiserver_version()).await {
            Ok(Ok(_)) => Ok(Cluster { client, config, source }),
            Ok(Err(e)) => Err(format!("the apiserver at {} ({source}) does not answer: {e}{hint}", config.cluster_url)),
            Err(_) => Err(format!(
                "the apiserver at {} ({source}) did not answer within {CONNECT_TIMEOUT:?}{hint}",
                config.cluster_url
            )),
        }
    }

    /// Creates a fresh namespace for one test; see [`TestNamespace`].
    pub async fn namespace(&self, test: &str) -> TestNamespace {
        TestNamespace::create(self, test).await
    }
}

/// Installs or updates the three Tollgate CRDs by server-side apply (field
/// manager [`FIELD_MANAGER`], forced), waits until each is Established and its
/// resource answers a list, and returns them as the apiserver stored them.
pub async fn install_crds(client: &Client) -> Vec<CustomResourceDefinition> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let mut names = Vec::new();
    for (_, crd) in tollgate_crds::crds() {
        let name = crd.metadata.name.clone().expect("generated CRDs are named");
        api.patch(&name, &pp, &Patch::Apply(&crd))
            .await
            .unwrap_or_else(|e| panic!("apply of CRD {name} rejected: {}", error_message(&e)));
        names.push(name);
    }
    let mut installed = Vec::new();
    for name in &names {
        let established =
            tokio::time::timeout(CRD_TIMEOUT, await_condition(api.clone(), name, conditions::is_crd_established()))
                .await;
        let crd = match established {
            Ok(Ok(Some(crd))) => crd,
            Ok(Ok(None)) => panic!("CRD {name} disappeared while waiting for Established"),
            Ok(Err(e)) => panic!("watching CRD {name}: {e}"),
            Err(_) => {
                let status = api.get(name).await.ok().and_then(|c| c.status);
                panic!("CRD {name} not Established after {CRD_TIMEOUT:?}; status: {status:?}")
            }
        };
        wait_served(client, &crd).await;
        installed.push(crd);
    }
    installed
}

/// Waits until the CRD's resource answers a list (Established comes a moment
/// before the handler serves requests).
async fn wait_served(client: &Client, crd: &CustomResourceDefinition) {
    let ar = api_resource_of(crd);
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let deadline = Instant::now() + CRD_TIMEOUT;
    loop {
        match api.list(&ListParams::default().limit(1)).await {
            Ok(_) => return,
            Err(e) if Instant::now() >= deadline => {
                panic!("{} not served {CRD_TIMEOUT:?} after Established: {}", ar.plural, error_message(&e))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// The [`ApiResource`] (group, version, kind, plural) of a CRD's served version.
pub fn api_resource_of(crd: &CustomResourceDefinition) -> ApiResource {
    let version =
        crd.spec.versions.iter().find(|v| v.storage).or(crd.spec.versions.first()).expect("a CRD has a version");
    let gvk = GroupVersionKind::gvk(&crd.spec.group, &version.name, &crd.spec.names.kind);
    ApiResource::from_gvk_with_plural(&gvk, &crd.spec.names.plural)
}

/// The [`ApiResource`] of a Tollgate kind (`ApiManager`, `ApiDeployment`,
/// `ThrottlePolicy`), from the generated CRDs.
pub fn tollgate_resource(kind: &str) -> Option<ApiResource> {
    tollgate_crds::crds().into_iter().map(|(_, crd)| api_resource_of(&crd)).find(|ar| ar.kind == kind)
}

/// An apiserver error as one line: `<code> <reason>: <message>` for API
/// errors (the text `kubectl` shows), the error itself otherwise.
pub fn error_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} {}: {}", s.code, s.reason, s.message),
        other => other.to_string(),
    }
}

/// Creates an object from a manifest (`POST`, `fieldValidation=Strict`, like
/// `kubectl create`) in `namespace`, whatever namespace the manifest names.
pub async fn create_manifest(client: &Client, namespace: &str, manifest: &Value) -> Result<DynamicObject, kube::Error> {
    let (api, body) = dynamic_api(client, namespace, manifest)?;
    let pp = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    // kube's PostParams has no fieldValidation; build the request to add it.
    let mut req = kube::core::Request::new(api.resource_url())
        .create(&pp, serde_json::to_vec(&body).map_err(kube::Error::SerdeError)?)
        .map_err(kube::Error::BuildRequest)?;
    let uri = format!("{}&fieldValidation=Strict", req.uri());
    *req.uri_mut() = uri.parse().expect("a valid URI stays valid");
    client.request::<DynamicObject>(req).await
}

/// Server-side applies a manifest (field manager [`FIELD_MANAGER`], forced,
/// `fieldValidation=Strict`) in `namespace`, whatever namespace it names.
pub async fn apply_manifest(client: &Client, namespace: &str, manifest: &Value) -> Result<DynamicObject, kube::Error> {
    let (api, body) = dynamic_api(client, namespace, manifest)?;
    let name = body.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
    api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force().validation_strict(), &Patch::Apply(&body)).await
}

fn dynamic_api(client: &Client, namespace: &str, manifest: &Value) -> Result<(Api<DynamicObject>, Value), kube::Error> {
    let bad = |m: String| kube::Error::Api(Box::new(kube::core::Status::failure(&m, "BadManifest").with_code(400)));
    let api_version = manifest.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    let kind = manifest.get("kind").and_then(Value::as_str).unwrap_or_default();
    let ar = tollgate_resource(kind)
        .filter(|ar| ar.api_version == api_version)
        .ok_or_else(|| bad(format!("not a Tollgate manifest: apiVersion {api_version:?}, kind {kind:?}")))?;
    let mut body = manifest.clone();
    let meta = body
        .as_object_mut()
        .ok_or_else(|| bad("a manifest is a mapping".into()))?
        .entry("metadata")
        .or_insert_with(|| json!({}));
    meta.as_object_mut()
        .ok_or_else(|| bad("metadata is a mapping".into()))?
        .insert("namespace".into(), Value::String(namespace.into()));
    Ok((Api::namespaced_with(client.clone(), namespace, &ar), body))
}

/// Parses one YAML document into JSON.
pub fn yaml_to_json(text: &str) -> Result<Value, String> {
    serde_saphyr::from_str::<Value>(text).map_err(|e| e.to_string())
}

/// A namespace for one test, named `tg-e2e-<test>-<unique>` and labelled
/// [`NAMESPACE_LABEL`]`=true`. Dropping the guard deletes it (best effort:
/// failures are printed, never panic), also when the test panics. Set
/// [`KEEP_NAMESPACES_ENV`]`=1` to keep it.
pub struct TestNamespace {
    name: String,
    config: Config,
}

impl TestNamespace {
    /// Creates the namespace; panics when the apiserver refuses.
    pub async fn create(cluster: &Cluster, test: &str) -> TestNamespace {
        let name = unique_name(test);
        let api: Api<Namespace> = Api::all(cluster.client.clone());
        let ns: Namespace = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": {NAMESPACE_LABEL: "true"}},
        }))
        .expect("a valid Namespace");
        api.create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("cannot create test namespace {name}: {}", error_message(&e)));
        TestNamespace { name, config: cluster.config.clone() }
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if std::env::var(KEEP_NAMESPACES_ENV).is_ok_and(|v| v == "1") {
            eprintln!("keeping test namespace {} ({KEEP_NAMESPACES_ENV}=1)", self.name);
            return;
        }
        // Drop may run inside the test's runtime (even a current-thread one),
        // so delete from a thread of its own with a runtime and client of its own.
        let (name, config) = (self.name.clone(), self.config.clone());
        let worker = std::thread::spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => return Err(format!("no runtime: {e}")),
            };
            rt.block_on(async move {
                let client = Client::try_from(config).map_err(|e| e.to_string())?;
                release_finalizers(&client, &name).await;
                let api: Api<Namespace> = Api::all(client);
                match tokio::time::timeout(Duration::from_secs(15), api.delete(&name, &DeleteParams::background()))
                    .await
                {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(kube::Error::Api(s))) if s.code == 404 => Ok(()),
                    Ok(Err(e)) => Err(error_message(&e)),
                    Err(_) => Err("timed out".into()),
                }
            })
        });
        match worker.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("warning: could not delete test namespace {}: {e}", self.name),
            Err(_) => eprintln!("warning: deleting test namespace {} panicked", self.name),
        }
    }
}

/// Drops the operator's finalizers from the namespace's ApiDeployments and
/// KeyManagers, so the namespace can go even when no operator runs any more.
async fn release_finalizers(client: &Client, namespace: &str) {
    for kind in ["ApiDeployment", "KeyManager"] {
        let Some(ar) = tollgate_resource(kind) else { continue };
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &ar);
        let Ok(list) = api.list(&ListParams::default()).await else { continue };
        for obj in list.items {
            if obj.metadata.finalizers.as_ref().is_some_and(|f| !f.is_empty())
                && let Some(name) = obj.metadata.name.as_deref()
            {
                let _ = api
                    .patch(name, &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": null}})))
                    .await;
            }
        }
    }
}

/// `tg-e2e-<test>-<suffix>`: a valid namespace name (DNS label, at most 63
/// characters), unique across processes and calls.
pub fn unique_name(test: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
    let seed = nanos ^ (u128::from(std::process::id()) << 64) ^ u128::from(COUNTER.fetch_add(1, Ordering::Relaxed));
    let suffix = base36(seed % 36u128.pow(8));
    let mut slug: String = test
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
        .collect::<String>()
        .split('-')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("-");
    slug.truncate(63 - "tg-e2e-".len() - 1 - 8);
    let slug = slug.trim_end_matches('-');
    if slug.is_empty() { format!("tg-e2e-{suffix}") } else { format!("tg-e2e-{slug}-{suffix}") }
}

fn base36(mut n: u128) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = vec![b'0'; 8];
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(n % 36) as usize];
        n /= 36;
    }
    String::from_utf8(out).expect("ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_are_dns_labels_and_differ() {
        let a = unique_name("negative_corpus::every_manifest_is_rejected_with_its_message_by_the_apiserver");
        let b = unique_name("negative_corpus::every_manifest_is_rejected_with_its_message_by_the_apiserver");
        assert_ne!(a, b);
        for n in [&a, &b, &unique_name(""), &unique_name("--X--")] {
            assert!(n.len() <= 63, "{n}");
            assert!(n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'), "{n}");
            assert!(!n.starts_with('-') && !n.ends_with('-') && !n.contains("--"), "{n}");
        }
    }

    #[test]
    fn every_tollgate_kind_has_a_resource() {
        for kind in ["ApiManager", "ApiDeployment", "ThrottlePolicy"] {
            let ar = tollgate_resource(kind).unwrap();
            assert_eq!(ar.api_version, tollgate_crds::API_VERSION);
        }
        assert!(tollgate_resource("Pod").is_none());
    }
}
