//! The manifest loader: valid folders, foreign kinds, and precise errors.

use std::path::Path;

use tollgate_crds::Resource;
use tollgate_crds::loader::{FileCache, LoadError, load_dir, load_dir_cached, load_str};

const POLICY: &str = "apiVersion: tollgate.dev/v1alpha1
kind: ThrottlePolicy
metadata: {name: gold, namespace: banking}
spec:
  limit: {requests: 5000, per: 1m}
";

const API: &str = "apiVersion: tollgate.dev/v1alpha1
kind: ApiDeployment
metadata: {name: accounts, namespace: banking}
spec:
  apiManagerRef: {name: apim}
  context: /open-banking/aisp
  version: v3.1
  throttling: {policy: gold}
  operations:
  - {method: GET, path: '/accounts/{accountId}'}
  backend:
    endpoints: [{url: 'http://accounts.banking.svc:8080/v3'}]
";

fn write(dir: &Path, rel: &str, text: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn only_error(text: &str) -> LoadError {
    let (loaded, errors) = load_str(Path::new("x.yaml"), text);
    assert!(loaded.is_empty(), "nothing should load: {loaded:?}");
    assert_eq!(errors.len(), 1, "exactly one error expected: {errors:#?}");
    errors.into_iter().next().unwrap()
}

#[test]
fn valid_folder_loads_recursively_with_defaults() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "policies.yaml", POLICY);
    write(dir.path(), "apis/accounts.yml", API);
    write(dir.path(), "apis/.accounts.yaml.tmp", "garbage: [");
    write(dir.path(), "apis/.hidden.yaml", "garbage: [");
    write(dir.path(), "apis/README.md", "not a manifest");
    let report = load_dir(dir.path()).unwrap();
    assert!(report.errors.is_empty(), "{:#?}", report.errors);
    assert_eq!(report.resources.len(), 2);
    assert_eq!(report.files.len(), 2);
    let api = report.api_deployments().next().unwrap();
    assert_eq!(api.spec.context, "/open-banking/aisp");
    assert_eq!(api.spec.backend.retries, 1, "default retries");
    assert_eq!(api.spec.backend.timeout.0, "30s", "default timeout");
    assert_eq!(api.spec.backend.endpoints[0].weight, 1, "default weight");
    let tp = report.throttle_policies().next().unwrap();
    assert!(tp.spec.stop_on_quota_reach, "default stopOnQuotaReach");
    assert_eq!(tp.spec.limit.per.seconds(), Some(60));
}

#[test]
fn multi_document_file_and_default_namespace() {
    let text = format!("{POLICY}---\n---\n{}", API.replace("namespace: banking", "labels: {a: b}"));
    let (loaded, errors) = load_str(Path::new("all.yaml"), &text);
    assert!(errors.is_empty(), "{errors:#?}");
    assert_eq!(loaded.len(), 2);
    assert_eq!(loaded[0].source.document, 1);
    assert_eq!(loaded[1].source.document, 2, "empty documents are not counted");
    assert_eq!(loaded[1].source.line, 8, "line where the document starts");
    let r = loaded[1].resource.object_ref();
    assert_eq!((r.kind.as_str(), r.namespace.as_str(), r.name.as_str()), ("ApiDeployment", "default", "accounts"));
}

#[test]
fn foreign_kinds_are_ignored() {
    let text = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cm}}\ndata: {{a: b}}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: d}}\nspec: {{}}\n---\n{POLICY}"
    );
    let (loaded, errors) = load_str(Path::new("mixed.yaml"), &text);
    assert!(errors.is_empty(), "{errors:#?}");
    assert_eq!(loaded.len(), 1);
    assert!(matches!(loaded[0].resource, Resource::ThrottlePolicy(_)));
    assert_eq!(loaded[0].source.document, 3);
}

