//! Unattended updates (#26) against a real registry: `limes sync` follows a
//! tag, switches `limes serve` to a new version only after its declared
//! health check passed, rejects one that fails it, rolls back one that fails
//! requests after the switch, resumes an interrupted download, and a fleet
//! of devices converges through a registry outage.

mod common;
use common::*;
use limes_bundle::manifest::HealthCheck;
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A child process killed on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The faulty fixture (it echoes, and traps on `panic`) as `version`, with
/// a health check that sends `ping` and expects `expect`.
fn version_of(built: &Path, key: &TestKey, dir: &Path, version: &str, expect: &str) -> PathBuf {
    rewrite(built, key, &dir.join(format!("faulty-{version}.limes")), |m| {
        m.function.version = version.into();
        m.health = Some(HealthCheck { input: "ping".into(), expect: Some(expect.into()), ..Default::default() });
    })
}

fn device_config(dir: &Path, key: &TestKey, reference: &str, extra: &str) -> PathBuf {
    let p = dir.join("device.toml");
    std::fs::write(
        &p,
        format!(
            "trust = [{:?}]\npoll_interval_s = 0.5\nmax_backoff_s = 2\ninsecure = true\n{extra}\n[[function]]\nreference = {reference:?}\n\
             [rollback]\nwindow_s = 60\nmin_requests = 10\nmax_failure_ratio = 0.2\n",
            key.public.display()
        ),
    )
    .unwrap();
    p
}

/// `limes sync --json` running on `store`, its events collected.
fn start_agent(store: &Path, config: &Path) -> (Running, Arc<Mutex<Vec<serde_json::Value>>>) {
    let mut child = limes_cmd(store).args(["--json", "sync", "--config"]).arg(config).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let events = Arc::new(Mutex::new(Vec::new()));
    let out = child.stdout.take().unwrap();
    let sink = events.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&line) {
                sink.lock().unwrap().push(v);
            }
        }
    });
    (Running(child), events)
}

/// Wait until an event matches (returning it), at most `limit`.
fn wait_event(events: &Mutex<Vec<serde_json::Value>>, limit: Duration, what: &str, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(e) = events.lock().unwrap().iter().find(|e| pred(e)) {
            return e.clone();
        }
        assert!(Instant::now() < deadline, "no {what} within {limit:?}; events: {:?}", events.lock().unwrap());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn status(store: &Path) -> serde_json::Value {
    json(&ok(limes_cmd(store).args(["--json", "status", "faulty"])))["functions"][0].clone()
}

/// The object `limes serve` serves for `faulty`, from its state file.
fn served_object(store: &Path) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(store.join("serve-state.json")).ok()?).ok()?;
    v["functions"]["faulty"]["object"].as_str().map(String::from)
}

