//! The writer of the artifact folders. For each ApiManager folder it keeps,
//! in memory, the content hash of every file it owns (seeded from disk the
//! first time the folder is planned, and again after a failed write), so a
//! sync writes exactly the files whose content changed and removes exactly
//! the ones no longer planned, without reading anything back.
//!
//! One async lock per folder serializes its writers in this process and
//! guards what the writer knows, along with the manager's render cache
//! (see [`crate::plan::Renders`]).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use crate::artifacts::{OWNED_DIRS, ensure_dir, read_serving, write_atomic};
use crate::error::{Error, Result};
use crate::plan::{Key, Renders, Route};

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SyncReport {
    pub written: usize,
    pub removed: usize,
}

/// Every manager folder's lock and state.
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

type Hash = [u8; 32];

fn hash(content: &str) -> Hash {
    Sha256::digest(content.as_bytes()).into()
}

/// What the writer knows about one manager folder.
#[derive(Default)]
pub struct FolderState {
    /// Relative path -> content hash of every owned file; None until seeded.
    files: Option<HashMap<String, Hash>>,
    /// The route each API artifact in the folder claims (the tie-breaker
    /// between two ApiDeployments created in the same second).
    serving: BTreeMap<Key, Route>,
    /// Rendered documents of this manager's objects.
    renders: Renders,
}

impl FolderState {
    /// Whether the state reflects the folder (seeded and not forgotten).
    pub fn known(&self) -> bool {
        self.files.is_some()
    }

