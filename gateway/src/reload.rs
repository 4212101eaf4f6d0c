//! Watching the configuration folder and swapping in new snapshots.
//!
//! inotify events (through `notify`) trigger a reload after a short debounce;
//! a periodic rescan catches what inotify misses (network filesystems). A
//! reload first compares a fingerprint of the folder (names, devices,
//! inodes, sizes, mtimes, ctimes)
//! and does nothing when it is unchanged.
//!
//! What is never lost: an object whose new version is invalid keeps its last
//! good version; a file that fails to parse keeps every object it held; a
//! folder that cannot be read keeps the whole snapshot. Every such problem is
//! listed in /status until it is fixed.

use std::collections::BTreeMap;

use foldhash::{HashMap, HashMapExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use notify::Watcher;
use parking_lot::Mutex;
use serde::Serialize;
use tollgate_crds::loader::{FileCache, FileStamp, Listing, LoadError, list_dir, load_listing_cached};
use tollgate_crds::{ObjectRef, Resource};

use crate::runtime::Shared;
use crate::snapshot::{Snapshot, compile};

/// A problem shown in /status.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct StatusError {
    pub file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub document: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub reason: String,
    /// Whether an earlier good version is still served in its place.
    pub serving_last_good: bool,
}

/// Reload bookkeeping shown in /status.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ReloadStatus {
    pub last_reload: Option<u64>,
    /// How long the last reload took to read, parse and compile the
    /// folder, in milliseconds.
    pub last_reload_millis: Option<f64>,
    pub generation: u64,
    pub errors: Vec<StatusError>,
}

/// Everything the request path and the management API share.
pub struct State {
    pub snapshot: ArcSwap<Snapshot>,
    pub status: Mutex<ReloadStatus>,
    pub ready: AtomicBool,
    pub draining: AtomicBool,
    pub shared: Shared,
    /// Where the API-traffic listener can be reached from this process
    /// (None without the gateway role); /readyz waits until it accepts.
    pub traffic_probe: parking_lot::Mutex<Option<std::net::SocketAddr>>,
    /// The traffic listener accepted a probe connection.
    pub listening: AtomicBool,
    /// The reloading TLS certificate, when TLS is on (for /status).
    pub tls_cert: std::sync::OnceLock<Arc<crate::tls::ReloadingCert>>,
    /// The client CA bundle, when --client-ca is set.
    pub client_ca: std::sync::OnceLock<Arc<crate::client_tls::ClientCa>>,
}

impl State {
    pub fn new(shared: Shared) -> State {
        State {
            snapshot: ArcSwap::from_pointee(Snapshot::empty()),
            status: Mutex::new(ReloadStatus::default()),
            ready: AtomicBool::new(false),
            traffic_probe: parking_lot::Mutex::new(None),
            listening: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            tls_cert: std::sync::OnceLock::new(),
            client_ca: std::sync::OnceLock::new(),
            shared,
        }
    }
}

/// Result of one reload attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Unchanged,
    Failed,
}

/// Every manifest file with its stamp (a same-size copy that kept its
/// mtime still changes the inode and ctime).
type Fingerprint = Vec<(PathBuf, FileStamp)>;

/// Builds snapshots from a folder, remembering the last good objects.
pub struct Reloader {
    dir: PathBuf,
    state: Arc<State>,
    last_good: HashMap<ObjectRef, (Resource, PathBuf)>,
    fingerprint: Option<Fingerprint>,
    settle: Duration,
    /// Parse results of unchanged files, reused by the next reload.
    cache: FileCache,
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Whether a file of the listing was changed within `settle` of `now_ns`
/// (still being written). A file dated further in the future (clock skew
/// between the writer's node and this one) is not: it would otherwise hold
/// every reload for the whole settle deadline, for as long as the skew lasts.
fn being_written(listing: &Listing, now_ns: i128, settle: Duration) -> bool {
    let window = settle.as_nanos() as i128;
    listing
        .files
        .iter()
        .flat_map(|(_, s)| s)
        .any(|s| tollgate_crds::loader::recently_changed(s.changed_ns(), now_ns, window))
}

impl Reloader {
    pub fn new(dir: PathBuf, state: Arc<State>, settle: Duration) -> Reloader {
        Reloader { dir, state, last_good: HashMap::new(), fingerprint: None, settle, cache: FileCache::default() }
    }

