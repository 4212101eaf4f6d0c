//! Every manifest under tests/invalid/ breaks one validation rule and names,
//! in its first line (`# expect: <fragment>`), a fragment of the message the
//! kube-apiserver gives. Here the loader (same schema, same CEL rules) must
//! reject each with that message; the e2e suite replays the corpus against a
//! real kube-apiserver.

use std::path::Path;

use tollgate_crds::loader::load_str;

#[test]
fn every_invalid_manifest_is_rejected_with_its_message() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/invalid");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(files.len() >= 15, "the corpus needs at least 15 manifests, has {}", files.len());
    let mut failures = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{}: first line must be `# expect: <fragment>`", f.display()))
            .trim()
            .to_string();
        let (loaded, errors) = load_str(f, &text);
        if !loaded.is_empty() {
            failures.push(format!("{}: accepted", f.display()));
        } else if !errors.iter().any(|e| e.to_string().contains(&expect)) {
            failures.push(format!(
                "{}: expected {expect:?}, got {:?}",
                f.display(),
                errors.iter().map(|e| e.to_string()).collect::<Vec<_>>()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// tests/valid/ holds boundary cases both the loader and the kube-apiserver
/// must accept (the e2e suite replays them too): where the two CEL
/// implementations could disagree.
#[test]
fn every_boundary_manifest_is_accepted() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/valid");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(!files.is_empty());
    let mut failures = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let (loaded, errors) = load_str(f, &text);
        if loaded.len() != 1 || !errors.is_empty() {
            failures.push(format!("{}: {:?}", f.display(), errors.iter().map(|e| e.to_string()).collect::<Vec<_>>()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
