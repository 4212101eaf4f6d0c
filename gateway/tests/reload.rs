//! Hot reload: edits are served; bad input never replaces good. (How fast an
//! edit takes effect is measured by `make bench`, propagation section, not
//! here: a test waits for the condition only.)

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use support::*;

fn setup() -> (tempfile::TempDir, std::path::PathBuf, Proc, String, Gateway) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("config");
    std::fs::create_dir(&dir).unwrap();
    let (be, addr) = echo("bank");
    let b = format!("http://{addr}");
    std::fs::write(dir.join("tp.yaml"), policy("tier", "  limit: {requests: 1000, per: 1h}\n")).unwrap();
    std::fs::write(dir.join("a.yaml"), api("a", "/a", "v1", &b, "  throttling: {policy: tier}\n")).unwrap();
    std::fs::write(dir.join("free.yaml"), api("free", "/free", "v1", &b, "")).unwrap();
    let gw = gateway(&dir, &["--access-log", "false"]);
    (tmp, dir, be, b, gw)
}

#[test]
fn policy_edit_is_enforced() {
    let (_t, dir, _be, _b, gw) = setup();
    assert_eq!(gw.get("/a/v1/x").header("ratelimit-limit"), Some("1000"));
    write_atomic(&dir.join("tp.yaml"), &policy("tier", "  limit: {requests: 1, per: 1h}\n"));
    eventually(Duration::from_secs(2), || gw.get("/a/v1/x").status == 429);
}

#[test]
fn added_apis_are_served_and_removed_ones_withdrawn() {
    let (_t, dir, _be, b, gw) = setup();
    assert_eq!(gw.get("/b/v1/x").status, 404);
    write_atomic(&dir.join("b.yaml"), &api("b", "/b", "v1", &b, ""));
    eventually(Duration::from_secs(2), || gw.get("/b/v1/x").status == 200);
    std::fs::remove_file(dir.join("b.yaml")).unwrap();
    eventually(Duration::from_secs(2), || gw.get("/b/v1/x").status == 404);
}

#[test]
fn malformed_files_keep_the_last_good_snapshot_and_show_in_status() {
    let (_t, dir, _be, b, gw) = setup();
    let gen0 = gw.status()["generation"].as_u64().unwrap();
    // A broken YAML file: everything it held stays served.
    std::fs::write(dir.join("a.yaml"), "apiVersion: tollgate.dev/v1alpha1\nkind: ApiDeployment\nspec: [\n").unwrap();
    eventually(Duration::from_secs(3), || !gw.status()["errors"].as_array().unwrap().is_empty());
    assert_eq!(gw.get("/a/v1/x").status, 200, "last good version still served");
    let st = gw.status();
    let err = &st["errors"][0];
    assert!(err["file"].as_str().unwrap().ends_with("a.yaml"), "{st}");
    assert!(err["reason"].as_str().unwrap().contains("invalid YAML"), "{st}");
    assert_eq!(err["serving_last_good"], true);
    assert!(gw.metrics().contains("tollgate_config_errors 1"));

    // A valid document with an invalid field: the object keeps its last good version.
    std::fs::write(
        dir.join("a.yaml"),
        api("a", "/a", "v1", &b, "  lifecycle: Blocked\n  throttling: {policy: tier}\n  retries: 3\n"),
    )
    .unwrap();
    eventually(Duration::from_secs(3), || gw.status()["errors"][0]["field"].as_str() == Some("spec.retries"));
    assert_eq!(gw.get("/a/v1/x").status, 200, "the invalid new version did not replace the good one");

    // A reference to a missing policy: also kept at its last good version.
    std::fs::write(
        dir.join("a.yaml"),
        api("a", "/a", "v1", &b, "  lifecycle: Blocked\n  throttling: {policy: missing}\n"),
    )
    .unwrap();
    eventually(Duration::from_secs(3), || gw.status()["errors"].to_string().contains("PolicyNotFound"));
    assert_eq!(gw.status()["errors"][0]["serving_last_good"], true);
    assert_eq!(gw.get("/a/v1/x").status, 200);

    // Fixed: the error clears and the new version is served.
    std::fs::write(dir.join("a.yaml"), api("a", "/a", "v1", &b, "  lifecycle: Blocked\n")).unwrap();
    eventually(Duration::from_secs(3), || gw.get("/a/v1/x").status == 503);
    assert!(gw.status()["errors"].as_array().unwrap().is_empty());
    assert!(gw.status()["generation"].as_u64().unwrap() > gen0);

    // Temp files of an atomic writer are never read: once the folder was
    // looked at again after the write (two reloads of any outcome: the
    // second one started after the write), there is still no error.
    std::fs::write(dir.join(".b.yaml.tmp"), "kind: [").unwrap();
    let looks = all_reloads(&gw);
    eventually(Duration::from_secs(3), || all_reloads(&gw) >= looks + 2);
    assert!(gw.status()["errors"].as_array().unwrap().is_empty(), "{}", gw.status());
}