#[test]
fn unknown_kind_in_our_group_is_an_error() {
    let e = only_error("apiVersion: tollgate.dev/v1alpha1\nkind: ApiProduct\nmetadata: {name: x}\nspec: {}\n");
    assert_eq!(e.document, Some(1));
    assert_eq!(e.field.as_deref(), Some("kind"));
    assert!(e.message.contains("unknown kind \"ApiProduct\""), "{e}");
    assert!(e.message.contains("ApiManager, ApiDeployment, ThrottlePolicy"), "{e}");
}

#[test]
fn invalid_yaml_names_file_and_position() {
    let e = only_error("apiVersion: tollgate.dev/v1alpha1\nkind: ThrottlePolicy\nspec: {limit: [\n");
    assert_eq!(e.document, None, "a YAML syntax error fails the whole file");
    assert!(e.message.starts_with("invalid YAML"), "{e}");
    assert!(e.message.contains("line"), "position expected: {e}");
    assert!(e.to_string().starts_with("x.yaml: invalid YAML"), "{e}");
}

#[test]
fn missing_required_field_names_its_path() {
    let e = only_error(&POLICY.replace("limit: {requests: 5000, per: 1m}", "limit: {per: 1m}"));
    assert_eq!(e.field.as_deref(), Some("spec.limit.requests"));
    assert_eq!(e.message, "Required value");
    assert_eq!(e.object.as_ref().unwrap().to_string(), "ThrottlePolicy banking/gold");
    assert_eq!(
        e.to_string(),
        "x.yaml: document 1 (line 1): ThrottlePolicy banking/gold: spec.limit.requests: Required value"
    );
}

#[test]
fn wrong_type_names_its_path() {
    let e = only_error(&POLICY.replace("requests: 5000", "requests: lots"));
    assert_eq!(e.field.as_deref(), Some("spec.limit.requests"));
    assert!(e.message.contains("must be of type integer, got string"), "{e}");

    let e = only_error(&API.replace("- {method: GET,", "- {method: FETCH,"));
    assert_eq!(e.field.as_deref(), Some("spec.operations[0].method"));
    assert!(e.message.starts_with("Unsupported value: \"FETCH\""), "{e}");
}

#[test]
fn unknown_field_is_reported() {
    let e = only_error(&POLICY.replace("spec:\n", "spec:\n  limt: 3\n"));
    assert_eq!(e.field.as_deref(), Some("spec.limt"));
    assert_eq!(e.message, "unknown field \"limt\"");
}

#[test]
fn cel_rule_failure_is_reported_with_its_message() {
    let e = only_error(&POLICY.replace("per: 1m", "per: 45d"));
    assert_eq!(e.field.as_deref(), Some("spec.limit.per"));
    assert!(e.message.contains("between 1s and 30d"), "{e}");
}

#[test]
fn one_bad_document_does_not_hide_good_ones() {
    let text = format!("{POLICY}---\n{}", API.replace("context: /open-banking/aisp", "context: nope"));
    let (loaded, errors) = load_str(Path::new("f.yaml"), &text);
    assert_eq!(loaded.len(), 1);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].document, Some(2));
    assert_eq!(errors[0].object.as_ref().unwrap().name, "accounts");
}

#[test]
fn duplicates_and_unreadable_files_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.yaml", POLICY);
    write(dir.path(), "b.yaml", POLICY);
    std::fs::write(dir.path().join("c.yaml"), [0xff, 0xfe, 0x00]).unwrap();
    let report = load_dir(dir.path()).unwrap();
    assert_eq!(report.resources.len(), 1);
    assert_eq!(report.errors.len(), 2, "{:#?}", report.errors);
    assert!(report.errors.iter().any(|e| e.message.contains("duplicate object: already defined in")));
    assert!(report.errors.iter().any(|e| e.message.contains("not UTF-8")));
    assert!(load_dir(&dir.path().join("missing")).is_err());
}

#[test]
fn non_mapping_document_and_bad_names() {
    let e = only_error("- just\n- a list\n");
    assert!(e.message.contains("not a mapping"), "{e}");
    let e = only_error(&POLICY.replace("name: gold", "name: Gold_Tier"));
    assert_eq!(e.field.as_deref(), Some("metadata.name"));
}