fn wait_served(store: &Path, limit: Duration) {
    let deadline = Instant::now() + limit;
    let want = object_dir(store, "faulty").file_name().unwrap().to_string_lossy().to_string();
    while served_object(store).as_deref() != Some(want.as_str()) {
        assert!(Instant::now() < deadline, "serve did not pick up object {want} within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_device_switches_only_to_healthy_versions_and_rolls_back_by_itself() {
    let key = test_key();
    let d = tempdir();
    let built = build_signed(&fixture("faulty"), &key, d.path()).bundle;
    let v1 = version_of(&built, &key, d.path(), "0.1.0", "ping");
    let v2 = version_of(&built, &key, d.path(), "0.2.0", "ping");
    let v3 = version_of(&built, &key, d.path(), "0.3.0", "pong");
    let v4 = version_of(&built, &key, d.path(), "0.4.0", "ping");
    let reg = TestRegistry::start(None);
    let reference = format!("{}/fns/faulty:stable", reg.addr);
    reg.push(&v1, &reference);
    let store = d.path().join("store");
    let config = device_config(d.path(), &key, &reference, "");

    // First contact: one poll installs what the tag names.
    let o = ok(limes_cmd(&store).args(["--json", "sync", "--once", "--config"]).arg(&config));
    let first: serde_json::Value = serde_json::from_slice(o.stdout.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!((first["event"].as_str(), first["to"].as_str()), (Some("updated"), Some("0.1.0")), "{first}");
    let server = Running(
        limes_cmd(&store).args(["serve", "--listen", "127.0.0.1:0", "--workers", "2"]).env("RUST_LOG", "error").stdout(Stdio::piped()).spawn().unwrap(),
    );
    let mut server = server;
    let addr = listening_addr(&mut server.0);
    let (_agent, events) = start_agent(&store, &config);

    // v2 is healthy: switched to, and serve follows. It shares its code
    // with v1, so only the manifest and signature come over the network.
    reg.push(&v2, &reference);
    let e = wait_event(&events, Duration::from_secs(30), "update to 0.2.0", |e| e["event"] == "updated" && e["to"] == "0.2.0");
    assert_eq!(e["downloaded"], serde_json::json!([]), "{e}");
    assert!(e["bytes"].as_u64().unwrap() < 16 << 10, "an update that changed only the manifest received {} bytes", e["bytes"]);
    wait_served(&store, Duration::from_secs(10));
    assert_eq!(http(addr, "POST", "/functions/faulty", b"ping"), (200, b"ping".to_vec()));

    // v3 fails its health check (answers `ping`, declared `pong`): it never
    // serves, is marked bad, and the tag naming it is not tried again.
    reg.push(&v3, &reference);
    let e = wait_event(&events, Duration::from_secs(30), "rejection of 0.3.0", |e| e["event"] == "rejected" && e["version"] == "0.3.0");
    assert!(e["reason"].as_str().unwrap().contains("expected \"pong\""), "{e}");
    let s = status(&store);
    assert_eq!(s["current"]["version"], "0.2.0", "{s}");
    assert_eq!(s["candidate"], serde_json::Value::Null, "{s}");
    assert_eq!(s["sync"]["bad"][0]["version"], "0.3.0", "{s}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(events.lock().unwrap().iter().filter(|e| e["event"] == "rejected").count(), 1, "a version marked bad was tried again");

    // The same check by hand: `install --health-check` keeps the current version.
    let msg = fails(limes_cmd(&store).arg("install").arg(&v3).arg("--trust").arg(&key.public).arg("--health-check"), 1);
    assert!(msg.contains("failed its health check"), "{msg}");
    assert_eq!(status(&store)["current"]["version"], "0.2.0");

    // v4 passes its health check, then fails its traffic: rolled back to
    // v2 by the agent alone, and marked bad.
    reg.push(&v4, &reference);
    wait_event(&events, Duration::from_secs(30), "update to 0.4.0", |e| e["event"] == "updated" && e["to"] == "0.4.0");
    wait_served(&store, Duration::from_secs(10));
    for _ in 0..12 {
        assert_eq!(http(addr, "POST", "/functions/faulty", b"panic").0, 500);
    }
    let e = wait_event(&events, Duration::from_secs(30), "rollback", |e| e["event"] == "rolled-back");
    assert_eq!((e["from"].as_str(), e["to"].as_str()), (Some("0.4.0"), Some("0.2.0")), "{e}");
    wait_served(&store, Duration::from_secs(10));
    assert_eq!(http(addr, "POST", "/functions/faulty", b"ping"), (200, b"ping".to_vec()));
    let s = status(&store);
    assert_eq!(s["current"]["version"], "0.2.0", "{s}");
    assert_eq!(s["previous"][0]["version"], "0.1.0", "{s}");
    assert_eq!(s["sync"]["last_rollback"]["from"], "0.4.0", "{s}");
    assert!(s["sync"]["bad"].as_array().unwrap().iter().any(|b| b["version"] == "0.4.0"), "{s}");
    // The tag still names v4: the device stays on v2.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(status(&store)["current"]["version"], "0.2.0");
    let o = ok(limes_cmd(&store).arg("status"));
    assert!(String::from_utf8_lossy(&o.stdout).contains("last rollback: 0.4.0 -> 0.2.0"), "{}", String::from_utf8_lossy(&o.stdout));
    // serve's metrics say the same.
    let (_, metrics) = http(addr, "GET", "/metrics", b"");
    let metrics = String::from_utf8_lossy(&metrics);
    for line in ["limes_served_version{function=\"faulty\",version=\"0.2.0\"} 1", "limes_sync_rollbacks_total{function=\"faulty\",from=\"0.4.0\"} 1"] {
        assert!(metrics.lines().any(|l| l == line), "no {line:?} in\n{metrics}");
    }
    assert!(metrics.contains("limes_sync_last_poll_timestamp_seconds{function=\"faulty\",result=\"ok\"}"), "{metrics}");
    // Every version left is whole and verified.
    ok(limes_cmd(&store).arg("check"));
}

/// A TCP proxy in front of the registry that cuts the first download of
/// one blob after `cut` bytes of its answer, and records every request head.
struct CuttingProxy {
    addr: std::net::SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
}

fn cutting_proxy(upstream: String, blob: String, cut: usize) -> CuttingProxy {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let cut_done = Arc::new(Mutex::new(false));
    let h = heads.clone();
    std::thread::spawn(move || {
        for client in listener.incoming().map_while(Result::ok) {
            let server = std::net::TcpStream::connect(&upstream).unwrap();
            let (h, blob, cut_done) = (h.clone(), blob.clone(), cut_done.clone());
            // Armed when the request for the blob passes (reqwest sends one
            // request at a time per connection): the answer is then cut.
            let armed = Arc::new(Mutex::new(false));
            let (mut c_read, mut s_write) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let armed_up = armed.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 16 << 10];
                while let Ok(n @ 1..) = c_read.read(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]).to_string();
                    if text.starts_with("GET ") {
                        h.lock().unwrap().push(text.lines().take_while(|l| !l.is_empty()).collect::<Vec<_>>().join("\n"));
                        let mut done = cut_done.lock().unwrap();
                        if text.contains(&blob) && !*done {
                            *done = true;
                            *armed_up.lock().unwrap() = true;
                        }
                    }
                    if s_write.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
            let (mut s_read, mut c_write) = (server, client);
            std::thread::spawn(move || {
                let mut buf = [0u8; 16 << 10];
                let mut sent_armed = 0usize;
                while let Ok(n @ 1..) = s_read.read(&mut buf) {
                    if *armed.lock().unwrap() {
                        let room = cut.saturating_sub(sent_armed).min(n);
                        let _ = c_write.write_all(&buf[..room]);
                        sent_armed += room;
                        if sent_armed >= cut {
                            let _ = c_write.shutdown(std::net::Shutdown::Both);
                            let _ = s_read.shutdown(std::net::Shutdown::Both);
                            return;
                        }
                    } else if c_write.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    CuttingProxy { addr, heads }
}

/// A download cut in the middle continues with an HTTP range request from
/// where it stopped: the device receives the blob's bytes once, not twice.
#[test]
fn an_interrupted_download_resumes_where_it_stopped() {
    let key = test_key();
    let d = tempdir();
    let built = build_signed(&pack("image"), &key, d.path());
    let reg = TestRegistry::start(None);
    let reference = format!("{}/fns/image:stable", reg.addr);
    reg.push(&built.bundle, &reference);
    // The component: the largest file a device fetches.
    let component = built.manifest.file(&built.manifest.component).unwrap().clone();
    let cut = (component.size / 2) as usize;
    let proxy = cutting_proxy(reg.addr.clone(), component.sha256.clone(), cut);
    let via_proxy = format!("{}/fns/image:stable", proxy.addr);
    let store = d.path().join("store");
    let o = ok(limes_cmd(&store).args(["--json", "sync", "--once", "--insecure", &via_proxy, "--trust"]).arg(&key.public));
    let e: serde_json::Value = serde_json::from_slice(o.stdout.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!(e["event"], "updated", "{e}");
    let heads = proxy.heads.lock().unwrap().clone();
    let blob_gets: Vec<&String> = heads.iter().filter(|h| h.contains(&component.sha256)).collect();
    assert_eq!(blob_gets.len(), 2, "the cut blob was fetched {} times: {heads:#?}", blob_gets.len());
    assert!(!blob_gets[0].to_ascii_lowercase().contains("range:"), "{}", blob_gets[0]);
    let range = blob_gets[1].to_ascii_lowercase();
    let from: u64 =
        range.split("range: bytes=").nth(1).and_then(|r| r.trim_end_matches('-').split('-').next()).and_then(|n| n.trim().parse().ok()).unwrap_or(0);
    assert!(from > 0 && from <= cut as u64, "second request did not resume: {range}");
    // Received: every fetched file once (the cut part is not fetched again).
    let fetched: u64 = e["downloaded"].as_array().unwrap().iter().map(|p| built.manifest.file(p.as_str().unwrap()).unwrap().size).sum();
    let bytes = e["bytes"].as_u64().unwrap();
    assert!(bytes >= fetched && bytes < fetched + (64 << 10), "received {bytes} bytes for {fetched} bytes of files");
    let o = ok(limes_cmd(&store).args(["run", "image", "--input"]).arg(pack("image").join("testdata/input-1024x768.jpg")));
    assert_eq!(&o.stdout[..2], b"\xff\xd8");
}
