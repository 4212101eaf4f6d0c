//! The decisions the artifact controller published: for every ApiDeployment
//! and KeyManager, what its status must say, as of the folder write that
//! made it true. The status writers (the ApiDeployment and KeyManager
//! controllers) write only what is published here, so a status never runs
//! ahead of the files the gateways read.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::plan::{Key, Outcome, Verdict};

/// What was decided for one object, and from which version of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decided<T> {
    /// The ApiManager whose plan decided it.
    pub manager: Key,
    pub uid: Option<String>,
    pub generation: Option<i64>,
    pub value: T,
}

impl<T> Decided<T> {
    /// Whether this decision is about this version of the object.
    pub fn is_for(&self, uid: Option<&str>, generation: Option<i64>, manager: &Key) -> bool {
        self.uid.as_deref() == uid && self.generation == generation && &self.manager == manager
    }
}

#[derive(Default)]
pub struct Decisions {
    apis: Mutex<HashMap<Key, Decided<Outcome>>>,
    key_managers: Mutex<HashMap<Key, Decided<Verdict>>>,
}

/// Replaces what `manager` decided before with `now`; returns the objects
/// whose decision changed (new, different, or no longer decided by it).
fn publish<T: PartialEq + Clone>(
    map: &Mutex<HashMap<Key, Decided<T>>>,
    manager: &Key,
    now: Vec<(Key, Decided<T>)>,
) -> Vec<Key> {
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    let mut changed = Vec::new();
    let keep: std::collections::HashSet<&Key> = now.iter().map(|(k, _)| k).collect();
    let gone: Vec<Key> =
        map.iter().filter(|(k, d)| &d.manager == manager && !keep.contains(k)).map(|(k, _)| k.clone()).collect();
    for k in gone {
        map.remove(&k);
        changed.push(k);
    }
    for (k, d) in now {
        if map.get(&k) != Some(&d) {
            map.insert(k.clone(), d);
            changed.push(k);
        }
    }
    changed
}

impl Decisions {
    /// Publishes a manager's API outcomes; returns the APIs whose changed.
    pub fn publish_apis(&self, manager: &Key, now: Vec<(Key, Decided<Outcome>)>) -> Vec<Key> {
        publish(&self.apis, manager, now)
    }

    /// Publishes a manager's KeyManager verdicts; returns those that changed.
    pub fn publish_key_managers(&self, manager: &Key, now: Vec<(Key, Decided<Verdict>)>) -> Vec<Key> {
        publish(&self.key_managers, manager, now)
    }

    pub fn api(&self, key: &Key) -> Option<Decided<Outcome>> {
        self.apis.lock().unwrap_or_else(|e| e.into_inner()).get(key).cloned()
    }

    pub fn key_manager(&self, key: &Key) -> Option<Decided<Verdict>> {
        self.key_managers.lock().unwrap_or_else(|e| e.into_inner()).get(key).cloned()
    }

    /// Forgets everything a manager decided (it is gone); returns the APIs
    /// and KeyManagers concerned.
    pub fn forget_manager(&self, manager: &Key) -> (Vec<Key>, Vec<Key>) {
        (publish(&self.apis, manager, Vec::new()), publish(&self.key_managers, manager, Vec::new()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_crds::conditions::reasons;

    fn key(n: &str) -> Key {
        ("ns".into(), n.into())
    }

    fn decided(manager: &str, ok: bool) -> Decided<Verdict> {
        Decided {
            manager: key(manager),
            uid: Some("u".into()),
            generation: Some(1),
            value: if ok { Verdict::yes(reasons::ACCEPTED, "ok") } else { Verdict::no(reasons::NOT_ALLOWED, "no") },
        }
    }

    #[test]
    fn only_changes_are_reported_and_a_managers_leftovers_go() {
        let d = Decisions::default();
        let m = key("m");
        assert_eq!(
            d.publish_key_managers(&m, vec![(key("a"), decided("m", true)), (key("b"), decided("m", true))]).len(),
            2
        );
        assert!(
            d.publish_key_managers(&m, vec![(key("a"), decided("m", true)), (key("b"), decided("m", true))]).is_empty()
        );
        // b changes, a is no longer decided by m.
        assert_eq!(d.publish_key_managers(&m, vec![(key("b"), decided("m", false))]), [key("a"), key("b")]);
        assert!(d.key_manager(&key("a")).is_none());
        // Another manager's publication leaves m's decisions alone.
        d.publish_key_managers(&key("other"), vec![(key("c"), decided("other", true))]);
        assert!(d.key_manager(&key("b")).is_some());
        assert!(d.key_manager(&key("b")).unwrap().is_for(Some("u"), Some(1), &m));
        assert!(!d.key_manager(&key("b")).unwrap().is_for(Some("u"), Some(2), &m), "a newer generation is undecided");
        assert_eq!(d.forget_manager(&m), (vec![], vec![key("b")]));
    }
}