/// A folder with a policy and an API, both written just now.
fn policy_and_api() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "policy.yaml", POLICY);
    write(tmp.path(), "apis/accounts.yaml", API);
    tmp
}

#[test]
fn cached_loads_see_every_change_and_match_uncached_loads() {
    let tmp = policy_and_api();
    let dir = tmp.path();
    let mut cache = FileCache::default();
    let first = load_dir_cached(dir, &mut cache).unwrap();
    assert_eq!(first, load_dir(dir).unwrap());
    assert_eq!(cache.last_parsed(), 2);
    assert_eq!(load_dir_cached(dir, &mut cache).unwrap(), first, "unchanged folder, same report");
    assert_eq!(cache.last_parsed(), 0, "files written just now are read again, but parsed only when changed");

    // Rewritten in place with the same length: must be read again.
    let same_len = POLICY.replace("5000", "6000");
    assert_eq!(same_len.len(), POLICY.len());
    write(dir, "policy.yaml", &same_len);
    let report = load_dir_cached(dir, &mut cache).unwrap();
    let limit = report.throttle_policies().next().unwrap().spec.limit.requests;
    assert_eq!(limit, 6000);
    assert_eq!(report, load_dir(dir).unwrap());
    assert_eq!(cache.last_parsed(), 1, "only the changed file");

    // Broken, then fixed; then removed: the cache follows.
    write(dir, "apis/accounts.yaml", "kind: [");
    let report = load_dir_cached(dir, &mut cache).unwrap();
    assert_eq!(report.api_deployments().count(), 0);
    assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
    write(dir, "apis/accounts.yaml", API);
    assert_eq!(load_dir_cached(dir, &mut cache).unwrap().api_deployments().count(), 1);
    std::fs::remove_file(dir.join("apis/accounts.yaml")).unwrap();
    let report = load_dir_cached(dir, &mut cache).unwrap();
    assert_eq!(report.api_deployments().count(), 0);
    assert!(cache.len() <= 1);
}

#[test]
fn settled_files_are_remembered_and_still_reread_when_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write(dir, "policy.yaml", POLICY);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let mut cache = FileCache::default();
    load_dir_cached(dir, &mut cache).unwrap();
    assert_eq!(cache.len(), 1, "a file older than a second is remembered");
    load_dir_cached(dir, &mut cache).unwrap();
    assert_eq!(cache.last_parsed(), 0);
    // Atomic replace (new inode), as the operator writes.
    write(dir, ".policy.yaml.tmp", &POLICY.replace("5000", "7000"));
    std::fs::rename(dir.join(".policy.yaml.tmp"), dir.join("policy.yaml")).unwrap();
    let report = load_dir_cached(dir, &mut cache).unwrap();
    assert_eq!(report.throttle_policies().next().unwrap().spec.limit.requests, 7000);
}

#[test]
fn symlinked_files_and_folders_are_followed_like_configmap_volumes() {
    // A ConfigMap volume: <dir>/..data -> ..2026_x/, <dir>/api.yaml -> ..data/api.yaml.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mount");
    write(&dir, "..2026_11_26/api.yaml", API);
    std::os::unix::fs::symlink("..2026_11_26", dir.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/api.yaml", dir.join("api.yaml")).unwrap();
    // A linked folder of policies.
    write(tmp.path(), "shared/policy.yaml", POLICY);
    std::os::unix::fs::symlink(tmp.path().join("shared"), dir.join("policies")).unwrap();
    let report = load_dir(&dir).unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.api_deployments().count(), 1, "the API once (hidden ..data is not read twice)");
    assert_eq!(report.throttle_policies().count(), 1);
    // A dangling link is skipped, not an error for the folder.
    std::os::unix::fs::symlink("missing.yaml", dir.join("gone.yaml")).unwrap();
    assert_eq!(load_dir(&dir).unwrap().api_deployments().count(), 1);
    // A link back to an ancestor (a loop) is not followed forever.
    std::os::unix::fs::symlink(&dir, dir.join("policies-loop")).unwrap();
    let report = load_dir(&dir).unwrap();
    assert_eq!(report.api_deployments().count(), 1);
    assert_eq!(report.throttle_policies().count(), 1);
}

