//! The opt-in `fix-permissions` step: gives the folders of a volume to the
//! user the product runs as.
//!
//! Some storage applies no `fsGroup` (hostPath, local volumes, many NFS
//! provisioners): kubelet creates the folder root-owned with mode 0755 and
//! the operator or gateway, running as uid 65532, cannot write it. Both
//! binaries accept `fix-permissions [--uid U] [--gid G] FOLDER...` as their
//! first argument; the chart (`artifacts.fixPermissions`) and the operator
//! (`ApiManager spec.persistence.fixPermissions`) run it in an init
//! container as root with the single capability `CHOWN`.
//!
//! What it changes: the owner and group of each folder and of everything in
//! it (symbolic links themselves, never what they point to; it stays on the
//! folder's file system). A folder that was root's and lacked owner
//! `rwx` gains it before it changes hands (root owns it at that moment, so
//! no further capability is needed). Nothing else: no mode of a file, no
//! file outside the folders named.

use std::ffi::OsString;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use clap::Parser;
use rustix::fs::{AtFlags, CWD, Mode, chmodat, chownat};
use rustix::process::{Gid, Uid};

/// The user and group a volume is given to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// What one run did to one folder.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Entries looked at (the folder included).
    pub examined: u64,
    /// Entries whose owner or group changed.
    pub changed: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}: the folder must be an absolute path other than /")]
    BadPath(PathBuf),
    #[error("--uid 0 would give the volume to root; name the user the product runs as (65532 in its images)")]
    RootOwner,
    #[error("creating {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("{0} is not a folder")]
    NotAFolder(PathBuf),
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("giving {path} to uid {uid} gid {gid}: {source} (the step needs to run as root with the CHOWN capability)")]
    Chown { path: PathBuf, uid: u32, gid: u32, source: io::Error },
    #[error("adding owner rwx to {path}: {source}")]
    Chmod { path: PathBuf, source: io::Error },
}

impl Error {
    /// A short stable label for logs and metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::BadPath(_) => "bad_path",
            Error::RootOwner => "root_owner",
            Error::Create { .. } => "create",
            Error::NotAFolder(_) => "not_a_folder",
            Error::Read { .. } => "read",
            Error::Chown { .. } => "chown",
            Error::Chmod { .. } => "chmod",
        }
    }
}

/// Gives `folder` (created when missing) and everything in it to `owner`.
pub fn give(folder: &Path, owner: Owner) -> Result<Report, Error> {
    if !folder.is_absolute() || folder.parent().is_none() {
        return Err(Error::BadPath(folder.to_path_buf()));
    }
    if owner.uid == 0 {
        return Err(Error::RootOwner);
    }
    std::fs::create_dir_all(folder).map_err(|source| Error::Create { path: folder.to_path_buf(), source })?;
    let meta =
        std::fs::symlink_metadata(folder).map_err(|source| Error::Read { path: folder.to_path_buf(), source })?;
    if !meta.is_dir() {
        return Err(Error::NotAFolder(folder.to_path_buf()));
    }
    let mut report = Report::default();
    let walk = walkdir::WalkDir::new(folder).follow_links(false).same_file_system(true);
    for entry in walk {
        let entry = entry.map_err(|e| {
            let path = e.path().unwrap_or(folder).to_path_buf();
            Error::Read { path, source: e.into() }
        })?;
        let meta = entry.metadata().map_err(|e| Error::Read { path: entry.path().to_path_buf(), source: e.into() })?;
        report.examined += 1;
        if meta.uid() == owner.uid && meta.gid() == owner.gid {
            continue;
        }
        let path = entry.path();
        // Owner rwx on a folder while root still owns it: afterwards only
        // CAP_FOWNER could change its mode.
        let mode = meta.permissions().mode() & 0o7777;
        if meta.is_dir() && meta.uid() == 0 && mode & 0o700 != 0o700 {
            chmodat(CWD, path, Mode::from_raw_mode(mode | 0o700), AtFlags::empty())
                .map_err(|e| Error::Chmod { path: path.to_path_buf(), source: e.into() })?;
        }
        chownat(CWD, path, Some(Uid::from_raw(owner.uid)), Some(Gid::from_raw(owner.gid)), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| Error::Chown { path: path.to_path_buf(), uid: owner.uid, gid: owner.gid, source: e.into() })?;
        report.changed += 1;
    }
    Ok(report)
}

/// `fix-permissions`: the subcommand both binaries accept first.
#[derive(Debug, Parser)]
#[command(
    name = "fix-permissions",
    about = "Give folders (and everything in them) to the user the product runs as; for volumes that apply no fsGroup"
)]
pub struct Args {
    /// User to give the folders to.
    #[arg(long, default_value_t = 65532)]
    pub uid: u32,
    /// Group to give the folders to.
    #[arg(long, default_value_t = 65532)]
    pub gid: u32,
    /// Absolute folders, created when missing.
    #[arg(required = true)]
    pub folders: Vec<PathBuf>,
}

/// The name of the subcommand.
pub const SUBCOMMAND: &str = "fix-permissions";

/// When the process was started as `<binary> fix-permissions ...`, runs
/// the step, prints one line per folder and exits (status 1 on the first
/// error, 2 on bad arguments). Returns otherwise.
pub fn run_if_invoked() {
    let args: Vec<OsString> = std::env::args_os().collect();
    if args.get(1).map(|a| a.as_os_str()) != Some(SUBCOMMAND.as_ref()) {
        return;
    }
    let parsed = match Args::try_parse_from(&args[1..]) {
        Ok(parsed) => parsed,
        Err(e) => e.exit(),
    };
    std::process::exit(run(&parsed, &mut io::stdout(), &mut io::stderr()));
}

/// Runs the step for `args`, writing what it did; the exit status.
pub fn run(args: &Args, out: &mut impl io::Write, err: &mut impl io::Write) -> i32 {
    let owner = Owner { uid: args.uid, gid: args.gid };
    for folder in &args.folders {
        match give(folder, owner) {
            Ok(r) => {
                let _ = writeln!(
                    out,
                    "fix-permissions: {} given to uid {} gid {} ({} of {} entries changed)",
                    folder.display(),
                    owner.uid,
                    owner.gid,
                    r.changed,
                    r.examined
                );
            }
            Err(e) => {
                let _ = writeln!(err, "fix-permissions: {e}");
                return 1;
            }
        }
    }
    0
}

#[cfg(test)]
mod tests;
