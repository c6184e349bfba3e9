//! Crash safety of the store: `limes install` killed (SIGKILL) at random
//! points leaves every installed function whole, and concurrent installs of
//! the same bundle are safe.

mod common;
use common::*;
use std::process::Stdio;
use std::time::Duration;

fn assert_consistent(store_dir: &std::path::Path) {
    let store = limes::Store::open(store_dir).unwrap();
    for r in store.list().unwrap() {
        let f = store.get(&r.name).unwrap_or_else(|e| panic!("record {} points at a broken object: {e}", r.name));
        assert!(f.dir.join("manifest.json").is_file());
    }
}

#[test]
fn killed_installs_leave_the_store_consistent() {
    let key = test_key();
    let d = tempdir();
    let built = build_signed(&pack("image"), &key, d.path());
    let store = d.path().join("store");
    // How long one install takes here, to spread the kills over it.
    let t = std::time::Instant::now();
    ok(limes_cmd(&d.path().join("timing")).arg("install").arg(&built.bundle).arg("--trust").arg(&key.public));
    let full = t.elapsed().as_micros().max(1000) as u64;
    let mut seed = 12345u64;
    for _ in 0..16 {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        let delay = (seed >> 33) % full;
        let mut child =
            limes_cmd(&store).arg("install").arg(&built.bundle).arg("--trust").arg(&key.public).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(Duration::from_micros(delay));
        let _ = child.kill();
        let _ = child.wait();
        assert_consistent(&store);
    }
    install(&store, &built.bundle, &key);
    assert_consistent(&store);
    let o = ok(limes_cmd(&store).args(["run", "image", "--input"]).arg(pack("image").join("testdata/input-1024x768.jpg")));
    assert_eq!(&o.stdout[..2], b"\xff\xd8");
}

#[test]
fn concurrent_installs_of_one_bundle_are_safe() {
    let key = test_key();
    let d = tempdir();
    let built = build_signed(&pack("noop"), &key, d.path());
    let store = d.path().join("store");
    let children: Vec<_> =
        (0..6).map(|_| limes_cmd(&store).arg("install").arg(&built.bundle).arg("--trust").arg(&key.public).stdout(Stdio::null()).spawn().unwrap()).collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    assert_consistent(&store);
    assert_eq!(std::fs::read_dir(store.join("objects")).unwrap().count(), 1);
    assert_eq!(std::fs::read_dir(store.join("tmp")).unwrap().count(), 0);
    let o = ok(limes_cmd(&store).args(["run", "noop", "--data", "ok"]));
    assert_eq!(o.stdout, b"ok");
}