mod never_panics {
    use proptest::prelude::*;
    use tollgate_crds::loader::load_str;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1500))]

        /// Any text, as YAML or JSON: errors, never a panic.
        #[test]
        fn on_arbitrary_text(text in any::<String>(), json in any::<bool>()) {
            let name = if json { "x.json" } else { "x.yaml" };
            let _ = load_str(std::path::Path::new(name), &text);
        }

        /// Manifest-shaped text with arbitrary values in the places a
        /// validator walks: errors, never a panic.
        #[test]
        fn on_manifest_shaped_text(
            kind in prop_oneof![Just("ApiDeployment".to_string()), Just("ThrottlePolicy".to_string()), Just("ApiManager".to_string()), ".{0,12}"],
            field in "[a-zA-Z]{1,12}",
            value in prop_oneof![".{0,20}", "[-0-9.e]{1,12}", Just("[1, {a: b}]".to_string()), Just("~".to_string())],
        ) {
            let text = format!(
                "apiVersion: tollgate.dev/v1alpha1\nkind: {kind}\nmetadata: {{name: x, namespace: y}}\nspec:\n  {field}: {value}\n  limit: {{requests: {value}, per: {value}}}\n  context: {value}\n"
            );
            let _ = load_str(std::path::Path::new("x.yaml"), &text);
        }
    }
}

#[test]
fn arbitrary_bytes_in_a_folder_are_an_error_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let bytes: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(tmp.path().join("garbage.yaml"), &bytes).unwrap();
    std::fs::write(tmp.path().join("garbage.json"), &bytes).unwrap();
    let report = load_dir(tmp.path()).unwrap();
    assert_eq!(report.errors.len(), 2, "{:?}", report.errors);
}

#[test]
fn a_large_folder_read_in_parallel_keeps_file_order_and_attributes_each_error() {
    // Enough files that they are read on several threads: the report must be
    // what one file after another gives (file-name order, each error on its
    // own file, duplicates across threads found).
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    for i in 0..300 {
        let text = match i {
            17 => "kind: [".to_string(),
            150 => API.replace("/open-banking/aisp", "relative"),
            // The same object as file 000: a duplicate.
            299 => API.replace("context: /open-banking/aisp", "context: /svc0"),
            _ => API
                .replace("name: accounts", &format!("name: api-{i:03}"))
                .replace("/open-banking/aisp", &format!("/svc{i}")),
        };
        write(dir, &format!("apis/{i:03}.yaml"), &text);
    }
    write(dir, "apis/000.yaml", &API.replace("/open-banking/aisp", "/svc0"));
    let report = load_dir(dir).unwrap();
    let names: Vec<String> = report.api_deployments().map(|a| a.metadata.name.clone().unwrap()).collect();
    assert_eq!(names.len(), 297, "300 files, one broken, one invalid, one duplicate: {:?}", report.errors);
    assert_eq!(names[0], "accounts");
    assert_eq!(names[1], "api-001");
    assert!(names.windows(2).skip(1).all(|w| w[0] < w[1]), "file-name order");
    let files_with_errors: Vec<String> =
        report.errors.iter().map(|e| e.file.file_name().unwrap().to_string_lossy().into_owned()).collect();
    for f in ["017.yaml", "150.yaml", "299.yaml"] {
        assert!(files_with_errors.iter().any(|e| e == f), "{f} reported: {:#?}", report.errors);
    }
    assert_eq!(report.files.len(), 300);
    assert_eq!(report, load_dir(dir).unwrap(), "the same every time");
}

#[test]
fn files_are_listed_depth_first_in_file_name_order() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    for rel in ["c/d/e.yaml", "b.yaml", "a-x.yaml", "a/z.yaml", "a/b/y.yaml", ".hidden/h.yaml", "notes.txt"] {
        write(dir, rel, POLICY);
    }
    let (files, errors) = tollgate_crds::loader::manifest_files(dir);
    assert!(errors.is_empty(), "{errors:?}");
    let rel: Vec<String> = files.iter().map(|f| f.strip_prefix(dir).unwrap().display().to_string()).collect();
    assert_eq!(rel, ["a/b/y.yaml", "a/z.yaml", "a-x.yaml", "b.yaml", "c/d/e.yaml"]);
}

