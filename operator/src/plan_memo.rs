//! The last plan of each ApiManager, keyed by a fingerprint of its inputs.
//!
//! Every ApiDeployment reconcile plans its manager's whole folder (conflicts
//! and freed routes involve siblings). When many ApiDeployments of one
//! manager change at once, most of those reconciles see the same inputs; the
//! memo lets them reuse the plan instead of rendering and comparing every
//! file again. A memo entry is trusted for [`MEMO_TTL`] only, so a folder
//! changed from outside is still repaired by a later reconcile.

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::ResourceExt;
use tollgate_crds::{ApiDeployment, ApiManager, ThrottlePolicy};

use crate::plan::{Definitions, Key, Plan};

/// How long a memorised plan is reused without syncing the folder again.
pub const MEMO_TTL: Duration = Duration::from_secs(30);

/// A plan, the fingerprint of its inputs and when its files were synced.
struct Entry {
    fingerprint: u64,
    synced: Instant,
    plan: Arc<Plan>,
}

/// Plans by manager.
#[derive(Default)]
pub struct PlanMemo {
    entries: Mutex<HashMap<Key, Entry>>,
}

impl PlanMemo {
    /// The plan made from inputs with this fingerprint, if recent.
    pub fn get(&self, manager: &Key, fingerprint: u64) -> Option<Arc<Plan>> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(manager)
            .filter(|e| e.fingerprint == fingerprint && e.synced.elapsed() < MEMO_TTL)
            .map(|e| e.plan.clone())
    }

    /// Remembers a plan whose files were written.
    pub fn put(&self, manager: Key, fingerprint: u64, plan: Arc<Plan>) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.insert(manager, Entry { fingerprint, synced: Instant::now(), plan });
    }

    /// Forgets a manager (its folder was changed or removed).
    pub fn forget(&self, manager: &Key) {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).remove(manager);
    }
}

/// A fingerprint of everything `plan::plan` reads: the manager and the
/// identity, generation (spec), creation and deletion of every API, every
/// policy's generation, the namespace labels and the OpenAPI definitions.
pub fn fingerprint(
    manager: &ApiManager,
    apis: &[Arc<ApiDeployment>],
    policies: &[Arc<ThrottlePolicy>],
    namespace_labels: &BTreeMap<String, BTreeMap<String, String>>,
    definitions: &Definitions,
) -> u64 {
    fn object(o: &impl ResourceExt) -> u64 {
        let mut h = DefaultHasher::new();
        let m = o.meta();
        (&m.namespace, &m.name, &m.uid, m.generation, m.deletion_timestamp.is_some()).hash(&mut h);
        m.creation_timestamp.as_ref().map(|t| t.0.as_nanosecond()).hash(&mut h);
        h.finish()
    }
    let mut h = DefaultHasher::new();
    object(manager).hash(&mut h);
    let mut each: Vec<u64> = apis.iter().map(|a| object(&**a)).collect();
    each.sort_unstable();
    each.hash(&mut h);
    let mut each: Vec<u64> = policies.iter().map(|p| object(&**p)).collect();
    each.sort_unstable();
    each.hash(&mut h);
    namespace_labels.hash(&mut h);
    definitions.hash(&mut h);
    h.finish()
}
