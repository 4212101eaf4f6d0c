//! Folders the gateway writes (the SQLite database, the search index):
//! when one cannot be written, the error names the folder, the OS error,
//! the folder's owner and mode and the user the gateway runs as, which is
//! what fixing a volume with the wrong owner takes (README, "Storage").

use std::fs::OpenOptions;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// Creates `dir` if needed and checks that a file can be created in it.
/// `what` names the folder's use ("the database folder").
pub fn ensure_writable(dir: &Path, what: &str) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("{what} {}: {e}{}", dir.display(), owner_hint(dir));
    std::fs::create_dir_all(dir).map_err(fail)?;
    let probe = dir.join(format!(".tollgate-write-check-{}", std::process::id()));
    OpenOptions::new().write(true).create(true).truncate(true).open(&probe).map_err(fail)?;
    std::fs::remove_file(&probe).map_err(fail)
}

/// " (owned by uid U gid G, mode M; this process runs as uid U2 gid G2)"
/// for the folder or its nearest existing parent.
fn owner_hint(dir: &Path) -> String {
    let me = format!("uid {} gid {}", rustix::process::getuid().as_raw(), rustix::process::getgid().as_raw());
    let existing = dir.ancestors().find_map(|d| std::fs::metadata(d).ok().map(|m| (d, m)));
    match existing {
        Some((d, m)) => format!(
            " ({} is owned by uid {} gid {}, mode {:o}; the gateway runs as {me}: the volume must be writable by this \
             user, for example through the pod's fsGroup)",
            d.display(),
            m.uid(),
            m.gid(),
            m.permissions().mode() & 0o7777
        ),
        None => format!(" (the gateway runs as {me})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_writable_folder_is_created_and_left_clean() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("database");
        ensure_writable(&db, "the database folder").unwrap();
        assert!(db.is_dir());
        assert_eq!(std::fs::read_dir(&db).unwrap().count(), 0, "the probe file is removed");
    }

    #[test]
    fn a_folder_that_cannot_be_written_is_named_with_the_os_error_and_its_owner() {
        // A file where the folder should be: fails for every user, root too.
        let dir = tempfile::tempdir().unwrap();
        let blocked = dir.path().join("database");
        std::fs::write(&blocked, b"not a folder").unwrap();
        let e = ensure_writable(&blocked.join("inner"), "the database folder").unwrap_err();
        assert!(e.starts_with(&format!("the database folder {}", blocked.join("inner").display())), "{e}");
        assert!(e.contains("Not a directory") || e.contains("File exists"), "{e}");
        assert!(
            e.contains(&format!("{} is owned by uid", blocked.display())) && e.contains("the gateway runs as uid"),
            "{e}"
        );
    }
}
