//! KeyManagers end to end: the operator (a local process held to the chart's
//! RBAC) writes a KeyManager bound to an ApiManager into that manager's
//! artifact folder and reports Accepted; an ApiDeployment naming a
//! KeyManager that does not resolve is kept off the gateways
//! (ResolvedRefs=False, KeyManagerNotFound) until it does; moving a
//! KeyManager to another ApiManager or deleting it takes its artifact, and
//! the APIs that name it, off the gateways.

use std::{path::Path, time::Duration};

use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};
use tollgate_e2e::{
    Cluster, apply_manifest, install_crds,
    stack::{Gateway, WatchingOperator, backend, eventually},
    tollgate_resource,
};

fn objects(client: &kube::Client, ns: &str, kind: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &tollgate_resource(kind).expect("a Tollgate kind"))
}

/// Waits until `kind/name` shows condition `type_` with `status` and
/// `reason` for its current generation; returns the object and the message.
async fn expect(
    client: &kube::Client,
    ns: &str,
    (kind, name): (&str, &str),
    type_: &str,
    (status, reason): (&str, &str),
) -> (Value, String) {
    let api = objects(client, ns, kind);
    eventually(Duration::from_secs(30), &format!("{kind} {name}: {type_}={status} ({reason})"), || async {
        let obj = serde_json::to_value(api.get(name).await.map_err(|e| e.to_string())?).unwrap();
        let c = obj["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == type_).cloned())
            .ok_or_else(|| format!("no {type_} condition yet: {}", obj["status"]))?;
        let current = obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
            && c["observedGeneration"] == obj["metadata"]["generation"];
        if current && c["status"] == status && c["reason"] == reason {
            Ok((obj.clone(), c["message"].as_str().unwrap_or_default().to_string()))
        } else {
            Err(format!("{} {} (current generation: {current}): {}", c["status"], c["reason"], c["message"]))
        }
    })
    .await
}

async fn wait_absent(what: &str, path: &Path) {
    eventually(Duration::from_secs(20), what, || async {
        if path.exists() { Err(format!("{} still there", path.display())) } else { Ok(()) }
    })
    .await;
}

/// A KeyManager with an inline (public) EC P-256 key: nothing to fetch.
fn key_manager(name: &str, manager: &str) -> Value {
    json!({ "apiVersion": "tollgate.dev/v1alpha1", "kind": "KeyManager", "metadata": { "name": name },
            "spec": { "apiManagerRef": { "name": manager }, "issuer": format!("https://{name}.bank.example/oauth2"),
                      "jwks": { "keys": [{ "kty": "EC", "crv": "P-256", "kid": format!("{name}-1"), "use": "sig",
                                           "x": "xAfZVk7XGVMKC_7qA9DF-876oTDIQAe0Co41zV-GhT4",
                                           "y": "Qb_sf1xxFbuTb5yF99M31w6XR3ihl3ai32jeKnvmkTk" }] } } })
}

/// A payments API at /open-banking/pisp/<version> accepting tokens of
/// `issuers`, bound to the client certificate.
fn payments(name: &str, version: &str, issuers: &[&str], backend: &str) -> Value {
    json!({ "apiVersion": "tollgate.dev/v1alpha1", "kind": "ApiDeployment", "metadata": { "name": name },
            "spec": { "apiManagerRef": { "name": "apim" }, "context": "/open-banking/pisp", "version": version,
                      "security": { "oauth2": { "keyManagers": issuers }, "mtls": { "required": true } },
                      "operations": [{ "method": "GET", "path": "/domestic-payments/{DomesticPaymentId}",
                                       "scopes": ["payments"] }],
                      "backend": { "endpoints": [{ "url": format!("http://{backend}/pisp") }] } } })
}

async fn gateway_answers(gateway: &Gateway, path: &str, want: u16, what: &str) {
    eventually(Duration::from_secs(10), what, || async {
        match gateway.get(path) {
            s if s == want => Ok(()),
            s => Err(format!("status {s}\n{}", gateway.proc.log_tail())),
        }
    })
    .await;
}

#[tokio::test]
async fn key_managers_are_written_resolved_moved_and_removed() {
    let cluster = Cluster::connect().await;
    install_crds(&cluster.client).await;
    let ns = cluster.namespace("key-managers").await;
    let ns = ns.name().to_string();
    let client = cluster.client.clone();
    let work = tempfile::tempdir().expect("tempdir");
    let op = WatchingOperator::start(&cluster, &ns, work.path()).await;
    let (operator, artifacts) = (&op.operator, &op.artifacts);
    let (_backend, backend_addr) = backend(work.path(), "payments-backend");
    let backend_addr = backend_addr.to_string();
    let folder = artifacts.join(&ns).join("apim");
    let km_file = |name: &str| folder.join(format!("keymanagers/{ns}_{name}.yaml"));
    let api_file = |name: &str| folder.join(format!("apis/{ns}_{name}.yaml"));

    let manager = json!({ "apiVersion": "tollgate.dev/v1alpha1", "kind": "ApiManager",
                          "metadata": { "name": "apim" }, "spec": { "pattern": "AllInOne" } });
    apply_manifest(&client, &ns, &manager).await.expect("apimanager");
    apply_manifest(&client, &ns, &key_manager("bank-idp", "apim")).await.expect("keymanager");
    apply_manifest(&client, &ns, &payments("payments", "v4.0", &["bank-idp"], &backend_addr)).await.expect("api");

    // The KeyManager is accepted and written; the API that names it is deployed.
    let (km, _) = expect(&client, &ns, ("KeyManager", "bank-idp"), "Accepted", ("True", "Accepted")).await;
    assert_eq!(km["metadata"]["finalizers"], json!(["tollgate.dev/artifact"]));
    let text = std::fs::read_to_string(km_file("bank-idp")).expect("KeyManager artifact");
    assert!(text.contains("https://bank-idp.bank.example/oauth2"), "{text}");
    let (loaded, errors) = tollgate_crds::loader::load_str(&km_file("bank-idp"), &text);
    assert!(errors.is_empty() && loaded.len() == 1, "the gateway's loader accepts it: {errors:?}");
    expect(&client, &ns, ("ApiDeployment", "payments"), "Deployed", ("True", "Deployed")).await;
    assert!(api_file("payments").is_file());

    // A real gateway on the folder serves the API with OAuth2: no token, 401.
    let gateway = Gateway::start(&folder, work.path(), &[]);
    let v4 = "/open-banking/pisp/v4.0/domestic-payments/1";
    gateway_answers(&gateway, v4, 401, "the OAuth2 API answers 401 without a token").await;

    // An API naming a KeyManager that does not exist is not served...
    apply_manifest(&client, &ns, &payments("payments-next", "v5.0", &["next-idp"], &backend_addr)).await.unwrap();
    let (_, m) =
        expect(&client, &ns, ("ApiDeployment", "payments-next"), "ResolvedRefs", ("False", "KeyManagerNotFound")).await;
    assert!(m.contains("next-idp"), "{m}");
    expect(&client, &ns, ("ApiDeployment", "payments-next"), "Deployed", ("False", "KeyManagerNotFound")).await;
    assert!(!api_file("payments-next").exists(), "no artifact for an API whose issuer is unknown");
    let v5 = "/open-banking/pisp/v5.0/domestic-payments/1";
    assert_eq!(gateway.get(v5), 404);
    // ...until the KeyManager appears.
    apply_manifest(&client, &ns, &key_manager("next-idp", "apim")).await.unwrap();
    expect(&client, &ns, ("ApiDeployment", "payments-next"), "Deployed", ("True", "Deployed")).await;
    assert!(km_file("next-idp").is_file() && api_file("payments-next").is_file());
    gateway_answers(&gateway, v5, 401, "the resolved API is served").await;

    // Moving a KeyManager to another (missing) ApiManager takes it out of
    // this folder, and the API that named it with it. First let the
    // ApiManager settle: its status changes re-plan the folder on their own,
    // and the move must not depend on that.
    expect(&client, &ns, ("ApiManager", "apim"), "Ready", ("True", "AllComponentsReady")).await;
    expect(&client, &ns, ("ApiManager", "apim"), "Progressing", ("False", "Stable")).await;
    objects(&client, &ns, "KeyManager")
        .patch(
            "next-idp",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "apiManagerRef": { "name": "elsewhere" } } })),
        )
        .await
        .expect("patch keymanager");
    let (_, m) = expect(&client, &ns, ("KeyManager", "next-idp"), "Accepted", ("False", "ApiManagerNotFound")).await;
    assert!(m.contains("elsewhere"), "{m}");
    wait_absent("the moved KeyManager's artifact removed", &km_file("next-idp")).await;
    expect(&client, &ns, ("ApiDeployment", "payments-next"), "ResolvedRefs", ("False", "KeyManagerNotFound")).await;
    wait_absent("the API of the moved KeyManager removed", &api_file("payments-next")).await;
    gateway_answers(&gateway, v5, 404, "the API of the moved KeyManager is no longer served").await;

    // Deleting a KeyManager: its artifact goes first, then the object; the
    // API naming it is no longer served (never with weaker security).
    let kms = objects(&client, &ns, "KeyManager");
    kms.delete("bank-idp", &DeleteParams::default()).await.expect("delete keymanager");
    wait_absent("the deleted KeyManager's artifact removed", &km_file("bank-idp")).await;
    eventually(Duration::from_secs(20), "KeyManager gone (finalizer released)", || async {
        match kms.get_opt("bank-idp").await {
            Ok(None) => Ok(()),
            other => Err(format!("{:?}", other.map(|o| o.map(|o| o.metadata.finalizers)))),
        }
    })
    .await;
    expect(&client, &ns, ("ApiDeployment", "payments"), "ResolvedRefs", ("False", "KeyManagerNotFound")).await;
    assert!(!api_file("payments").exists());
    gateway_answers(&gateway, v4, 404, "the API of the deleted KeyManager is no longer served").await;

    // Events tell the story.
    tollgate_e2e::stack::wait_for_events(
        &client,
        &ns,
        &["Accepted", "ApiManagerNotFound", "ArtifactRemoved", "KeyManagerNotFound"],
    )
    .await;
    assert_eq!(operator.unexpected_errors(), 0.0, "{}", operator.proc.log_lines("failed"));
}
