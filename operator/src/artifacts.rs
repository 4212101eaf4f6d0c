//! The artifact folder of one ApiManager on the ReadWriteMany volume:
//! `<artifact-dir>/<namespace>/<name>/{apis,policies,keymanagers}/*.yaml`.
//!
//! Files are written atomically (a hidden temp file in the same folder, fsync,
//! rename), so a gateway never reads half a file. What to write is decided
//! by [`crate::folder`], which writes only what changed.

use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
};

use crate::{
    error::{Error, Result},
    plan::{Key, Route},
};

/// The sub-folders the operator owns inside a manager's folder.
pub const OWNED_DIRS: [&str; 3] = ["apis", "policies", "keymanagers"];

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

/// Remove the whole folder of a manager (its ApiManager is gone).
pub fn remove_dir(dir: &Path) -> Result<bool> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::Artifact { path: dir.to_path_buf(), source: e }),
    }
}

/// Write through a hidden temp file and rename it into place. The temp
/// file's name carries `tag` (the replica's identity): two replicas never
/// share one.
pub fn write_atomic(path: &Path, bytes: &[u8], tag: &str) -> Result<()> {
    let parent = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    let fname = path.file_name().and_then(|f| f.to_str()).unwrap_or("artifact");
    let tag: String = tag.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
    let tmp = parent.join(format!(".tmp-{fname}-{tag}-{}", std::process::id()));
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

    #[test]
    fn rewrites_keep_the_inode_swap_atomic() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("apis/x.yaml");
        write_atomic(&p, b"first", "r1").unwrap();
        write_atomic(&p, b"second", "r1").unwrap();
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