#[test]
fn twenty_reloads_under_load_drop_no_request() {
    let (_t, dir, _be, b, gw) = setup();
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (stop, failures, served, addr) = (stop.clone(), failures.clone(), served.clone(), gw.http);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match try_request(addr, "GET", "/free/v1/x", &[], b"") {
                        Ok(r) if r.status == 200 => served.fetch_add(1, Ordering::Relaxed),
                        _ => failures.fetch_add(1, Ordering::Relaxed),
                    };
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        })
        .collect();
    let gen0 = gw.status()["generation"].as_u64().unwrap();
    for i in 0..20 {
        // Traffic between every two reloads, however slowly the machine
        // answers (a count, not a time).
        let before = served.load(Ordering::Relaxed);
        eventually(Duration::from_secs(3), || served.load(Ordering::Relaxed) >= before + 10);
        write_atomic(&dir.join("c.yaml"), &api("c", &format!("/c{i}"), "v1", &b, ""));
        let want = gen0 + i + 1;
        eventually(Duration::from_secs(3), || gw.status()["generation"].as_u64().unwrap() >= want);
    }
    let before = served.load(Ordering::Relaxed);
    eventually(Duration::from_secs(3), || served.load(Ordering::Relaxed) >= before + 10);
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }
    assert!(served.load(Ordering::Relaxed) > 100);
    assert_eq!(failures.load(Ordering::Relaxed), 0, "no failed request during 20 reloads");
}

/// Two APIs on one path created in the same second (creationTimestamp has
/// one-second resolution): the one serving keeps it, whatever the names;
/// only when neither serves does namespace/name order decide.
#[test]
fn created_in_the_same_second_the_serving_api_keeps_its_path() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("config");
    std::fs::create_dir(&dir).unwrap();
    let (_one, one) = echo("one");
    let (_two, two) = echo("two");
    let with_time = |name: &str, backend: std::net::SocketAddr| {
        api(name, "/pay", "v1", &format!("http://{backend}"), "")
            .replace("namespace: bank}", "namespace: bank, creationTimestamp: '2026-01-01T00:00:00Z'}")
    };
    // "z-first" serves alone.
    write_atomic(&dir.join("z.yaml"), &with_time("z-first", one));
    let gw = gateway(&dir, &["--access-log", "false"]);
    assert_eq!(gw.get("/pay/v1/x").header("x-backend"), Some("one"));
    // "a-second" (same second, sorts first by name) appears: "z-first" keeps the path.
    write_atomic(&dir.join("a.yaml"), &with_time("a-second", two));
    eventually(Duration::from_secs(3), || gw.status()["errors"].to_string().contains("Conflict"));
    let st = gw.status();
    assert!(st["errors"].to_string().contains("bank/a-second"), "{st}");
    assert!(st["errors"].to_string().contains("bank/z-first"), "{st}");
    for _ in 0..5 {
        assert_eq!(gw.get("/pay/v1/x").header("x-backend"), Some("one"));
    }
    // Further reloads do not move it.
    write_atomic(&dir.join("free.yaml"), &api("free", "/free", "v1", &format!("http://{one}"), ""));
    eventually(Duration::from_secs(3), || gw.get("/free/v1/x").status == 200);
    assert_eq!(gw.get("/pay/v1/x").header("x-backend"), Some("one"));
    // The owner goes: the path is handed over.
    std::fs::remove_file(dir.join("z.yaml")).unwrap();
    eventually(Duration::from_secs(3), || gw.get("/pay/v1/x").header("x-backend") == Some("two"));
    eventually(Duration::from_secs(3), || !gw.status()["errors"].to_string().contains("Conflict"));
    drop(gw);

    // A fresh gateway that sees both at once: name order ("a-second") decides.
    write_atomic(&dir.join("z.yaml"), &with_time("z-first", one));
    let gw = gateway(&dir, &["--access-log", "false"]);
    assert_eq!(gw.get("/pay/v1/x").header("x-backend"), Some("two"));
}

