//! What each controller's work queue holds: the distinct objects a trigger
//! (a watch event, a decision published for them, an owned object's change)
//! has queued and whose reconcile has not started yet. The controller
//! runtime merges triggers of one object into one reconcile, and so does this
//! count; it is exported as `tollgate_operator_queue_depth{controller}`.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use kube::runtime::reflector::ObjectRef;

use crate::metrics::{ControllerLabels, Metrics};

/// The queued objects of every controller, by controller name.
#[derive(Default)]
pub struct Queues {
    waiting: Mutex<HashMap<&'static str, HashSet<String>>>,
}

fn key<K: kube::Resource>(obj: &ObjectRef<K>) -> String {
    format!("{}/{}", obj.namespace.as_deref().unwrap_or_default(), obj.name)
}

impl Queues {
    /// A trigger queued `obj` for `controller`.
    pub fn queued<K: kube::Resource>(&self, metrics: &Metrics, controller: &'static str, obj: &ObjectRef<K>) {
        let mut w = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let set = w.entry(controller).or_default();
        set.insert(key(obj));
        metrics.queue_depth.get_or_create(&ControllerLabels { controller }).set(set.len() as i64);
    }

    /// `controller` started reconciling `obj` (every trigger queued so far is served by it).
    pub fn started<K: kube::Resource>(&self, metrics: &Metrics, controller: &'static str, obj: &ObjectRef<K>) {
        let mut w = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let set = w.entry(controller).or_default();
        set.remove(&key(obj));
        metrics.queue_depth.get_or_create(&ControllerLabels { controller }).set(set.len() as i64);
    }

    /// Objects queued for `controller`.
    pub fn depth(&self, controller: &'static str) -> usize {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner()).get(controller).map_or(0, HashSet::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_crds::ApiDeployment;

    #[test]
    fn depth_counts_distinct_objects_until_their_reconcile_starts() {
        let (q, m) = (Queues::default(), Metrics::default());
        let a: ObjectRef<ApiDeployment> = ObjectRef::new("a").within("ns");
        let b: ObjectRef<ApiDeployment> = ObjectRef::new("b").within("ns");
        q.queued(&m, "apideployment", &a);
        q.queued(&m, "apideployment", &a);
        q.queued(&m, "apideployment", &b);
        q.queued(&m, "artifacts", &a);
        assert_eq!(q.depth("apideployment"), 2, "two triggers of one object are one reconcile");
        assert!(m.encode().contains("tollgate_operator_queue_depth{controller=\"apideployment\"} 2"));
        q.started(&m, "apideployment", &a);
        assert_eq!(q.depth("apideployment"), 1);
        q.started(&m, "apideployment", &a);
        q.started(&m, "apideployment", &b);
        assert_eq!(q.depth("apideployment"), 0);
        assert!(m.encode().contains("tollgate_operator_queue_depth{controller=\"apideployment\"} 0"));
        assert_eq!(q.depth("artifacts"), 1, "queues are per controller");
    }
}
