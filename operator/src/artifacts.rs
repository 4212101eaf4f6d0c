//! The artifact folder of one ApiManager on the ReadWriteMany volume:
//! `<artifact-dir>/<namespace>/<name>/{apis,policies,keymanagers}/*.yaml`.
//!
//! Files are written atomically (a hidden temp file in the same folder, fsync,
//! rename), so a gateway never reads half a file; unchanged content is never
//! rewritten, so an operator restart touches nothing.

use std::{
    collections::{BTreeMap, HashMap},
    io::Write,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use crate::{
    error::{Error, Result},
    plan::{Key, Route},
};

/// The sub-folders the operator owns inside a manager's folder.
const OWNED_DIRS: [&str; 3] = ["apis", "policies", "keymanagers"];

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SyncReport {
    pub written: usize,
    pub removed: usize,
}

/// Serializes the writers of each manager folder within this process; the
/// lock also guards what the writer knows about the folder.
#[derive(Default)]
pub struct Folders {
    locks: Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<FolderState>>>>,
}

impl Folders {
    pub fn lock_for(&self, dir: &Path) -> Arc<tokio::sync::Mutex<FolderState>> {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.entry(dir.to_path_buf()).or_default().clone()
    }
}

/// What the writer knows about one manager folder.
#[derive(Debug, Default)]
pub struct FolderState {
    /// The route each API artifact in the folder claims; `None` until read
    /// from the folder (after a start, or after a failed write).
    serving: Option<BTreeMap<Key, Route>>,
}

impl FolderState {
    /// The routes the folder's API artifacts claim, if known.
    pub fn serving(&self) -> Option<&BTreeMap<Key, Route>> {
        self.serving.as_ref()
    }

    /// Record what the folder holds after a successful sync.
    pub fn synced(&mut self, serving: BTreeMap<Key, Route>) {
        self.serving = Some(serving);
    }

    /// Forget what the folder holds (a failed write, or the folder removed).
    pub fn forget(&mut self) {
        self.serving = None;
    }
}

/// The route every API artifact in `dir/apis` claims. Files that are not
/// artifacts of this operator (unreadable, other shapes) claim nothing: the
/// next sync replaces or removes them.
pub fn read_serving(dir: &Path) -> Result<BTreeMap<Key, Route>> {
    let apis = dir.join("apis");
    let mut out = BTreeMap::new();
    let entries = match std::fs::read_dir(&apis) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::Artifact { path: apis, source: e }),
    };
    for entry in entries {
        let entry = entry.map_err(io_err(&apis))?;
        let name = entry.file_name();
        if name.to_str().is_none_or(|n| n.starts_with('.') || !n.ends_with(".yaml")) {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(entry.path()) else { continue };
        let Ok(doc) = serde_saphyr::from_str::<serde_json::Value>(&text) else { continue };
        let s = |v: &serde_json::Value| v.as_str().map(str::to_string);
        let (Some(ns), Some(name), Some(context), Some(version)) = (
            s(&doc["metadata"]["namespace"]),
            s(&doc["metadata"]["name"]),
            s(&doc["spec"]["context"]),
            s(&doc["spec"]["version"]),
        ) else {
            continue;
        };
        out.insert((ns, name), (context.trim_end_matches('/').to_string(), version));
    }
    Ok(out)
}

/// Folder of one ApiManager.
pub fn manager_dir(root: &Path, namespace: &str, name: &str) -> PathBuf {
    root.join(namespace).join(name)
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Artifact { path: path.to_path_buf(), source }
}

/// Create the manager folder (and its owned sub-folders) if missing.
pub fn ensure_dir(dir: &Path) -> Result<()> {
    for sub in OWNED_DIRS {
        let d = dir.join(sub);
        std::fs::create_dir_all(&d).map_err(io_err(&d))?;
    }
    Ok(())
}

