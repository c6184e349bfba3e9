//! Distribution through a real OCI registry (Debian's docker-registry on
//! 127.0.0.1): push, pull of only what the host runs, reuse of unchanged
//! layers, basic auth, and clear failures.

mod common;
use common::*;

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
    let o = json(&ok(limes_cmd(&store).args(["--json", "pull", &reference, "--insecure", "--trust"]).arg(&key.public)));
    let downloaded: Vec<&str> = o["downloaded"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(downloaded.len(), 2, "{o}");
    assert!(downloaded.contains(&"component.wasm"));
    assert_eq!(downloaded.iter().filter(|p| p.ends_with(".cwasm")).count(), 1);
    let run = ok(limes_cmd(&store).args(["run", "mandelbrot", "--data", "output=checksum"]));
    assert_eq!(String::from_utf8_lossy(&run.stdout).trim(), MANDELBROT_DEFAULT_CHECKSUM);
    let f = limes::Store::open(&store).unwrap().get("mandelbrot").unwrap();
    assert_eq!(f.record.files.len(), 2);

    // Pulling again (or a new version sharing files) downloads nothing.
    let o = json(&ok(limes_cmd(&store).args(["--json", "pull", &reference, "--insecure", "--trust"]).arg(&key.public)));
    assert_eq!(o["downloaded"].as_array().unwrap().len(), 0, "{o}");
    assert_eq!(o["reused"].as_array().unwrap().len(), 2, "{o}");
    // By digest works too, and `install` takes a reference as well.
    let digest = o["oci_digest"].as_str().unwrap().to_string();
    let by_digest = format!("{}/functions/mandelbrot@{digest}", reg.addr);
    ok(limes_cmd(&d.path().join("other")).args(["install", &by_digest, "--insecure", "--trust"]).arg(&key.public));
    let o = ok(limes_cmd(&d.path().join("other")).args(["run", "mandelbrot", "--data", "output=checksum"]));
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

    let e = fails(limes_cmd(&store).args(["pull", &format!("{}/fn/noop:nope", reg.addr), "--insecure", "--trust"]).arg(&key.public), 1);
    assert!(e.contains("manifest unknown"), "{e}");
    let e = fails(limes_cmd(&store).args(["pull", "127.0.0.1:9/fn/noop:1", "--insecure", "--trust"]).arg(&key.public), 1);
    assert!(e.contains("cannot reach the registry"), "{e}");
    // A local plain-HTTP registry reached over HTTPS: the fix is named.
    let e = fails(limes_cmd(&store).args(["pull", &reference, "--trust"]).arg(&key.public), 1);
    assert!(e.contains("pass --insecure"), "{e}");
    let e = fails(limes_cmd(&store).args(["pull", "registry.example.com/fn/noop:1", "--insecure", "--trust"]).arg(&key.public), 1);
    assert!(e.contains("only allowed for registries on loopback"), "{e}");
    let other = test_key();
    let e = fails(limes_cmd(&store).args(["pull", &reference, "--insecure", "--trust"]).arg(&other.public), 3);
    assert!(e.contains("not trusted"), "{e}");

    // The registry serves a tampered tier: caught, nothing installed.
    let tier = built
        .manifest
        .files
        .iter()
        .find(|f| f.path.starts_with("aot/x86-64-v3"))
        .or_else(|| built.manifest.files.iter().find(|f| f.path.starts_with("aot/")))
        .unwrap();
    let blob = reg.blob_path(&tier.sha256);
    let mut data = std::fs::read(&blob).unwrap();
    data[100] ^= 0xff;
    std::fs::write(&blob, &data).unwrap();
    let e = fails(limes_cmd(&store).args(["pull", &reference, "--all-tiers", "--insecure", "--trust"]).arg(&key.public), 3);
    assert!(e.to_lowercase().contains("digest"), "{e}");
    assert_eq!(std::fs::read_dir(store.join("objects")).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(store.join("tmp")).unwrap().count(), 0);
    // Unsigned bundles are not pushed.
    let unsigned = limes_build::build(
        &limes_build::BuildOptions {
            path: pack("noop"),
            out_dir: Some(d.path().join("u")),
            cargo: limes_build::CargoOptions { quiet: true, ..Default::default() },
            ..Default::default()
        },
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
    let e = fails(limes_cmd(&store).args(["pull", &reference, "--insecure", "--trust"]).arg(&key.public), 1);
    assert!(e.contains("rejected the credentials"), "{e}");
    // Credentials from the environment ...
    ok(limes_cmd(&store)
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
    ok(limes_cmd(&d.path().join("s2")).args(["pull", &reference, "--insecure", "--trust"]).arg(&key.public).env("DOCKER_CONFIG", &dc));
    let o = ok(limes_cmd(&d.path().join("s2")).args(["run", "noop", "--data", "authed"]));
    assert_eq!(o.stdout, b"authed");
}

/// What the fake registry does with one path.
#[derive(Clone)]
enum Answer {
    Bytes(&'static str, Vec<u8>),
    /// Stream this many bytes (zeros) as a 200 with no length announced.
    Endless(u64),
    /// Read the request, then say nothing.
    Stall,
    /// Announce these bytes, then send one every 200 ms (never silent for
    /// long: a read deadline alone does not end it).
    Drip(&'static str, Vec<u8>),
    Redirect(String),
}

/// A registry that lies on purpose, on 127.0.0.1: a fixed map from path to
/// answer, counting requests per path. Stops when dropped.
struct FakeRegistry {
    addr: String,
    hits: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(&self.addr);
    }
}

impl FakeRegistry {
    fn start(routes: std::collections::HashMap<String, Answer>) -> FakeRegistry {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let hits = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (h, st) = (hits.clone(), stop.clone());
        let routes = std::sync::Arc::new(routes);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                let Ok(mut s) = conn else { continue };
                let (h, routes, st) = (h.clone(), routes.clone(), st.clone());
                std::thread::spawn(move || {
                    let mut head = Vec::new();
                    let mut b = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") && head.len() < 16384 {
                        if s.read(&mut b).unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(b[0]);
                    }
                    let line = String::from_utf8_lossy(&head).lines().next().unwrap_or("").to_string();
                    let path = line.split(' ').nth(1).unwrap_or("").to_string();
                    *h.lock().unwrap().entry(path.clone()).or_default() += 1;
                    match routes.get(&path).cloned() {
                        Some(Answer::Bytes(ct, body)) => {
                            let _ = write!(s, "HTTP/1.1 200 OK\r\ncontent-type: {ct}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len());
                            let _ = s.write_all(&body);
                        }
                        Some(Answer::Endless(n)) => {
                            let _ = write!(s, "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\nconnection: close\r\n\r\n");
                            let chunk = vec![0u8; 64 << 10];
                            let mut sent = 0u64;
                            while sent < n && s.write_all(&chunk).is_ok() {
                                sent += chunk.len() as u64;
                            }
                        }
                        Some(Answer::Drip(ct, body)) => {
                            let _ = write!(s, "HTTP/1.1 200 OK\r\ncontent-type: {ct}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len());
                            for b in body {
                                if st.load(std::sync::atomic::Ordering::SeqCst) || s.write_all(&[b]).is_err() {
                                    break;
                                }
                                std::thread::sleep(std::time::Duration::from_millis(200));
                            }
                        }
                        Some(Answer::Stall) => {
                            while !st.load(std::sync::atomic::Ordering::SeqCst) {
                                std::thread::sleep(std::time::Duration::from_millis(50));
                            }
                        }
                        Some(Answer::Redirect(to)) => {
                            let _ = write!(s, "HTTP/1.1 307 Temporary Redirect\r\nlocation: {to}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                        }
                        None => {
                            let _ = write!(s, "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                        }
                    }
                });
            }
        });
        FakeRegistry { addr, hits, stop }
    }

    fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

/// The OCI manifest a push of `files` would write, and the blob routes.
fn artifact(files: &[(String, Vec<u8>)]) -> (Vec<u8>, Vec<(String, Vec<u8>)>) {
    use sha2::Digest;
    let digest = |b: &[u8]| format!("sha256:{}", hex::encode(sha2::Sha256::digest(b)));
    let layers: Vec<serde_json::Value> = files
        .iter()
        .map(|(p, b)| {
            serde_json::json!({"mediaType": "application/octet-stream", "digest": digest(b), "size": b.len(),
            "annotations": {"org.opencontainers.image.title": p}})
        })
        .collect();
    let m = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": limes_oci::ARTIFACT_TYPE,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": digest(b"{}"), "size": 2},
        "layers": layers});
    (serde_json::to_vec(&m).unwrap(), files.iter().map(|(_, b)| (format!("/v2/fns/noop/blobs/{}", digest(b)), b.clone())).collect())
}

#[test]
fn a_lying_registry_cannot_exhaust_or_hang_a_pull() {
    use limes_bundle::archive::{read_bundle, BundleLimits, InMemory, SignaturePolicy};
    let key = test_key();
    let d = tempdir();
    let built = build_signed(&pack("noop"), &key, d.path());
    let mut mem = InMemory::default();
    let v = read_bundle(&built.bundle, &BundleLimits::default(), SignaturePolicy::Unverified, &mut mem).unwrap();
    let mut files =
        vec![("manifest.json".to_string(), v.manifest_bytes.clone()), ("manifest.json.minisig".to_string(), v.signature.clone().unwrap().into_bytes())];
    files.extend(mem.0);
    let (oci, blobs) = artifact(&files);
    let sig_path = blobs[1].0.clone();
    let comp = blobs[files.iter().position(|(n, _)| n == "component.wasm").unwrap()].0.clone();
    let ct = "application/vnd.oci.image.manifest.v1+json";
    let mut routes: std::collections::HashMap<String, Answer> =
        blobs.iter().map(|(p, b)| (p.clone(), Answer::Bytes("application/octet-stream", b.clone()))).collect();
    routes.insert("/v2/fns/noop/manifests/good".into(), Answer::Bytes(ct, oci.clone()));
    routes.insert("/v2/fns/noop/manifests/huge".into(), Answer::Endless(256 << 20));
    routes.insert("/v2/fns/noop/manifests/stall".into(), Answer::Stall);
    routes.insert("/v2/fns/noop/manifests/drip".into(), Answer::Drip(ct, oci.clone()));
    let reg = FakeRegistry::start(routes.clone());
    let pull = |tag: &str, store: &str| {
        let mut c = limes_cmd(&d.path().join(store));
        c.args(["pull", &format!("{}/fns/noop:{tag}", reg.addr), "--insecure", "--registry-timeout-ms", "1500", "--trust"]).arg(&key.public);
        c
    };
    // The honest answers install.
    ok(&mut pull("good", "s0"));

    // A 256 MiB OCI manifest is cut off at 1 MiB.
    let e = fails(&mut pull("huge", "s1"), 3);
    assert!(e.contains("OCI manifest is over its 1048576-byte limit"), "{e}");
    // A stalled registry fails the pull at the deadline instead of hanging.
    let t = std::time::Instant::now();
    let e = fails(&mut pull("stall", "s2"), 1);
    assert!(e.contains("no answer within the deadline"), "{e}");
    assert!(t.elapsed() < std::time::Duration::from_secs(10), "the stalled pull took {:?}", t.elapsed());
    // A registry that drips its answer (5 bytes/s, never silent for the
    // 1.5 s read deadline) is cut off by the minimum transfer rate after
    // its grace period ...
    let t = std::time::Instant::now();
    let e = fails(&mut pull("drip", "s2"), 1);
    assert!(e.contains("sent slower than 1024 bytes/s"), "{e}");
    assert!(t.elapsed() < std::time::Duration::from_secs(15), "the dripped pull took {:?}", t.elapsed());
    // ... and by the pull's own deadline, whatever rate is accepted.
    let t = std::time::Instant::now();
    let e = fails(pull("drip", "s2").args(["--min-transfer-rate", "0", "--pull-timeout-ms", "3000"]), 1);
    assert!(e.contains("did not finish within 3000 ms"), "{e}");
    assert!(t.elapsed() < std::time::Duration::from_secs(10), "the dripped pull took {:?}", t.elapsed());
    assert!(std::fs::read_dir(d.path().join("s2/functions")).unwrap().next().is_none(), "a pull that failed installed something");
    drop(reg);

    // The signature layer (a few hundred bytes) answered with 512 MiB: cut
    // at its descriptor size, downloaded once, never retried.
    let mut r = routes.clone();
    r.insert(sig_path.clone(), Answer::Endless(512 << 20));
    let reg = FakeRegistry::start(r);
    let mut c = limes_cmd(&d.path().join("s3"));
    c.args(["pull", &format!("{}/fns/noop:good", reg.addr), "--insecure", "--trust"]).arg(&key.public);
    let e = fails(&mut c, 3);
    assert!(e.contains("manifest.json.minisig") && e.contains("limit"), "{e}");
    assert_eq!(reg.hits(&sig_path), 1, "a size violation was retried");
    drop(reg);

    // A redirect to plain HTTP off loopback is refused (before any
    // connection); one to loopback is followed.
    let mut r = routes.clone();
    r.insert(comp.clone(), Answer::Redirect("http://registry.example.invalid/blob".into()));
    let reg = FakeRegistry::start(r);
    let mut c = limes_cmd(&d.path().join("s4"));
    c.args(["pull", &format!("{}/fns/noop:good", reg.addr), "--insecure", "--trust"]).arg(&key.public);
    let e = fails(&mut c, 1);
    assert!(e.contains("refusing a redirect to plain HTTP off loopback"), "{e}");
    drop(reg);
    let mut r = routes.clone();
    r.insert("/elsewhere/component".into(), routes[&comp].clone());
    r.insert(comp.clone(), Answer::Redirect("/elsewhere/component".into()));
    let reg = FakeRegistry::start(r);
    let mut c = limes_cmd(&d.path().join("s5"));
    c.args(["pull", &format!("{}/fns/noop:good", reg.addr), "--insecure", "--trust"]).arg(&key.public);
    ok(&mut c);
    assert_eq!(reg.hits("/elsewhere/component"), 1);
    let o = ok(limes_cmd(&d.path().join("s5")).args(["run", "noop", "--data", "redirected"]));
    assert_eq!(o.stdout, b"redirected");
}