    /// Reads the folder once: the hash of every owned file and the routes
    /// its API artifacts claim; leftover temp files go.
    pub fn seed(&mut self, dir: &Path) -> Result<()> {
        let mut files = HashMap::new();
        for sub in OWNED_DIRS {
            let d = dir.join(sub);
            let entries = match std::fs::read_dir(&d) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::Artifact { path: d, source: e }),
            };
            for entry in entries {
                let entry = entry.map_err(|e| Error::Artifact { path: d.clone(), source: e })?;
                let name = entry.file_name();
                let Some(fname) = name.to_str() else { continue };
                if fname.starts_with(".tmp-") {
                    let _ = std::fs::remove_file(entry.path());
                    continue;
                }
                if !fname.ends_with(".yaml") {
                    continue;
                }
                // An unreadable file counts as different content: rewritten or removed.
                let content = std::fs::read(entry.path()).unwrap_or_default();
                files.insert(format!("{sub}/{fname}"), Sha256::digest(&content).into());
            }
        }
        self.serving = read_serving(dir)?;
        self.files = Some(files);
        Ok(())
    }

    /// The routes the folder's API artifacts claim.
    pub fn serving(&self) -> &BTreeMap<Key, Route> {
        &self.serving
    }

    /// What a plan reads (the routes served) and updates (the renders).
    pub fn plan_parts(&mut self) -> (&BTreeMap<Key, Route>, &mut Renders) {
        (&self.serving, &mut self.renders)
    }

    /// Whether the folder holds a file (None when not known).
    pub fn holds(&self, rel: &str) -> Option<bool> {
        self.files.as_ref().map(|f| f.contains_key(rel))
    }

    /// Forget what the folder holds (it is read again before the next sync).
    pub fn forget(&mut self) {
        self.files = None;
    }

    /// Makes the folder hold exactly `files`: writes what differs, removes
    /// what is no longer planned. On failure the state is forgotten, so the
    /// next sync reads the folder again.
    pub fn sync(
        &mut self,
        dir: &Path,
        planned: &BTreeMap<String, Arc<str>>,
        serving: BTreeMap<Key, Route>,
        tmp_tag: &str,
    ) -> Result<SyncReport> {
        if self.files.is_none() {
            self.seed(dir)?;
        }
        let result = self.write(dir, planned, tmp_tag);
        match &result {
            Ok(_) => self.serving = serving,
            Err(_) => self.forget(),
        }
        result
    }

    fn write(&mut self, dir: &Path, planned: &BTreeMap<String, Arc<str>>, tmp_tag: &str) -> Result<SyncReport> {
        let known = self.files.get_or_insert_with(HashMap::new);
        let mut report = SyncReport::default();
        if known.is_empty() {
            ensure_dir(dir)?;
        }
        for (rel, content) in planned {
            let h = hash(content);
            if known.get(rel) == Some(&h) {
                continue;
            }
            write_atomic(&dir.join(rel), content.as_bytes(), tmp_tag)?;
            known.insert(rel.clone(), h);
            report.written += 1;
        }
        let stale: Vec<String> = known.keys().filter(|k| !planned.contains_key(*k)).cloned().collect();
        for rel in stale {
            let path = dir.join(&rel);
            match std::fs::remove_file(&path) {
                Ok(()) => report.removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::Artifact { path, source: e }),
            }
            known.remove(&rel);
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(pairs: &[(&str, &str)]) -> BTreeMap<String, Arc<str>> {
        pairs.iter().map(|(k, v)| (k.to_string(), Arc::from(*v))).collect()
    }

    fn sync(state: &mut FolderState, dir: &Path, pairs: &[(&str, &str)]) -> SyncReport {
        state.sync(dir, &files(pairs), BTreeMap::new(), "test").unwrap()
    }

    #[test]
    fn writes_only_what_changed_and_removes_the_rest() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ns/apim");
        let mut s = FolderState::default();
        assert_eq!(sync(&mut s, &dir, &[("apis/a_x.yaml", "one"), ("policies/a_p.yaml", "p")]).written, 2);
        assert_eq!(
            sync(&mut s, &dir, &[("apis/a_x.yaml", "one"), ("policies/a_p.yaml", "p")]),
            SyncReport::default(),
            "unchanged content is not rewritten"
        );
        // A foreign file outside the owned folders and a non-yaml file stay.
        std::fs::write(dir.join("README"), "mine").unwrap();
        std::fs::write(dir.join("apis/notes.txt"), "mine").unwrap();
        assert_eq!(sync(&mut s, &dir, &[("apis/a_x.yaml", "two")]), SyncReport { written: 1, removed: 1 });
        assert_eq!(std::fs::read_to_string(dir.join("apis/a_x.yaml")).unwrap(), "two");
        assert!(!dir.join("policies/a_p.yaml").exists());
        assert!(dir.join("README").exists() && dir.join("apis/notes.txt").exists());
        assert_eq!(s.holds("apis/a_x.yaml"), Some(true));
        assert_eq!(s.holds("policies/a_p.yaml"), Some(false));
    }

    #[test]
    fn a_new_writer_seeds_from_the_folder_and_rewrites_nothing_that_matches() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ns/apim");
        let mut first = FolderState::default();
        sync(&mut first, &dir, &[("apis/a_x.yaml", "one"), ("keymanagers/a_k.yaml", "k")]);
        std::fs::write(dir.join("apis/.tmp-a_x.yaml-other"), "half").unwrap();
        std::fs::write(dir.join("policies/a_old.yaml"), "left over").unwrap();
        // A restart: nothing known until seeded.
        let mut second = FolderState::default();
        assert_eq!(second.holds("apis/a_x.yaml"), None);
        let r = sync(&mut second, &dir, &[("apis/a_x.yaml", "one"), ("keymanagers/a_k.yaml", "k")]);
        assert_eq!(r, SyncReport { written: 0, removed: 1 }, "only the left-over file goes");
        assert!(!dir.join("apis/.tmp-a_x.yaml-other").exists(), "stale temp files are cleaned");
    }

    #[test]
    fn a_failed_write_forgets_and_the_next_sync_reads_the_folder_again() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ns/apim");
        let mut s = FolderState::default();
        sync(&mut s, &dir, &[("apis/a_x.yaml", "one")]);
        // Someone else changes the file behind our back, then a write fails.
        std::fs::write(dir.join("apis/a_x.yaml"), "tampered").unwrap();
        std::fs::create_dir_all(dir.join("apis/a_dir.yaml")).unwrap();
        assert!(
            s.sync(&dir, &files(&[("apis/a_x.yaml", "one"), ("apis/a_dir.yaml", "d")]), BTreeMap::new(), "t").is_err()
        );
        assert!(!s.known());
        std::fs::remove_dir(dir.join("apis/a_dir.yaml")).unwrap();
        let r = sync(&mut s, &dir, &[("apis/a_x.yaml", "one")]);
        assert_eq!(r.written, 1, "re-seeded: the tampered file is seen and fixed");
        assert_eq!(std::fs::read_to_string(dir.join("apis/a_x.yaml")).unwrap(), "one");
    }
}