    /// Waits until no manifest was modified within the settle time (files
    /// still being written), for at most 2 s. The listing is what the
    /// reload then loads: the folder is walked and stat'ed once per look.
    fn settled_listing(&self) -> Result<Listing, Box<LoadError>> {
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        loop {
            let listing = list_dir(&self.dir)?;
            if !being_written(&listing, tollgate_crds::loader::now_ns(), self.settle)
                || std::time::Instant::now() >= deadline
            {
                return Ok(listing);
            }
            std::thread::sleep(self.settle);
        }
    }

    /// Reloads when the folder changed (or always with `force`).
    pub fn reload(&mut self, force: bool) -> Outcome {
        let listing = self.settled_listing();
        // Timed from the settled listing (the wait for writers is not reload work).
        let started = std::time::Instant::now();
        let (outcome, fp) = match listing {
            Ok(listing) => {
                let fp: Fingerprint = listing.files.iter().filter_map(|(f, s)| s.map(|s| (f.clone(), s))).collect();
                if !force && self.fingerprint.as_ref() == Some(&fp) {
                    let metrics = &self.state.shared.metrics;
                    metrics.reloads.get_or_create(&crate::metrics::ResultLabels { result: "unchanged" }).inc();
                    return Outcome::Unchanged;
                }
                (self.rebuild(Ok(listing)), Some(fp))
            }
            Err(e) => (self.rebuild(Err(e)), None),
        };
        let took = started.elapsed();
        if outcome != Outcome::Failed {
            self.fingerprint = fp;
        }
        let metrics = &self.state.shared.metrics;
        metrics.reload_duration.0.observe(took.as_secs_f64());
        self.state.status.lock().last_reload_millis = Some((took.as_secs_f64() * 1e6).round() / 1e3);
        let label = match outcome {
            Outcome::Applied => "applied",
            Outcome::Unchanged => "unchanged",
            Outcome::Failed => "failed",
        };
        metrics.reloads.get_or_create(&crate::metrics::ResultLabels { result: label }).inc();
        outcome
    }

    /// How long until the files that were young when last read have
    /// settled and can be looked at again ([`Reloader::verify_young`]);
    /// None when no file awaits that.
    pub fn young_settle_in(&self) -> Option<Duration> {
        let until = self.cache.young_until()?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i128).unwrap_or(0);
        Some(Duration::from_nanos(u64::try_from(until - now).unwrap_or(0)))
    }

    /// The second look at files that were young when read (see
    /// [`FileCache::verify_settled`]): reloads when one of them changed
    /// without its stamp showing it, otherwise only remembers them as
    /// settled, which spares the next reload reading them again.
    pub fn verify_young(&mut self) -> Outcome {
        let young = self.cache.young();
        let started = std::time::Instant::now();
        if self.cache.verify_settled() {
            tracing::debug!(files = young, took_ms = started.elapsed().as_secs_f64() * 1e3, "young files unchanged");
            return Outcome::Unchanged;
        }
        tracing::info!("a file changed within its first second without its times showing it; reloading");
        self.reload(true)
    }

