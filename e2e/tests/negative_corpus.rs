//! Replays the negative corpus (crds/tests/invalid/*.yaml) against a real
//! kube-apiserver. Each manifest breaks one rule and names, in its first line
//! (`# expect: <fragment>`), a fragment of the apiserver's message. The
//! crds crate checks that its loader (same schema, same CEL rules) rejects
//! each with that fragment; here the apiserver must reject each on create
//! with a message containing it. Every mismatch is reported at once, with the
//! loader's messages next to the apiserver's.

use std::path::{Path, PathBuf};

use tollgate_e2e::{Cluster, create_manifest, error_message, install_crds, repo_root, yaml_to_json};

fn corpus() -> Vec<PathBuf> {
    files_of("crds/tests/invalid")
}

fn files_of(folder: &str) -> Vec<PathBuf> {
    let dir = repo_root().join(folder);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn expectation(path: &Path, text: &str) -> String {
    text.lines()
        .next()
        .and_then(|l| l.strip_prefix("# expect: "))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| panic!("{}: first line must be `# expect: <fragment>`", path.display()))
}

fn loader_messages(path: &Path, text: &str) -> Vec<String> {
    let (_, errors) = tollgate_crds::loader::load_str(path, text);
    errors.iter().map(|e| e.to_string()).collect()
}

/// The field paths the loader blames (e.g. `spec.limit.per`).
fn loader_fields(path: &Path, text: &str) -> Vec<String> {
    let (_, errors) = tollgate_crds::loader::load_str(path, text);
    errors.into_iter().filter_map(|e| e.field).collect()
}

#[tokio::test]
async fn every_invalid_manifest_is_rejected_by_the_apiserver_with_its_message() {
    let cluster = Cluster::connect().await;
    install_crds(&cluster.client).await;
    let ns = cluster.namespace("negative-corpus").await;

    let files = corpus();
    assert!(files.len() >= 15, "the corpus needs at least 15 manifests, has {}", files.len());
    let mut failures = Vec::new();
    let mut report = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(repo_root()).unwrap_or(f).display().to_string();
        let text = std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{rel}: {e}"));
        let expect = expectation(f, &text);
        let manifest = match yaml_to_json(&text) {
            Ok(m) => m,
            Err(e) => {
                failures.push(format!("{rel}: not one YAML document: {e}"));
                continue;
            }
        };
        match create_manifest(&cluster.client, ns.name(), &manifest).await {
            Ok(_) => failures.push(format!(
                "{rel}: ACCEPTED by the apiserver; expected a rejection containing {expect:?}\n    loader: {:?}",
                loader_messages(f, &text)
            )),
            Err(kube::Error::Api(status)) => {
                report.push(format!("{rel}: {} {}: {}", status.code, status.reason, status.message));
                if !status.message.contains(&expect) {
                    failures.push(format!(
                        "{rel}: expected {expect:?}\n    apiserver ({} {}): {}\n    loader: {:?}",
                        status.code,
                        status.reason,
                        status.message,
                        loader_messages(f, &text)
                    ));
                } else if status.code != 422 {
                    failures.push(format!(
                        "{rel}: rejected with {} {} (expected 422 Invalid): {}",
                        status.code, status.reason, status.message
                    ));
                } else {
                    // Same verdict, same place: every field the loader blames
                    // is one the apiserver names in its causes.
                    let causes: Vec<&str> =
                        status.details.iter().flat_map(|d| &d.causes).map(|c| c.field.as_str()).collect();
                    for field in loader_fields(f, &text) {
                        if !causes.contains(&field.as_str()) {
                            failures.push(format!(
                                "{rel}: the loader blames {field:?}, the apiserver's causes name {causes:?}: {}",
                                status.message
                            ));
                        }
                    }
                }
            }
            Err(e) => failures.push(format!("{rel}: request failed: {}", error_message(&e))),
        }
    }
    // Visible with --nocapture: what the apiserver said about each manifest.
    println!("{}", report.join("\n"));
    assert!(
        failures.is_empty(),
        "{} of {} invalid manifests were not rejected as expected by the apiserver:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

/// The boundary cases of crds/tests/valid/ (the crds crate checks the loader
/// accepts each): the apiserver accepts them too, so both CEL
/// implementations give the same verdict on them.
#[tokio::test]
async fn every_boundary_manifest_is_accepted_by_the_apiserver_as_by_the_loader() {
    let cluster = Cluster::connect().await;
    install_crds(&cluster.client).await;
    let ns = cluster.namespace("boundary-corpus").await;
    let files = files_of("crds/tests/valid");
    assert!(!files.is_empty());
    let mut failures = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(repo_root()).unwrap_or(f).display().to_string();
        let text = std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{rel}: {e}"));
        let manifest = yaml_to_json(&text).unwrap_or_else(|e| panic!("{rel}: {e}"));
        let loader = loader_messages(f, &text);
        match create_manifest(&cluster.client, ns.name(), &manifest).await {
            Ok(_) if loader.is_empty() => {}
            Ok(_) => failures.push(format!("{rel}: the apiserver accepts it, the loader says {loader:?}")),
            Err(e) => {
                failures.push(format!("{rel}: the apiserver refuses it: {}; loader: {loader:?}", error_message(&e)))
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
