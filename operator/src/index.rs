//! Which ApiManagers a change touches. The ApiManager owns its artifact
//! folder, so it is the reconcile key for artifacts: every ApiDeployment,
//! ThrottlePolicy and KeyManager event is mapped here to the managers whose
//! folder it can change, including the former manager of an object whose
//! `apiManagerRef` moved (that folder must drop its artifact).
//!
//! The index is fed from the reflector streams after the caches applied the
//! event, so a manager reconciled because of an event plans from caches that
//! already hold it.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use kube::ResourceExt;
use tollgate_crds::{ApiDeployment, KeyManager, ThrottlePolicy};

use crate::plan::{Key, manager_key, manager_of, policy_names};

/// The managers each object was last seen pointing at.
#[derive(Default)]
pub struct Index {
    api_homes: Mutex<HashMap<Key, Key>>,
    key_manager_homes: Mutex<HashMap<Key, Key>>,
}

fn key_of(o: &impl ResourceExt) -> Key {
    (o.namespace().unwrap_or_default(), o.name_any())
}

/// Records `home` for `object` and returns the managers to plan: the
/// current one, and the former one when it moved.
fn moved(homes: &Mutex<HashMap<Key, Key>>, object: Key, home: Key, gone: bool) -> Vec<Key> {
    let mut homes = homes.lock().unwrap_or_else(|e| e.into_inner());
    let before = if gone { homes.remove(&object) } else { homes.insert(object, home.clone()) };
    let mut out = vec![home];
    if let Some(b) = before
        && b != out[0]
    {
        out.push(b);
    }
    out
}

impl Index {
    /// An ApiDeployment changed (or, `gone`, was deleted).
    pub fn api(&self, api: &ApiDeployment, gone: bool) -> Vec<Key> {
        moved(&self.api_homes, key_of(api), manager_key(api), gone)
    }

    /// A KeyManager changed (or was deleted).
    pub fn key_manager(&self, km: &KeyManager, gone: bool) -> Vec<Key> {
        moved(&self.key_manager_homes, key_of(km), manager_of(km), gone)
    }

    /// A ThrottlePolicy changed: the managers of the APIs that name it and
    /// can resolve it (an API finds a policy in its own namespace, then in
    /// its manager's).
    pub fn policy<'a>(&self, policy: &ThrottlePolicy, apis: impl IntoIterator<Item = &'a ApiDeployment>) -> Vec<Key> {
        let (ns, name) = key_of(policy);
        let mut out = BTreeSet::new();
        for a in apis {
            let home = manager_key(a);
            let reachable = a.namespace().as_deref() == Some(ns.as_str()) || home.0 == ns;
            if reachable && policy_names(a).contains(&name.as_str()) {
                out.insert(home);
            }
        }
        out.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn api(ns: &str, name: &str, manager: &str, policy: Option<&str>) -> ApiDeployment {
        let mut spec = json!({
            "apiManagerRef": {"name": manager}, "context": "/x", "version": "v1",
            "backend": {"endpoints": [{"url": "http://b"}]},
        });
        if let Some(p) = policy {
            spec["throttling"] = json!({"policy": p});
        }
        serde_json::from_value(json!({
            "apiVersion": "tollgate.dev/v1alpha1", "kind": "ApiDeployment",
            "metadata": {"name": name, "namespace": ns}, "spec": spec,
        }))
        .unwrap()
    }

    fn key(ns: &str, name: &str) -> Key {
        (ns.into(), name.into())
    }

    #[test]
    fn a_move_touches_the_old_and_the_new_manager_once() {
        let index = Index::default();
        assert_eq!(index.api(&api("a", "x", "one", None), false), [key("a", "one")]);
        assert_eq!(index.api(&api("a", "x", "one", None), false), [key("a", "one")], "no move, one manager");
        assert_eq!(index.api(&api("a", "x", "two", None), false), [key("a", "two"), key("a", "one")]);
        assert_eq!(index.api(&api("a", "x", "two", None), false), [key("a", "two")], "the move is remembered");
        assert_eq!(index.api(&api("a", "x", "two", None), true), [key("a", "two")]);
        // Forgotten after the deletion: a new object of that name starts clean.
        assert_eq!(index.api(&api("a", "x", "three", None), false), [key("a", "three")]);
    }

    #[test]
    fn a_policy_touches_the_managers_of_the_apis_that_can_resolve_it() {
        let index = Index::default();
        let p: ThrottlePolicy = serde_json::from_value(json!({
            "apiVersion": "tollgate.dev/v1alpha1", "kind": "ThrottlePolicy",
            "metadata": {"name": "gold", "namespace": "a"},
            "spec": {"limit": {"requests": 1, "per": "1s"}},
        }))
        .unwrap();
        let mut cross = api("b", "z", "m3", Some("gold"));
        cross.spec.api_manager_ref.namespace = Some("a".into());
        let apis = [
            api("a", "x", "m1", Some("gold")),   // same namespace
            api("a", "y", "m2", Some("silver")), // another policy
            api("b", "w", "m4", Some("gold")),   // cannot see namespace a
            cross,                               // its manager lives in a
        ];
        assert_eq!(index.policy(&p, apis.iter()), [key("a", "m1"), key("a", "m3")]);
    }
}