    fn rebuild(&mut self, listing: Result<Listing, Box<LoadError>>) -> Outcome {
        let t0 = std::time::Instant::now();
        let report = match listing {
            Ok(listing) => load_listing_cached(listing, &mut self.cache),
            Err(e) => {
                let mut st = self.state.status.lock();
                st.errors = vec![status_error(&e, !self.last_good.is_empty())];
                st.last_reload = Some(unix_now());
                self.state.shared.metrics.config_errors.set(1);
                tracing::error!(error = %e, "configuration folder unreadable; keeping the current snapshot");
                return Outcome::Failed;
            }
        };
        let t_load = t0.elapsed();
        let mut objects: BTreeMap<ObjectRef, Resource> = BTreeMap::new();
        let mut sources: HashMap<ObjectRef, PathBuf> = HashMap::new();
        for l in report.resources {
            if matches!(l.resource, Resource::ApiManager(_)) {
                continue;
            }
            let r = l.resource.object_ref();
            sources.insert(r.clone(), l.source.file);
            objects.insert(r, l.resource);
        }
        let mut errors = Vec::new();
        for e in &report.errors {
            let mut kept = false;
            match &e.object {
                Some(obj) if !objects.contains_key(obj) => {
                    if let Some((res, file)) = self.last_good.get(obj) {
                        objects.insert(obj.clone(), res.clone());
                        sources.insert(obj.clone(), file.clone());
                        kept = true;
                    }
                }
                Some(_) => {}
                None => {
                    for (obj, (res, file)) in &self.last_good {
                        if file == &e.file && !objects.contains_key(obj) {
                            objects.insert(obj.clone(), res.clone());
                            sources.insert(obj.clone(), file.clone());
                            kept = true;
                        }
                    }
                }
            }
            errors.push(status_error(e, kept));
        }
        self.keep_policies_still_in_use(&mut objects, &mut sources, &mut errors);
        let t_objects = t0.elapsed();
        let current = self.state.snapshot.load_full();
        let (mut snapshot, mut compile_errors) = compile(&objects, &self.state.shared, &current);
        if !compile_errors.is_empty() {
            // Put back the last good version of objects that no longer compile.
            let mut replaced = false;
            for ce in &compile_errors {
                if let Some((res, file)) = self.last_good.get(&ce.object)
                    && objects.get(&ce.object) != Some(res)
                {
                    objects.insert(ce.object.clone(), res.clone());
                    sources.insert(ce.object.clone(), file.clone());
                    replaced = true;
                }
            }
            let first_errors = std::mem::take(&mut compile_errors);
            if replaced {
                (snapshot, compile_errors) = compile(&objects, &self.state.shared, &current);
            } else {
                compile_errors = first_errors.clone();
            }
            let object_error = |ce: &crate::snapshot::ObjectError, serving_last_good: bool| StatusError {
                file: sources.get(&ce.object).map(|f| f.display().to_string()),
                document: None,
                object: Some(ce.object.to_string()),
                field: None,
                reason: ce.message.clone(),
                serving_last_good,
            };
            for ce in &first_errors {
                let still_failing = compile_errors.iter().any(|c| c.object == ce.object);
                errors.push(object_error(ce, !still_failing && self.last_good.contains_key(&ce.object)));
            }
            for ce in compile_errors.iter().filter(|c| !first_errors.iter().any(|f| f.object == c.object)) {
                errors.push(object_error(ce, false));
            }
        }
        let t_compile = t0.elapsed();
        // New backend names are looked up now, in parallel and off the
        // request path, so the snapshot starts with their addresses.
        self.state.shared.dns.resolve_pending(Duration::from_secs(2));
        self.last_good = objects
            .into_iter()
            .filter(|(o, _)| !compile_errors.iter().any(|c| &c.object == o))
            .filter_map(|(o, r)| sources.get(&o).cloned().map(|f| (o, (r, f))))
            .collect();

        let t_last_good = t0.elapsed();
        let metrics = &self.state.shared.metrics;
        metrics.config_errors.set(errors.len() as i64);
        metrics.apis.set(snapshot.apis.len() as i64);
        metrics.policies.set(snapshot.policies.len() as i64);
        for e in &errors {
            tracing::warn!(file = e.file.as_deref().unwrap_or(""), object = e.object.as_deref().unwrap_or(""), reason = %e.reason, "configuration problem");
        }
        let changed = self.state.snapshot.load().revision != snapshot.revision;
        tracing::debug!(
            load_ms = t_load.as_secs_f64() * 1e3,
            objects_ms = (t_objects - t_load).as_secs_f64() * 1e3,
            compile_ms = (t_compile - t_objects).as_secs_f64() * 1e3,
            after_ms = (t_last_good - t_compile).as_secs_f64() * 1e3,
            "reload phases"
        );
        let mut st = self.state.status.lock();
        st.errors = errors;
        st.last_reload = Some(unix_now());
        if changed || !self.state.ready.load(Ordering::Relaxed) {
            st.generation += 1;
            metrics.snapshot_revision.set(st.generation as i64);
            tracing::info!(revision = %snapshot.revision, apis = snapshot.apis.len(), policies = snapshot.policies.len(), "routing snapshot applied");
            self.state.snapshot.store(Arc::new(snapshot));
            self.state.ready.store(true, Ordering::Release);
            Outcome::Applied
        } else {
            Outcome::Unchanged
        }
    }
}

impl Reloader {
    /// A ThrottlePolicy removed from the folder while an API still uses it
    /// keeps its last good version (the API is not dropped, its counters
    /// stay); reported on /status until no API uses it any more. (Not so a
    /// KeyManager: a removed issuer is no longer trusted, and the APIs that
    /// name it stop being served until it is back.)
    fn keep_policies_still_in_use(
        &self,
        objects: &mut BTreeMap<ObjectRef, Resource>,
        sources: &mut HashMap<ObjectRef, PathBuf>,
        errors: &mut Vec<StatusError>,
    ) {
        let mut users: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
        for (r, res) in objects.iter() {
            let Resource::ApiDeployment(ad) = res else { continue };
            let manager_ns = ad.spec.api_manager_ref.namespace.clone().unwrap_or_else(|| r.namespace.clone());
            let names = ad
                .spec
                .throttling
                .iter()
                .chain(ad.spec.operations.iter().filter_map(|o| o.throttling.as_ref()))
                .map(|t| t.policy.clone());
            for name in names {
                for ns in [&r.namespace, &manager_ns] {
                    users.entry((ns.clone(), name.clone())).or_default().push(r.to_string());
                }
            }
        }
        for (obj, (res, file)) in &self.last_good {
            if !matches!(res, Resource::ThrottlePolicy(_)) || objects.contains_key(obj) {
                continue;
            }
            let Some(apis) = users.get(&(obj.namespace.clone(), obj.name.clone())) else { continue };
            let mut apis = apis.clone();
            apis.sort();
            apis.dedup();
            objects.insert(obj.clone(), res.clone());
            sources.insert(obj.clone(), file.clone());
            errors.push(StatusError {
                file: Some(file.display().to_string()),
                document: None,
                object: Some(obj.to_string()),
                field: None,
                reason: format!(
                    "PolicyRemoved: the policy was removed but {} still use(s) it; serving its last good version",
                    apis.join(", ")
                ),
                serving_last_good: true,
            });
        }
    }
}

