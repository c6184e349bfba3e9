//! Distribution through a real OCI registry (Debian's docker-registry on
//! 127.0.0.1): push, pull of only what the host runs, reuse of unchanged
//! layers, basic auth, and clear failures.

mod common;
use common::*;
use std::process::Command;

fn limes(store: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_limes"));
    c.arg("--store").arg(store).env_remove("LIMES_REGISTRY_USERNAME").env_remove("LIMES_REGISTRY_PASSWORD").env_remove("DOCKER_CONFIG");
    c
}

fn push(bundle: &std::path::Path, reference: &str, creds: limes_oci::Credentials) -> Result<limes_oci::PushReport, limes_oci::OciError> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(limes_oci::push(bundle, reference, true, &creds))
}

#[test]
fn push_pull_install_run_round_trip() {
    let key = test_key();
    let d = tempdir();
    let reg = TestRegistry::start(None);
    let built = build_signed(&pack("mandelbrot"), &key, d.path());
    let reference = format!("{}/functions/mandelbrot:0.1.0", reg.addr);
    let first = push(&built.bundle, &reference, Default::default()).unwrap();
    assert_eq!(first.uploaded.len(), 2 + built.manifest.files.len(), "{first:?}");
    let again = push(&built.bundle, &reference, Default::default()).unwrap();
    assert!(again.uploaded.is_empty(), "pushing twice uploads nothing new: {again:?}");

    // A second store installs from the registry alone and fetches one tier.
    let store = d.path().join("device");
    let o = json(&ok(limes(&store).args(["--json", "pull", &reference, "--insecure", "--trust"]).arg(&key.public)));
    let downloaded: Vec<&str> = o["downloaded"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(downloaded.len(), 2, "{o}");
    assert!(downloaded.contains(&"component.wasm"));
    assert_eq!(downloaded.iter().filter(|p| p.ends_with(".cwasm")).count(), 1);
    let run = ok(limes(&store).args(["run", "mandelbrot", "--data", "output=checksum"]));
    assert_eq!(String::from_utf8_lossy(&run.stdout).trim(), MANDELBROT_DEFAULT_CHECKSUM);
    let f = limes::Store::open(&store).unwrap().get("mandelbrot").unwrap();
    assert_eq!(f.record.files.len(), 2);

    // Pulling again (or a new version sharing files) downloads nothing.
    let o = json(&ok(limes(&store).args(["--json", "pull", &reference, "--insecure", "--trust"]).arg(&key.public)));
    assert_eq!(o["downloaded"].as_array().unwrap().len(), 0, "{o}");
    assert_eq!(o["reused"].as_array().unwrap().len(), 2, "{o}");
    // By digest works too, and `install` takes a reference as well.
    let digest = o["oci_digest"].as_str().unwrap().to_string();
    let by_digest = format!("{}/functions/mandelbrot@{digest}", reg.addr);
    ok(limes(&d.path().join("other")).args(["install", &by_digest, "--insecure", "--trust"]).arg(&key.public));
    let o = ok(limes(&d.path().join("other")).args(["run", "mandelbrot", "--data", "output=checksum"]));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), MANDELBROT_DEFAULT_CHECKSUM);
}