/// Make the folder hold exactly `files` (relative paths under the owned
/// sub-folders): write what differs, remove what is no longer planned.
pub fn sync(dir: &Path, files: &BTreeMap<String, String>) -> Result<SyncReport> {
    ensure_dir(dir)?;
    let mut report = SyncReport::default();
    for (rel, content) in files {
        let path = dir.join(rel);
        if std::fs::read(&path).ok().as_deref() == Some(content.as_bytes()) {
            continue;
        }
        write_atomic(&path, content.as_bytes())?;
        report.written += 1;
    }
    for sub in OWNED_DIRS {
        let d = dir.join(sub);
        let entries = std::fs::read_dir(&d).map_err(io_err(&d))?;
        for entry in entries {
            let entry = entry.map_err(io_err(&d))?;
            let file_name = entry.file_name();
            let Some(fname) = file_name.to_str() else { continue };
            let rel = format!("{sub}/{fname}");
            let stale_temp = fname.starts_with(".tmp-");
            if stale_temp || (fname.ends_with(".yaml") && !files.contains_key(&rel)) {
                let p = entry.path();
                std::fs::remove_file(&p).map_err(io_err(&p))?;
                if !stale_temp {
                    report.removed += 1;
                }
            }
        }
    }
    Ok(report)
}

/// Remove the whole folder of a manager (its ApiManager is gone).
pub fn remove_dir(dir: &Path) -> Result<bool> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::Artifact { path: dir.to_path_buf(), source: e }),
    }
}

/// Write through a hidden temp file and rename it into place.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let parent = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    let fname = path.file_name().and_then(|f| f.to_str()).unwrap_or("artifact");
    let tmp = parent.join(format!(".tmp-{fname}-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::Artifact { path: path.to_path_buf(), source: e });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn writes_only_what_changed_and_removes_the_rest() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ns/apim");
        let r = sync(&dir, &files(&[("apis/a_x.yaml", "one"), ("policies/a_p.yaml", "p")])).unwrap();
        assert_eq!(r, SyncReport { written: 2, removed: 0 });
        let r = sync(&dir, &files(&[("apis/a_x.yaml", "one"), ("policies/a_p.yaml", "p")])).unwrap();
        assert_eq!(r, SyncReport::default(), "unchanged content is not rewritten");
        // A foreign file outside the owned folders and a non-yaml file stay.
        std::fs::write(dir.join("README"), "mine").unwrap();
        std::fs::write(dir.join("apis/notes.txt"), "mine").unwrap();
        std::fs::write(dir.join("apis/.tmp-a_x.yaml-1"), "half").unwrap();
        let r = sync(&dir, &files(&[("apis/a_x.yaml", "two")])).unwrap();
        assert_eq!(r, SyncReport { written: 1, removed: 1 });
        assert_eq!(std::fs::read_to_string(dir.join("apis/a_x.yaml")).unwrap(), "two");
        assert!(!dir.join("policies/a_p.yaml").exists());
        assert!(!dir.join("apis/.tmp-a_x.yaml-1").exists(), "stale temp files are cleaned");
        assert!(dir.join("README").exists() && dir.join("apis/notes.txt").exists());
    }

    #[test]
    fn key_manager_artifacts_are_owned_too() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ns/apim");
        // A folder from before KeyManagers: no keymanagers/ sub-folder yet.
        std::fs::create_dir_all(dir.join("apis")).unwrap();
        std::fs::create_dir_all(dir.join("policies")).unwrap();
        let r = sync(&dir, &files(&[("keymanagers/a_idp.yaml", "km")])).unwrap();
        assert_eq!(r, SyncReport { written: 1, removed: 0 });
        let r = sync(&dir, &files(&[])).unwrap();
        assert_eq!(r, SyncReport { written: 0, removed: 1 }, "an issuer no longer planned is no longer trusted");
        assert!(!dir.join("keymanagers/a_idp.yaml").exists());
    }

    #[test]
    fn rewrites_keep_the_inode_swap_atomic() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("apis/x.yaml");
        write_atomic(&p, b"first").unwrap();
        write_atomic(&p, b"second").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "second");
        let leftovers: Vec<_> = std::fs::read_dir(p.parent().unwrap()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temp files left behind");
    }

    #[test]
    fn remove_dir_is_idempotent() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ns/apim");
        ensure_dir(&dir).unwrap();
        assert!(remove_dir(&dir).unwrap());
        assert!(!remove_dir(&dir).unwrap());
    }
}