/// A same-size copy renamed into place that keeps the old mtime (cp -p,
/// rsync -t, a ConfigMap projection) is still a change: the inode and ctime
/// differ.
#[test]
fn a_same_size_copy_that_keeps_the_mtime_is_reloaded() {
    let (_t, dir, _be, b, gw) = setup();
    assert_eq!(gw.get("/free/v1/x").status, 200);
    let old = dir.join("free.yaml");
    let mtime = std::fs::metadata(&old).unwrap().modified().unwrap();
    let text = api("free", "/fref", "v1", &b, "");
    assert_eq!(text.len(), std::fs::metadata(&old).unwrap().len() as usize, "same size");
    let tmp = dir.join(".free.yaml.new");
    std::fs::write(&tmp, &text).unwrap();
    std::fs::File::options().write(true).open(&tmp).unwrap().set_modified(mtime).unwrap();
    std::fs::rename(&tmp, &old).unwrap();
    assert_eq!(std::fs::metadata(&old).unwrap().modified().unwrap(), mtime);
    eventually(Duration::from_secs(3), || gw.get("/fref/v1/x").status == 200);
    assert_eq!(gw.get("/free/v1/x").status, 404);
}

/// A policy deleted while an API uses it: the API stays served with the last
/// good policy (and its counters); /status says why. Once no API uses it,
/// it goes.
#[test]
fn a_deleted_policy_still_in_use_keeps_its_last_good_version() {
    let (_t, dir, _be, b, gw) = setup();
    // A 30-day window: no window ends (and resets the count) during the test.
    away_from_long_window_end();
    write_atomic(&dir.join("tp.yaml"), &policy("tier", "  limit: {requests: 2, per: 30d}\n"));
    // The new limit of 2 is live and used up (the requests that see it count).
    eventually(Duration::from_secs(3), || gw.get("/a/v1/x").status == 429);
    std::fs::remove_file(dir.join("tp.yaml")).unwrap();
    eventually(Duration::from_secs(3), || gw.status()["errors"].to_string().contains("PolicyRemoved"));
    let st = gw.status();
    assert_eq!(st["errors"][0]["serving_last_good"], true, "{st}");
    assert!(st["errors"][0]["reason"].as_str().unwrap().contains("bank/a"), "{st}");
    assert_eq!(gw.get("/a/v1/x").status, 429, "still served, still counted");
    // The API stops using it: the policy goes, the error clears.
    write_atomic(&dir.join("a.yaml"), &api("a", "/a", "v1", &b, ""));
    eventually(Duration::from_secs(3), || gw.get("/a/v1/x").status == 200);
    eventually(Duration::from_secs(3), || gw.status()["errors"].as_array().unwrap().is_empty());
    assert_eq!(gw.status()["policies"], 0);
}

/// Reloads of any outcome (applied, unchanged, failed).
fn all_reloads(gw: &Gateway) -> u64 {
    gw.metrics()
        .lines()
        .filter(|l| l.starts_with("tollgate_config_reloads_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn unchanged_reloads(gw: &Gateway) -> u64 {
    gw.metrics()
        .lines()
        .find(|l| l.starts_with("tollgate_config_reloads_total{result=\"unchanged\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn reading_the_folder_is_no_change_and_wakes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("config");
    std::fs::create_dir(&dir).unwrap();
    let (_be, addr) = echo("bank");
    let b = format!("http://{addr}");
    std::fs::write(dir.join("a.yaml"), api("a", "/a", "v1", &b, "")).unwrap();
    // No periodic rescan: every look at the folder comes from inotify.
    let gw = gateway(&dir, &["--access-log", "false", "--rescan-interval", "3600"]);
    assert_eq!(gw.get("/a/v1/x").status, 200);
    std::thread::sleep(Duration::from_millis(1500)); // the file settles and gets its second look
    let before = unchanged_reloads(&gw);
    for _ in 0..5 {
        let _ = std::fs::read_dir(&dir).unwrap().count();
        let _ = std::fs::read(dir.join("a.yaml")).unwrap();
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(unchanged_reloads(&gw), before, "opening and reading files triggered reloads");
    // A write still does.
    write_atomic(&dir.join("b.yaml"), &api("b", "/b", "v1", &b, ""));
    eventually(Duration::from_secs(2), || gw.get("/b/v1/x").status == 200);
}
