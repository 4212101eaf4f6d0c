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

use kube::{Resource, ResourceExt};
use tollgate_crds::{ApiDeployment, KeyManager, ThrottlePolicy};

use crate::plan::{Key, manager_key, manager_of, policy_names};

/// What an object was last seen as: the manager it points at, and what of
/// it a plan reads (its generation and whether it is being deleted). An
/// event that changes none of these (a status write) plans nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    home: Key,
    generation: Option<i64>,
    deleting: bool,
    /// The ConfigMap (namespace, name) its operations come from, if any.
    definition: Option<Key>,
}

/// The managers each object was last seen pointing at.
#[derive(Default)]
pub struct Index {
    api_homes: Mutex<HashMap<Key, Seen>>,
    key_manager_homes: Mutex<HashMap<Key, Seen>>,
    policy_generations: Mutex<HashMap<Key, Option<i64>>>,
}

fn key_of(o: &impl ResourceExt) -> Key {
    (o.namespace().unwrap_or_default(), o.name_any())
}

fn seen(o: &impl ResourceExt, home: Key, definition: Option<Key>) -> Seen {
    Seen { home, generation: o.meta().generation, deleting: o.meta().deletion_timestamp.is_some(), definition }
}

/// The ConfigMap an ApiDeployment's definition is read from.
pub fn definition_map(api: &ApiDeployment) -> Option<Key> {
    let r = api.spec.definition.as_ref()?.config_map_ref.as_ref()?;
    Some((api.namespace().unwrap_or_default(), r.name.clone()))
}

/// Records what `object` is now and returns the managers to plan: none when
/// nothing a plan reads changed, else the current one and the former one
/// when it moved.
fn moved(homes: &Mutex<HashMap<Key, Seen>>, object: Key, now: Seen, gone: bool) -> Vec<Key> {
    let mut homes = homes.lock().unwrap_or_else(|e| e.into_inner());
    let before = if gone { homes.remove(&object) } else { homes.insert(object, now.clone()) };
    if !gone && before.as_ref() == Some(&now) {
        return Vec::new();
    }
    let mut out = vec![now.home];
    if let Some(b) = before
        && b.home != out[0]
    {
        out.push(b.home);
    }
    out
}

impl Index {
    /// An ApiDeployment changed (or, `gone`, was deleted).
    pub fn api(&self, api: &ApiDeployment, gone: bool) -> Vec<Key> {
        moved(&self.api_homes, key_of(api), seen(api, manager_key(api), definition_map(api)), gone)
    }

    /// A KeyManager changed (or was deleted).
    pub fn key_manager(&self, km: &KeyManager, gone: bool) -> Vec<Key> {
        moved(&self.key_manager_homes, key_of(km), seen(km, manager_of(km), None), gone)
    }

    /// Whether a ThrottlePolicy event changes what plans read (its
    /// generation; any deletion).
    pub fn policy_changed(&self, policy: &ThrottlePolicy, gone: bool) -> bool {
        let mut g = self.policy_generations.lock().unwrap_or_else(|e| e.into_inner());
        if gone {
            g.remove(&key_of(policy));
            return true;
        }
        g.insert(key_of(policy), policy.meta().generation) != Some(policy.meta().generation)
    }

    /// A ConfigMap changed (or went): the managers of the APIs whose
    /// operations come from it.
    pub fn config_map(&self, namespace: &str, name: &str) -> Vec<Key> {
        let homes = self.api_homes.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = BTreeSet::new();
        for seen in homes.values() {
            if seen.definition.as_ref().is_some_and(|(ns, n)| ns == namespace && n == name) {
                out.insert(seen.home.clone());
            }
        }
        out.into_iter().collect()
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
        let at = |manager: &str, generation: i64| {
            let mut a = api("a", "x", manager, None);
            a.metadata.generation = Some(generation);
            a
        };
        assert_eq!(index.api(&at("one", 1), false), [key("a", "one")]);
        assert!(index.api(&at("one", 1), false).is_empty(), "a status write plans nothing");
        assert_eq!(index.api(&at("one", 2), false), [key("a", "one")], "a new generation, one manager");
        assert_eq!(index.api(&at("two", 3), false), [key("a", "two"), key("a", "one")]);
        assert_eq!(index.api(&at("two", 4), false), [key("a", "two")], "the move is remembered");
        let mut deleting = at("two", 5);
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        assert_eq!(index.api(&deleting, false), [key("a", "two")]);
        assert_eq!(index.api(&deleting, true), [key("a", "two")]);
        // Forgotten after the deletion: a new object of that name starts clean.
        assert_eq!(index.api(&at("three", 1), false), [key("a", "three")]);
    }

    #[test]
    fn a_definition_touches_the_managers_of_the_apis_that_use_it() {
        let index = Index::default();
        let with_definition = |name: &str, manager: &str, own_operations: bool| {
            let mut a = api("a", name, manager, None);
            a.spec.definition =
                serde_json::from_value(json!({"configMapRef": {"name": "spec", "key": "openapi.yaml"}})).unwrap();
            if own_operations {
                a.spec.operations = serde_json::from_value(json!([{"method": "GET", "path": "/x"}])).unwrap();
            }
            a
        };
        index.api(&with_definition("x", "m1", false), false);
        index.api(&with_definition("y", "m2", false), false);
        // Its own operations win, but the document is still carried for the portal.
        index.api(&with_definition("z", "m3", true), false);
        index.api(&api("a", "w", "m4", None), false);
        let mut inline = api("a", "v", "m5", None);
        inline.spec.definition = serde_json::from_value(json!({"document": "openapi: 3.0.3\npaths: {}\n"})).unwrap();
        index.api(&inline, false);
        assert_eq!(index.config_map("a", "spec"), [key("a", "m1"), key("a", "m2"), key("a", "m3")]);
        assert!(index.config_map("b", "spec").is_empty(), "another namespace");
        assert!(index.config_map("a", "other").is_empty());
        index.api(&with_definition("y", "m2", false), true);
        assert_eq!(index.config_map("a", "spec"), [key("a", "m1"), key("a", "m3")], "a deleted API is forgotten");
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