fn status_error(e: &LoadError, kept: bool) -> StatusError {
    StatusError {
        file: Some(e.file.display().to_string()),
        document: e.document,
        object: e.object.as_ref().map(|o| o.to_string()),
        field: e.field.clone(),
        reason: e.message.clone(),
        serving_last_good: kept,
    }
}

/// Whether an inotify event can mean a changed folder. Opening and reading
/// files are events too (the inotify backend asks for IN_OPEN): the
/// reloader's own listing and reads would otherwise wake it again, a reload
/// loop every debounce interval for as long as the gateway runs.
fn is_change(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// Shortest wait before a second look at young files (no busy loop when
/// one cannot be settled, say behind an unreadable folder).
const MIN_YOUNG_WAIT: Duration = Duration::from_millis(200);

/// Runs the watcher on its own thread: inotify events plus a periodic rescan.
pub fn spawn(mut reloader: Reloader, rescan: Duration, debounce: Duration) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("config-watch".into())
        .spawn(move || {
            let (tx, rx) = mpsc::channel::<()>();
            let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                if res.is_ok_and(|e| is_change(&e.kind)) {
                    let _ = tx.send(());
                }
            })
            .and_then(|mut w| w.watch(&reloader.dir, notify::RecursiveMode::Recursive).map(|_| w));
            let _watcher = match watcher {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!(error = %e, "inotify unavailable; relying on the periodic rescan");
                    None
                }
            };
            let mut next_rescan = Instant::now() + rescan;
            loop {
                // Wake for the periodic rescan, or earlier to take the
                // second look at files read while young.
                let until_rescan = next_rescan.saturating_duration_since(Instant::now());
                let young = reloader.young_settle_in().map(|d| d.max(MIN_YOUNG_WAIT));
                match rx.recv_timeout(young.map_or(until_rescan, |y| y.min(until_rescan))) {
                    Ok(()) => {
                        std::thread::sleep(debounce);
                        while rx.try_recv().is_ok() {}
                        reloader.reload(false);
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < next_rescan => {
                        reloader.verify_young();
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        next_rescan = Instant::now() + rescan;
                        reloader.reload(false);
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        std::thread::sleep(rescan);
                        reloader.reload(false);
                    }
                }
                reloader.state.shared.counters.sweep(crate::throttle::now_ms());
                if let Some(tm) = &reloader.state.shared.traffic {
                    tm.sweep(crate::throttle::now_ms());
                }
            }
        })
        .expect("spawning the config watcher thread")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_dated_in_the_future_is_not_being_written() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("api.yaml");
        std::fs::write(&file, "kind: Nothing\n").unwrap();
        let settle = Duration::from_millis(200);
        let window = settle.as_nanos() as i128;
        let listing = list_dir(tmp.path()).unwrap();
        let changed = listing.files[0].1.unwrap().changed_ns();
        // Times relative to the file's own: no clock of this machine involved.
        assert!(being_written(&listing, changed + window / 2, settle), "changed just now");
        assert!(!being_written(&listing, changed + 2 * window, settle), "settled");
        assert!(being_written(&listing, changed - window / 2, settle), "a writer's clock a little ahead");
        // Another node's clock an hour ahead: settled, not written for an hour.
        let ahead = SystemTime::now() + Duration::from_secs(3600);
        std::fs::File::options().write(true).open(&file).unwrap().set_modified(ahead).unwrap();
        let listing = list_dir(tmp.path()).unwrap();
        assert!(listing.files[0].1.unwrap().changed_ns() > tollgate_crds::loader::now_ns() + 1_000 * window);
        assert!(!being_written(&listing, tollgate_crds::loader::now_ns(), settle));
    }
}