#[test]
fn bad_references_keys_and_blobs_fail_clearly() {
    let key = test_key();
    let d = tempdir();
    let reg = TestRegistry::start(None);
    let built = build_signed(&pack("noop"), &key, d.path());
    let reference = format!("{}/fn/noop:1", reg.addr);
    push(&built.bundle, &reference, Default::default()).unwrap();
    let store = d.path().join("s");

    let e = fails(limes(&store).args(["pull", &format!("{}/fn/noop:nope", reg.addr), "--insecure", "--trust"]).arg(&key.public), 1);
    assert!(e.contains("manifest unknown"), "{e}");
    let e = fails(limes(&store).args(["pull", "127.0.0.1:9/fn/noop:1", "--insecure", "--trust"]).arg(&key.public), 1);
    assert!(e.contains("cannot reach the registry"), "{e}");
    let e = fails(limes(&store).args(["pull", "registry.example.com/fn/noop:1", "--insecure", "--trust"]).arg(&key.public), 1);
    assert!(e.contains("only allowed for registries on loopback"), "{e}");
    let other = test_key();
    let e = fails(limes(&store).args(["pull", &reference, "--insecure", "--trust"]).arg(&other.public), 3);
    assert!(e.contains("not trusted"), "{e}");

    // The registry serves a tampered tier: caught, nothing installed.
    let tier = built.manifest.files.iter().find(|f| f.path.starts_with("aot/x86-64-v3")).or_else(|| built.manifest.files.iter().find(|f| f.path.starts_with("aot/"))).unwrap();
    let blob = reg.blob_path(&tier.sha256);
    let mut data = std::fs::read(&blob).unwrap();
    data[100] ^= 0xff;
    std::fs::write(&blob, &data).unwrap();
    let e = fails(limes(&store).args(["pull", &reference, "--all-tiers", "--insecure", "--trust"]).arg(&key.public), 3);
    assert!(e.to_lowercase().contains("digest"), "{e}");
    assert_eq!(std::fs::read_dir(store.join("objects")).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(store.join("tmp")).unwrap().count(), 0);
    // Unsigned bundles are not pushed.
    let unsigned = limes_build::build(
        &limes_build::BuildOptions { path: pack("noop"), out_dir: Some(d.path().join("u")), cargo: limes_build::CargoOptions { quiet: true, ..Default::default() }, ..Default::default() },
        &limes_build::pipeline::NoProgress,
    )
    .unwrap();
    assert!(matches!(push(&unsigned.bundle, &reference, Default::default()), Err(limes_oci::OciError::Unsigned)));
}

#[test]
fn basic_auth_registry() {
    let key = test_key();
    let d = tempdir();
    let reg = TestRegistry::start(Some(("alice", "s3cret")));
    let built = build_signed(&pack("noop"), &key, d.path());
    let reference = format!("{}/fn/noop:0.1.0", reg.addr);
    let e = push(&built.bundle, &reference, Default::default()).unwrap_err();
    assert!(matches!(e, limes_oci::OciError::Auth { .. }), "{e}");
    let bad = limes_oci::Credentials { username: Some("alice".into()), password: Some("wrong".into()) };
    assert!(matches!(push(&built.bundle, &reference, bad), Err(limes_oci::OciError::Auth { .. })));
    let good = limes_oci::Credentials { username: Some("alice".into()), password: Some("s3cret".into()) };
    push(&built.bundle, &reference, good).unwrap();

    let store = d.path().join("s");
    let e = fails(limes(&store).args(["pull", &reference, "--insecure", "--trust"]).arg(&key.public), 1);
    assert!(e.contains("rejected the credentials"), "{e}");
    // Credentials from the environment ...
    ok(limes(&store)
        .args(["pull", &reference, "--insecure", "--trust"])
        .arg(&key.public)
        .env("LIMES_REGISTRY_USERNAME", "alice")
        .env("LIMES_REGISTRY_PASSWORD", "s3cret"));
    // ... and from Docker's config.json.
    let dc = d.path().join("docker");
    std::fs::create_dir(&dc).unwrap();
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
    let cfg = serde_json::json!({"auths": {reg.addr.clone(): {"auth": auth}}});
    std::fs::write(dc.join("config.json"), cfg.to_string()).unwrap();
    ok(limes(&d.path().join("s2")).args(["pull", &reference, "--insecure", "--trust"]).arg(&key.public).env("DOCKER_CONFIG", &dc));
    let o = ok(limes(&d.path().join("s2")).args(["run", "noop", "--data", "authed"]));
    assert_eq!(o.stdout, b"authed");
}
