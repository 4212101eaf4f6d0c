//! On the real node (make e2e-node): pattern 1 as the README installs it,
//! with the TLS and client-CA Secrets (certificates made here with rcgen).
//! A TPP's client of the built-in key manager authenticates with its
//! certificate (tls_client_auth) on the management TLS listener, gets a
//! token bound to that certificate, and calls an OAuth2 API over HTTPS
//! through the gateway's Service with the same certificate; the same token
//! without the certificate is refused.

mod node_support;

use node_support::{
    ADMIN_HEADERS, WAIT, all_in_one_yaml, api_yaml, backend_yaml, cluster_ip, installed, kubectl_apply, uninstall,
    until_true,
};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use serde_json::{Value, json};
use tollgate_e2e::{node::ClientIdentity, stack::eventually};

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, format!("{name} test CA"));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// (certificate PEM, key PEM) signed by `issuer`.
fn leaf(
    issuer: &CertifiedIssuer<'static, KeyPair>,
    names: Vec<String>,
    dn: &[(DnType, &str)],
    purpose: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let mut params = CertificateParams::new(names).unwrap();
    for (t, v) in dn {
        params.distinguished_name.push(t.clone(), *v);
    }
    params.extended_key_usages = vec![purpose];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn indented(pem: &str) -> String {
    pem.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
}

#[tokio::test]
async fn pattern_1_with_tls_serves_a_tpp_with_a_certificate_bound_token() {
    let t = installed("node-tls").await;
    let (cluster, node, client, ns) = (&t.cluster, t.node.clone(), t.cluster.client.clone(), t.ns.clone());

    // The bank's listener certificate names the Service; the TPP's CA and
    // its certificate.
    let bank = ca("bank");
    let host = format!("apim.{ns}.svc");
    let (server_crt, server_key) = leaf(
        &bank,
        vec![host.clone(), format!("apim.{ns}.svc.cluster.local"), "localhost".into()],
        &[(DnType::CommonName, host.as_str())],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let tpps = ca("tpp");
    let (tpp_crt, tpp_key) = leaf(
        &tpps,
        vec![],
        &[(DnType::CommonName, "tpp-one"), (DnType::OrganizationName, "TPP Ltd")],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let tpp = ClientIdentity { cert_pem: tpp_crt, key_pem: tpp_key };
    let bank_ca = bank.pem();

    let manifests = format!(
        r#"
apiVersion: v1
kind: Secret
metadata: {{name: tollgate-tls}}
type: kubernetes.io/tls
stringData:
  tls.crt: |
{}
  tls.key: |
{}
  ca.crt: |
{}
---
apiVersion: v1
kind: Secret
metadata: {{name: tpp-client-ca}}
stringData:
  ca.crt: |
{}
{}
---
apiVersion: tollgate.dev/v1alpha1
kind: ThrottlePolicy
metadata: {{name: unlimited}}
spec:
  limit: {{requests: 1000000000, per: 1s}}
  keyBy: Consumer
{}"#,
        indented(&server_crt),
        indented(&server_key),
        indented(&bank_ca),
        indented(&tpps.pem()),
        all_in_one_yaml(&[
            "listeners: {tlsSecretName: tollgate-tls, clientCaSecretName: tpp-client-ca, clientAuth: Optional}"
        ]),
        api_yaml(&ns, "accounts", "/open-banking/aisp", "v3.1", &["security: {oauth2: {}}"]),
    );
    kubectl_apply(cluster, &ns, &backend_yaml(1));
    kubectl_apply(cluster, &ns, &manifests);
    until_true(&client, &ns, "ApiManager", "apim", "Ready").await;
    until_true(&client, &ns, "ApiDeployment", "accounts", "Deployed").await;

    let ip = cluster_ip(&client, &ns, "apim").await;
    let (admin, management_tls, https) =
        (std::net::SocketAddr::from((ip, 9763)), std::net::SocketAddr::from((ip, 9443)), (ip, 8243).into());

    // The TPP's application, subscription and certificate-authenticated client.
    let app: Value = eventually(WAIT, "the store answers", || {
        let node = node.clone();
        async move {
            match node.request(admin, "POST", "/api/v1/applications", &ADMIN_HEADERS, r#"{"name":"tpp-one"}"#).await {
                Ok((201, body)) => serde_json::from_str(&body).map_err(|e| e.to_string()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    let app_id = app["id"].as_str().unwrap();
    let post = |path: String, body: Value| {
        let node = node.clone();
        async move {
            let (status, text) = node.request(admin, "POST", &path, &ADMIN_HEADERS, &body.to_string()).await.unwrap();
            assert_eq!(status, 201, "POST {path}: {text}");
            serde_json::from_str::<Value>(&text).unwrap()
        }
    };
    post(
        "/api/v1/subscriptions".into(),
        json!({"applicationId": app_id, "api": format!("{ns}/accounts"), "policy": "unlimited"}),
    )
    .await;
    let oauth = post(
        format!("/api/v1/applications/{app_id}/oauth-clients"),
        json!({"tokenEndpointAuthMethod": "tls_client_auth", "tlsClientAuthSubjectDn": "CN=tpp-one,O=TPP Ltd",
               "scopes": ["accounts"]}),
    )
    .await;
    let client_id = oauth["clientId"].as_str().unwrap().to_string();

    // A token over mutual TLS, bound to the certificate.
    let form = format!("grant_type=client_credentials&client_id={client_id}&scope=accounts");
    let form_headers = [("Content-Type", "application/x-www-form-urlencoded")];
    let (status, body) = eventually(WAIT, "a token from the management TLS listener", || {
        let (node, host, ca, tpp, form) = (node.clone(), host.clone(), bank_ca.clone(), tpp.clone(), form.clone());
        async move {
            match node
                .https(management_tls, &host, &ca, Some(&tpp), "POST", "/oauth2/token", &form_headers, &form)
                .await
            {
                Ok((200, body)) => Ok((200, body)),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    assert_eq!(status, 200);
    let token: Value = serde_json::from_str(&body).unwrap();
    let bearer = format!("Bearer {}", token["access_token"].as_str().unwrap());
    let auth = [("Authorization", bearer.as_str())];

    // The API over HTTPS with the certificate: 200; without it: refused.
    let (status, body) = node
        .https(https, &host, &bank_ca, Some(&tpp), "GET", "/open-banking/aisp/v3.1/accounts/1", &auth, "")
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""AccountId":"1""#), "{body}");
    let (status, body) =
        node.https(https, &host, &bank_ca, None, "GET", "/open-banking/aisp/v3.1/accounts/1", &auth, "").await.unwrap();
    assert_eq!(status, 401, "a certificate-bound token without its certificate: {body}");

    uninstall(cluster, &ns, t.release);
}
