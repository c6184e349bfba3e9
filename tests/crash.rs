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
