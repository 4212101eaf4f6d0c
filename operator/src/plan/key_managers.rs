//! KeyManagers in the plan of one ApiManager: which issuers its gateways
//! trust, their artifacts, and how an ApiDeployment's
//! `security.oauth2.keyManagers` names resolve.
//!
//! A gateway trusts every KeyManager in its folder, and an API with an empty
//! `keyManagers` list accepts tokens of all of them. So a KeyManager is only
//! written when its namespace may deploy onto the ApiManager
//! (`allowedNamespaces`, the same rule as for ApiDeployments): otherwise
//! anyone able to create a KeyManager anywhere could add an issuer that the
//! manager's APIs then accept.

use std::collections::BTreeMap;

use kube::ResourceExt;
use serde_json::json;
use tollgate_crds::{API_VERSION, ApiDeployment, KeyManager, conditions::reasons};

use super::{Inputs, Key, Verdict, metadata, namespace_allowed, to_yaml};

/// The ApiManager a KeyManager binds to (namespace defaults to its own).
pub fn manager_of(km: &KeyManager) -> Key {
    let r = &km.spec.api_manager_ref;
    let ns = r.namespace.clone().unwrap_or_else(|| km.namespace().unwrap_or_default());
    (ns, r.name.clone())
}

pub fn key_manager_file(ns: &str, name: &str) -> String {
    format!("keymanagers/{ns}_{name}.yaml")
}

/// The KeyManager names an ApiDeployment's OAuth2 security lists.
pub fn key_manager_names(api: &ApiDeployment) -> Vec<&str> {
    let mut names: Vec<&str> = api
        .spec
        .security
        .as_ref()
        .and_then(|s| s.oauth2.as_ref())
        .map(|o| o.key_managers.iter().map(String::as_str).collect())
        .unwrap_or_default();
    names.sort_unstable();
    names.dedup();
    names
}

/// The KeyManagers bound to one ApiManager.
pub(super) struct Bound<'a> {
    /// Those the manager's gateways trust (written to the folder).
    pub trusted: BTreeMap<Key, &'a KeyManager>,
    /// The Accepted verdict of every bound KeyManager, trusted or not.
    pub verdicts: BTreeMap<Key, Verdict>,
}

/// Split the KeyManagers naming this manager into trusted and refused ones.
/// KeyManagers being deleted are left out, so their artifact goes first.
pub(super) fn bound<'a>(inputs: &Inputs<'a>, mgr_ns: &str, mgr_name: &str) -> Bound<'a> {
    let mut out = Bound { trusted: BTreeMap::new(), verdicts: BTreeMap::new() };
    let target = (mgr_ns.to_string(), mgr_name.to_string());
    for (key, km) in inputs.key_managers {
        if km.metadata.deletion_timestamp.is_some() || manager_of(km) != target {
            continue;
        }
        let verdict = match namespace_allowed(inputs.manager, &key.0, inputs.namespace_labels) {
            Ok(()) => {
                out.trusted.insert(key.clone(), *km);
                Verdict::yes(reasons::ACCEPTED, format!("trusted by the gateways of ApiManager {mgr_ns}/{mgr_name}"))
            }
            Err(why) => Verdict::no(
                reasons::NOT_ALLOWED,
                format!("namespace {:?} may not add KeyManagers to ApiManager {mgr_ns}/{mgr_name}: {why}", key.0),
            ),
        };
        out.verdicts.insert(key.clone(), verdict);
    }
    out
}

/// The trusted KeyManagers an ApiDeployment names: each in the API's
/// namespace first, then in the ApiManager's. A name that resolves to
/// nothing keeps the API out (KeyManagerNotFound): serving it would accept
/// fewer issuers than asked at best, every issuer of the manager at worst.
/// `builtin` names the manager's built-in key manager unless a KeyManager
/// has that name.
/// The name that stands for the ApiManager's built-in key manager.
pub const BUILTIN: &str = "builtin";

pub(super) fn resolve(
    api: &ApiDeployment,
    mgr_ns: &str,
    trusted: &BTreeMap<Key, &KeyManager>,
) -> Result<Vec<Key>, (&'static str, String)> {
    let ns = api.namespace().unwrap_or_default();
    let (used, mut missing) = super::decide::lookup(key_manager_names(api), &ns, mgr_ns, |k| trusted.contains_key(k));
    // `builtin` without a KeyManager of that name: trusted by every gateway
    // of the manager without an artifact.
    missing.retain(|name| *name != BUILTIN);
    if !missing.is_empty() {
        return Err((
            reasons::KEY_MANAGER_NOT_FOUND,
            format!(
                "KeyManager {} not found in {} among the KeyManagers of this ApiManager",
                missing.join(", "),
                super::decide::places(&ns, mgr_ns)
            ),
        ));
    }
    Ok(used)
}

/// The artifact of one KeyManager, with its ApiManager's namespace filled in.
pub fn render_key_manager(km: &KeyManager, mgr_ns: &str) -> String {
    let mut spec = km.spec.clone();
    spec.api_manager_ref.namespace = Some(mgr_ns.to_string());
    let doc = json!({
        "apiVersion": API_VERSION,
        "kind": "KeyManager",
        "metadata": metadata(km),
        "spec": spec,
    });
    to_yaml(&doc)
}
