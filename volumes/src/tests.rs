use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};

use super::*;

const OWNER: Owner = Owner { uid: 65532, gid: 65532 };

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A volume as kubelet leaves a hostPath: root's folder, plus what an
/// earlier root-run step left in it, and a link pointing outside.
fn root_volume() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let volume = dir.path().join("volume");
    std::fs::create_dir(&volume).unwrap();
    std::fs::set_permissions(&volume, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir(volume.join("locked")).unwrap();
    std::fs::write(volume.join("locked/db.sqlite"), b"x").unwrap();
    std::fs::set_permissions(volume.join("locked"), std::fs::Permissions::from_mode(0o500)).unwrap();
    let outside = dir.path().join("outside.txt");
    std::fs::write(&outside, b"not the volume's").unwrap();
    symlink(&outside, volume.join("link")).unwrap();
    (dir, volume, outside)
}

#[test]
fn a_root_owned_volume_and_everything_in_it_is_given_to_the_user_and_nothing_outside() {
    let (_dir, volume, outside) = root_volume();
    let before = std::fs::metadata(&outside).unwrap();
    let result = give(&volume, OWNER);
    if !is_root() {
        // Without CAP_CHOWN the step fails and says what it needs.
        let e = result.unwrap_err();
        assert_eq!(e.metric_label(), "chown", "{e}");
        assert!(e.to_string().contains(&volume.display().to_string()), "{e}");
        assert!(e.to_string().contains("CHOWN capability"), "{e}");
        return;
    }
    let report = result.unwrap();
    assert_eq!(report, Report { examined: 4, changed: 4 });
    for path in [volume.clone(), volume.join("locked"), volume.join("locked/db.sqlite")] {
        let m = std::fs::metadata(&path).unwrap();
        assert_eq!((m.uid(), m.gid()), (65532, 65532), "{}", path.display());
    }
    let link = std::fs::symlink_metadata(volume.join("link")).unwrap();
    assert_eq!((link.uid(), link.gid()), (65532, 65532), "the link itself changes hands");
    let after = std::fs::metadata(&outside).unwrap();
    assert_eq!((after.uid(), after.gid()), (before.uid(), before.gid()), "what the link points to does not");
    let locked = std::fs::metadata(volume.join("locked")).unwrap().permissions().mode() & 0o777;
    assert_eq!(locked, 0o700, "a folder its owner could not write gains owner rwx");
    let file = std::fs::metadata(volume.join("locked/db.sqlite")).unwrap().permissions().mode() & 0o777;
    assert_eq!(file, 0o644, "file modes are kept");

    // A second run changes nothing.
    assert_eq!(give(&volume, OWNER).unwrap(), Report { examined: 4, changed: 0 });
}

#[test]
fn a_missing_folder_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let volume = dir.path().join("a/b");
    let result = give(&volume, OWNER);
    assert!(volume.is_dir(), "created before it changes hands");
    if is_root() {
        assert_eq!(result.unwrap(), Report { examined: 1, changed: 1 });
        assert_eq!(std::fs::metadata(&volume).unwrap().uid(), 65532);
    } else {
        assert_eq!(result.unwrap_err().metric_label(), "chown");
    }
}

#[test]
fn relative_paths_root_and_uid_0_are_refused_and_a_file_is_not_a_folder() {
    assert_eq!(give(Path::new("data"), OWNER).unwrap_err().metric_label(), "bad_path");
    assert_eq!(give(Path::new("/"), OWNER).unwrap_err().metric_label(), "bad_path");
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(give(dir.path(), Owner { uid: 0, gid: 0 }).unwrap_err().metric_label(), "root_owner");
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let e = give(&file, OWNER).unwrap_err();
    assert!(matches!(e, Error::NotAFolder(_) | Error::Create { .. }), "{e}");
}

#[test]
fn the_subcommand_reports_each_folder_and_stops_at_the_first_error() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good");
    let args = Args::try_parse_from(["fix-permissions", good.to_str().unwrap(), "relative"]).unwrap();
    assert_eq!((args.uid, args.gid), (65532, 65532), "the images' user by default");
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let status = run(&args, &mut out, &mut err);
    assert_eq!(status, 1);
    let (out, err) = (String::from_utf8(out).unwrap(), String::from_utf8(err).unwrap());
    if is_root() {
        assert_eq!(
            out,
            format!("fix-permissions: {} given to uid 65532 gid 65532 (1 of 1 entries changed)\n", good.display())
        );
        assert_eq!(err, "fix-permissions: relative: the folder must be an absolute path other than /\n");
    } else {
        assert!(err.contains("CHOWN capability"), "{err}");
    }
    assert!(Args::try_parse_from(["fix-permissions"]).is_err(), "a folder is required");
}