/// Writes `rel` and loads the folder until the load saw the file while it
/// was young (a loaded machine may take over a second between the two; the
/// scenario then starts again once the file has settled).
fn written_and_loaded_young(dir: &Path, cache: &mut FileCache, rel: &str, text: &str, young: usize) {
    for _ in 0..20 {
        write(dir, rel, text);
        let written = std::time::Instant::now();
        load_dir_cached(dir, cache).unwrap();
        if written.elapsed() < std::time::Duration::from_millis(800) && cache.young() == young {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let _ = cache.verify_settled();
        load_dir_cached(dir, cache).unwrap();
    }
    panic!("{rel}: no load within 800 ms of writing it in 20 attempts");
}

#[test]
fn young_files_get_one_second_look_once_settled() {
    let tmp = policy_and_api();
    let dir = tmp.path();
    let mut cache = FileCache::default();
    let written = std::time::Instant::now();
    let first = load_dir_cached(dir, &mut cache).unwrap();
    let until = cache.young_until();
    let now = tollgate_crds::loader::now_ns();
    assert!(cache.verify_settled(), "nothing changed");
    // What holds only while the files are under a second old is checked
    // only when the machine got here that fast (a loaded one may not).
    if written.elapsed() < std::time::Duration::from_millis(800) {
        assert_eq!(cache.young(), 2, "written just now, not looked at again before they settle");
        let until = until.expect("young files await a second look");
        assert!(until > now && until <= now + 1_000_000_000, "settled within a second of their last change");
    }

    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert!(cache.verify_settled());
    assert_eq!(cache.young(), 0, "unchanged and settled: remembered as such");
    assert_eq!(cache.young_until(), None);
    assert_eq!(load_dir_cached(dir, &mut cache).unwrap(), first);
    assert_eq!(cache.last_parsed(), 0);

    // A change the listing has not seen yet: the second look reports it,
    // and leaves the digest for the load that follows.
    written_and_loaded_young(dir, &mut cache, "apis/accounts.yaml", API, 1);
    write(dir, "apis/accounts.yaml", &API.replace("accounts", "cards"));
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert!(!cache.verify_settled(), "the rewrite is seen");
    assert_eq!(cache.young(), 1, "still to be read by the next load");
    let report = load_dir_cached(dir, &mut cache).unwrap();
    assert_eq!(report, load_dir(dir).unwrap());
    assert_eq!(cache.last_parsed(), 1);
    assert_eq!(cache.young(), 0, "read after settling: nothing left to look at");

    // A young file that vanished is a change too.
    written_and_loaded_young(dir, &mut cache, "extra.yaml", &POLICY.replace("name: gold", "name: silver"), 1);
    std::fs::remove_file(dir.join("extra.yaml")).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert!(!cache.verify_settled());
}

#[test]
fn files_dated_far_in_the_future_are_settled_not_young() {
    use tollgate_crds::loader::recently_changed;
    let second = 1_000_000_000;
    assert!(recently_changed(10 * second, 10 * second + 1, second));
    assert!(!recently_changed(10 * second, 11 * second, second));
    assert!(recently_changed(10 * second, 10 * second - second / 2, second), "a writer's clock a little ahead");
    assert!(!recently_changed(10 * second, 10 * second - 2 * second, second), "a clock far ahead");

    let tmp = policy_and_api();
    let ahead = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
    for f in ["policy.yaml", "apis/accounts.yaml"] {
        std::fs::File::options().write(true).open(tmp.path().join(f)).unwrap().set_modified(ahead).unwrap();
    }
    let mut cache = FileCache::default();
    load_dir_cached(tmp.path(), &mut cache).unwrap();
    assert_eq!(cache.young(), 0, "another node's clock an hour ahead: nothing to wait an hour for");
    assert_eq!(cache.young_until(), None);
}
