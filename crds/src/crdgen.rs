//! Writes the CustomResourceDefinition YAML of every Tollgate resource.
//!
//! Usage: `crdgen [OUT_DIR ...]` (default `crds/`). With `--check`, compares
//! instead of writing and exits 1 when a file is stale.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut check = false;
    let mut dirs = Vec::new();
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--check" => check = true,
            "-h" | "--help" => {
                println!("usage: crdgen [--check] [OUT_DIR ...]   (default OUT_DIR: crds)");
                return ExitCode::SUCCESS;
            }
            _ => dirs.push(PathBuf::from(arg)),
        }
    }
    if dirs.is_empty() {
        dirs.push(PathBuf::from("crds"));
    }
    let mut stale = false;
    for dir in &dirs {
        for (file, crd) in tollgate_crds::crds() {
            let path = dir.join(file);
            let want = tollgate_crds::render_crd(&crd);
            let have = std::fs::read_to_string(&path).unwrap_or_default();
            if have == want {
                continue;
            }
            if check {
                eprintln!("stale: {} (run `make crds`)", path.display());
                stale = true;
            } else if let Err(e) = std::fs::create_dir_all(dir).and_then(|_| std::fs::write(&path, want)) {
                eprintln!("crdgen: cannot write {}: {e}", path.display());
                return ExitCode::FAILURE;
            } else {
                println!("wrote {}", path.display());
            }
        }
    }
    if stale { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}