/// What a device must always have after a crash: `limes check` verifies
/// every installed function (leftovers are allowed: nothing loads them), and
/// `noop` answers with one of `versions`, or is absent only if `absent_ok`.
fn assert_working(store: &std::path::Path, versions: &[&str], absent_ok: bool, what: &str) {
    let o = limes_cmd(store).args(["--json", "check"]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{what}: limes check: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    let report = json(&o);
    let installed: Vec<&serde_json::Value> = report["functions"].as_array().unwrap().iter().collect();
    if installed.is_empty() {
        assert!(absent_ok, "{what}: no version of noop is installed any more: {report}");
        return;
    }
    let version = installed[0]["version"].as_str().unwrap();
    assert!(versions.contains(&version), "{what}: version {version}: {report}");
    let o = limes_cmd(store).args(["run", "noop", "--data", "still here"]).output().unwrap();
    assert!(o.status.success() && o.stdout == b"still here", "{what}: {}", String::from_utf8_lossy(&o.stderr));
}

/// The crash-safe store (#26): an update killed at every step it takes
/// (each fault-injection point), and at a few hundred random moments,
/// leaves a store in which the function answers with its old or its new
/// version, never neither, and never loads a partial object; the next
/// update recovers what the killed one left behind.
#[test]
fn updates_killed_at_every_step_and_at_random_keep_a_working_version() {
    let key = test_key();
    let d = tempdir();
    let v1 = build_signed(&pack("noop"), &key, d.path()).bundle;
    let v2 = rewrite(&v1, &key, &d.path().join("noop-0.2.0.limes"), |m| m.function.version = "0.2.0".into());
    let install_cmd = |store: &std::path::Path, bundle: &std::path::Path| {
        let mut c = limes_cmd(store);
        c.arg("install").arg(bundle).arg("--trust").arg(&key.public).arg("--allow-downgrade").stdout(Stdio::null()).stderr(Stdio::null());
        c
    };
    let killed = |status: std::process::ExitStatus| {
        use std::os::unix::process::ExitStatusExt;
        status.signal() == Some(9)
    };

    // Every step: an update from 0.1.0 to 0.2.0 (plain, and health-checked
    // beside the current version then switched to), a rollback, and a
    // removal, each killed exactly there.
    let mut reached = Vec::new();
    for point in limes::store::CRASH_POINTS {
        let store = d.path().join(format!("store-{point}"));
        ok(&mut install_cmd(&store, &v1));
        let status = install_cmd(&store, &v2).env("LIMES_CRASH_AT", point).status().unwrap();
        if killed(status) {
            reached.push(format!("install:{point}"));
        }
        assert_working(&store, &["0.1.0", "0.2.0"], false, &format!("install killed at {point}"));
        ok(&mut install_cmd(&store, &v1));
        let status = install_cmd(&store, &v2).arg("--health-check").env("LIMES_CRASH_AT", point).status().unwrap();
        if killed(status) {
            reached.push(format!("health-checked install:{point}"));
        }
        assert_working(&store, &["0.1.0", "0.2.0"], false, &format!("health-checked install killed at {point}"));
        ok(&mut install_cmd(&store, &v2));
        let status = limes_cmd(&store).args(["rollback", "noop"]).env("LIMES_CRASH_AT", point).stdout(Stdio::null()).stderr(Stdio::null()).status().unwrap();
        if killed(status) {
            reached.push(format!("rollback:{point}"));
        }
        assert_working(&store, &["0.1.0", "0.2.0"], false, &format!("rollback killed at {point}"));
        let status = limes_cmd(&store).args(["remove", "noop"]).env("LIMES_CRASH_AT", point).stdout(Stdio::null()).stderr(Stdio::null()).status().unwrap();
        if killed(status) {
            reached.push(format!("remove:{point}"));
        }
        assert_working(&store, &["0.1.0", "0.2.0"], true, &format!("removal killed at {point}"));
        // The next update recovers: no leftover of the killed process, and
        // only the live object remains.
        ok(&mut install_cmd(&store, &v2));
        let report = json(&ok(limes_cmd(&store).args(["--json", "check"])));
        assert_eq!(report["leftovers"], serde_json::json!([]), "{point}: {report}");
        assert_eq!(report["unreferenced_objects"], serde_json::json!([]), "{point}: {report}");
        assert_working(&store, &["0.2.0"], false, &format!("after recovery from {point}"));
    }
    // Each point is reached by the operation it belongs to (a renamed or
    // dead point would make this test pass without testing anything).
    for p in limes::store::CRASH_POINTS {
        assert!(reached.iter().any(|r| r.ends_with(&format!(":{p}"))), "crash point {p} was never reached: {reached:?}");
    }

    // Random SIGKILLs during updates that alternate between the versions.
    let store = d.path().join("store-random");
    ok(&mut install_cmd(&store, &v1));
    let t = std::time::Instant::now();
    ok(&mut install_cmd(&store, &v2));
    let full = t.elapsed().as_micros().max(2000) as u64;
    let mut seed = 0x9e3779b97f4a7c15u64;
    let iterations = 300;
    let mut interrupted = 0;
    for i in 0..iterations {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let delay = (seed >> 33) % (full + full / 4);
        let bundle = if i % 2 == 0 { &v1 } else { &v2 };
        let mut child = install_cmd(&store, bundle).spawn().unwrap();
        std::thread::sleep(Duration::from_micros(delay));
        let _ = child.kill();
        if killed(child.wait().unwrap()) {
            interrupted += 1;
        }
        assert_working(&store, &["0.1.0", "0.2.0"], false, &format!("random kill {i} after {delay} us"));
    }
    println!("random kills: {interrupted} of {iterations} updates interrupted, every one left a working version");
    assert!(interrupted >= iterations / 4, "only {interrupted} of {iterations} updates were interrupted");
    let report = json(&ok(limes_cmd(&store).args(["--json", "check", "--repair"])));
    assert_eq!(report["ok"], true, "{report}");
    let report = json(&ok(limes_cmd(&store).args(["--json", "check"])));
    assert_eq!((report["leftovers"].as_array().unwrap().len(), report["unreferenced_objects"].as_array().unwrap().len()), (0, 0), "{report}");
}

/// `limes check` finds a tampered store and exits 3, naming the function.
#[test]
fn check_reports_tampering_and_leftovers() {
    let key = test_key();
    let d = tempdir();
    let built = build_signed(&pack("noop"), &key, d.path());
    let store = d.path().join("store");
    install(&store, &built.bundle, &key);
    let o = ok(limes_cmd(&store).arg("check"));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("ok      noop 0.1.0 (signer "), "{}", String::from_utf8_lossy(&o.stdout));
    // A leftover of a dead process is reported, and removed by --repair.
    std::fs::create_dir(store.join("tmp").join("stage-999999999-x")).unwrap();
    let report = json(&ok(limes_cmd(&store).args(["--json", "check"])));
    assert_eq!(report["leftovers"].as_array().unwrap().len(), 1, "{report}");
    ok(limes_cmd(&store).args(["check", "--repair"]));
    assert!(!store.join("tmp").join("stage-999999999-x").exists());
    // A flipped byte in an artifact: exit 3, the function named.
    tamper(&object_dir(&store, "noop").join("aot/x86-64.cwasm"), |b| {
        let mid = b.len() / 2;
        b[mid] ^= 1;
    });
    let o = limes_cmd(&store).args(["--json", "check"]).output().unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", String::from_utf8_lossy(&o.stdout));
    let report = json(&o);
    assert_eq!(report["functions"][0]["name"], "noop");
    assert_eq!(report["functions"][0]["kind"], "verification", "{report}");
}
