//! `limes serve` end to end: a real server process on 127.0.0.1, real HTTP,
//! faulty functions under concurrent load, graceful shutdown.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `limes serve` on a free port (its log level: `$TEST_SERVE_LOG`, default error).
fn start(store: &std::path::Path, extra: &[&str]) -> Server {
    let mut child = limes_cmd(store)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(extra)
        .env("RUST_LOG", std::env::var("TEST_SERVE_LOG").unwrap_or("error".into()))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = listening_addr(&mut child);
    Server { addr, child }
}

/// A store (under the returned directory, `store/`) with the no-op pack and
/// the faulty fixture installed.
fn store_with_noop_and_faulty() -> (TestKey, tempfile::TempDir) {
    let key = test_key();
    let d = tempdir();
    let keys = limes_bundle::TrustedKeys::load(std::slice::from_ref(&key.public)).unwrap();
    let st = limes::Store::open(d.path().join("store")).unwrap();
    for krate in [pack("noop"), fixture("faulty")] {
        let b = build_signed(&krate, &key, d.path());
        st.install(&b.bundle, &keys, Default::default()).unwrap();
    }
    trust(&d.path().join("store"), &key);
    (key, d)
}

#[test]
fn serves_functions_and_survives_faults_under_load() {
    let (_key, d) = store_with_noop_and_faulty();
    let store = d.path().join("store");
    let server = start(&store, &["--concurrency", "4", "--max-body", "1048576"]);
    let a = server.addr;

    let (s, body) = http(a, "GET", "/healthz", b"");
    assert_eq!(s, 200);
    let health: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(health["functions"], serde_json::json!(["faulty", "noop"]));

    assert_eq!(http(a, "POST", "/functions/noop", b"hello"), (200, b"hello".to_vec()));
    assert_eq!(http(a, "POST", "/functions/nope", b"").0, 404);
    assert_eq!(http(a, "POST", "/functions/faulty", b"loop").0, 504);
    // A memory limit is the function's failure (500, kind memory-limit),
    // not the server's storage (507).
    let (status, body) = http(a, "POST", "/functions/faulty", b"oom");
    assert_eq!(status, 500);
    assert!(String::from_utf8_lossy(&body).contains("\"kind\":\"memory-limit\""), "{}", String::from_utf8_lossy(&body));
    // In the unit it is configured in, and without the server's flags.
    assert!(String::from_utf8_lossy(&body).contains("memory limit of 32 MiB"), "{}", String::from_utf8_lossy(&body));
    // GET is a request with an empty body.
    assert_eq!(http(a, "GET", "/functions/faulty", b""), (200, Vec::new()));
    // A panic: the client gets the kind and a request id to quote, never
    // the panic text (it goes to the server's log).
    let (s, body) = http(a, "POST", "/functions/faulty", b"panic");
    assert_eq!(s, 500);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["kind"], "trap", "{v}");
    assert!(v["request_id"].as_u64().is_some(), "{v}");
    assert!(!String::from_utf8_lossy(&body).contains("asked to panic"), "{v}");
    assert_eq!(http(a, "POST", "/functions/faulty", b"bad").0, 400);
    // Too large by its declared length: answered before the body is sent
    // (as to a client that waits with `Expect: 100-continue`).
    let mut s = TcpStream::connect(a).unwrap();
    write!(s, "POST /functions/noop HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n", 2 << 20).unwrap();
    let line = status_line(&mut s, Duration::from_secs(5));
    assert!(line.contains(" 413 "), "{line}");

    // Concurrent load with 2% faulty requests, 1% of all looping forever and
    // 1% exceeding memory: every good request gets its own answer back, and
    // the server is still up afterwards.
    let threads: Vec<_> = (0..8)
        .map(|t| {
            std::thread::spawn(move || {
                let mut good = Vec::new();
                for i in 0..1250 {
                    let n = t * 1250 + i;
                    if n % 100 == 7 || n % 100 == 57 {
                        let (what, want): (&[u8], u16) = if n % 100 == 7 { (b"loop", 504) } else { (b"oom", 500) };
                        let (s, _) = http(a, "POST", "/functions/faulty", what);
                        assert_eq!(s, want, "fault {} answered {s}", String::from_utf8_lossy(what));
                    } else {
                        let msg = format!("request {n}");
                        let t = std::time::Instant::now();
                        let (s, body) = http(a, "POST", "/functions/noop", msg.as_bytes());
                        good.push(t.elapsed());
                        assert_eq!((s, body), (200, msg.into_bytes()));
                    }
                }
                good
            })
        })
        .collect();
    let mut lat: Vec<Duration> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    lat.sort();
    let good = lat.len();
    println!("good requests: {good}, p50 {:?}, p99 {:?} (beside 100 runaway loops and 100 memory-limit hits)", lat[good / 2], lat[good * 99 / 100]);
    let faulty = (0..8).flat_map(|t| (0..1250).map(move |i| t * 1250 + i)).filter(|n| n % 100 == 7 || n % 100 == 57).count();
    assert_eq!(faulty, 200, "2% of the 10,000 requests go to the faulty function");
    assert_eq!(good, 10_000 - faulty);
    assert_eq!(http(a, "GET", "/healthz", b"").0, 200);

    let (s, m) = http(a, "GET", "/metrics", b"");
    assert_eq!(s, 200);
    let m = String::from_utf8(m).unwrap();
    assert!(m.contains("limes_requests_total{function=\"noop\",status=\"200\"} 9801"), "{m}");
    // 101 runaway loops, each ended by killing its worker.
    assert!(m.contains("limes_worker_replacements_total{function=\"faulty\",reason=\"timeout\"} 101"), "{m}");
    assert!(m.contains("limes_worker_replacements_total{function=\"noop\",reason=\"timeout\"} 0"), "{m}");
    // A histogram (prometheus-client) of every warm request.
    assert!(m.contains("limes_request_duration_seconds_count{function=\"noop\",phase=\"warm\"} 9800"), "{m}");
    assert!(
        m.contains("limes_request_duration_seconds_bucket{le=\"0.0001\",function=\"noop\",phase=\"warm\"}")
            || m.contains("limes_request_duration_seconds_bucket{function=\"noop\",phase=\"warm\",le="),
        "{m}"
    );

    // Graceful shutdown on SIGTERM: exit 0.
    let mut server = server;
    let pid = server.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = server.child.wait().unwrap();
    assert!(status.success(), "server exited with {status}");
}

/// Serve starts on an empty store, serves what `limes install` adds within
/// a second of the install returning, stops serving what `limes remove`
/// removes, and reloads (instead of dying) on SIGHUP.
#[test]
fn serve_follows_the_store() {
    let key = test_key();
    let d = tempdir();
    let store = d.path().join("store");
    let b = build_signed(&pack("noop"), &key, &d.path().join("out"));
    let server = start(&store, &["--workers", "1"]);
    let a = server.addr;
    let (s, body) = http(a, "GET", "/healthz", b"");
    assert_eq!(s, 200);
    assert!(String::from_utf8_lossy(&body).contains("\"functions\":[]"), "{}", String::from_utf8_lossy(&body));
    assert_eq!(http(a, "POST", "/functions/noop", b"x").0, 404);
    let limes = || limes_cmd(&store);
    ok(limes().arg("install").arg(&b.bundle).arg("--trust").arg(&key.public));
    let installed = std::time::Instant::now();
    let waited = loop {
        if http(a, "POST", "/functions/noop", b"live").0 == 200 {
            break installed.elapsed();
        }
        assert!(installed.elapsed() < Duration::from_secs(5), "the install was not picked up");
        std::thread::sleep(Duration::from_millis(20));
    };
    println!("served {waited:?} after `limes install` returned");
    // The aim (within a second) is measured here and in the benchmark; the
    // bound leaves room for a loaded CI machine.
    assert!(waited < Duration::from_secs(3), "{waited:?}");
    // SIGHUP reloads; the server lives on.
    assert!(Command::new("kill").args(["-HUP", &server.child.id().to_string()]).status().unwrap().success());
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(http(a, "POST", "/functions/noop", b"still").0, 200);
    ok(limes().args(["remove", "noop"]));
    let removed = std::time::Instant::now();
    while http(a, "POST", "/functions/noop", b"gone?").0 != 404 {
        assert!(removed.elapsed() < Duration::from_secs(5), "the removal was not picked up");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// First line of whatever the server answers on `s` within `wait`.
fn status_line(s: &mut TcpStream, wait: Duration) -> String {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 1024];
    while !raw.windows(2).any(|w| w == b"\r\n") {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) => panic!("no answer within {wait:?}: {e}"),
        }
    }
    String::from_utf8_lossy(&raw).lines().next().unwrap_or("").to_string()
}

/// Slow and oversized clients (slowloris headers, slow bodies, huge
/// declared bodies, unknown functions, more connections than the cap) never
/// starve `/healthz` and never make the server hold much memory.
#[test]
fn hostile_clients_are_bounded() {
    let key = test_key();
    let d = tempdir();
    let store = d.path().join("store");
    let keys = limes_bundle::TrustedKeys::load(std::slice::from_ref(&key.public)).unwrap();
    let b = build_signed(&pack("noop"), &key, &d.path().join("out"));
    limes::Store::open(&store).unwrap().install(&b.bundle, &keys, Default::default()).unwrap();
    trust(&store, &key);
    let server = start(
        &store,
        &["--max-connections", "250", "--header-timeout-ms", "1500", "--body-timeout-ms", "2500", "--queue-timeout-ms", "500", "--body-budget-mib", "32"],
    );
    let addr = server.addr;
    let pid = server.child.id();
    assert_eq!(http(addr, "GET", "/healthz", b"").0, 200);
    let base = rss_kib(pid);

    // 200 slowloris clients: half a request head, then silence.
    let mut slow: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"POST /functions/noop HTTP/1.1\r\nHost: x\r\n").unwrap();
            s
        })
        .collect();
    // 12 slow bodies: a declared 32 MiB - 1, 8 MiB of it sent at ~6 MB/s,
    // then silence. Only one fits the 32 MiB body budget at a time.
    let bodies: Vec<_> = (0..12)
        .map(|_| {
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
                write!(s, "POST /functions/noop HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", (32 << 20) - 1).unwrap();
                let chunk = vec![b'a'; 64 << 10];
                for _ in 0..128 {
                    if s.write_all(&chunk).is_err() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                status_line(&mut s, Duration::from_secs(10))
            })
        })
        .collect();
    // Oversized and unknown: answered at once, before any body byte is sent.
    for (path, want) in [("/functions/noop", "413"), ("/functions/nosuch", "404")] {
        let mut s = TcpStream::connect(addr).unwrap();
        write!(s, "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1073741824\r\n\r\n").unwrap();
        let line = status_line(&mut s, Duration::from_secs(2));
        assert!(line.contains(want), "{path}: {line}");
    }
    // Meanwhile /healthz answers, quickly, and memory stays bounded.
    let mut peak = base;
    let t0 = std::time::Instant::now();
    while t0.elapsed() < Duration::from_secs(4) {
        let t = std::time::Instant::now();
        assert_eq!(http(addr, "GET", "/healthz", b"").0, 200);
        // Generous for a loaded CI machine: starvation means minutes.
        assert!(t.elapsed() < Duration::from_secs(3), "/healthz took {:?}", t.elapsed());
        peak = peak.max(rss_kib(pid));
        std::thread::sleep(Duration::from_millis(100));
    }
    for h in bodies {
        let line = h.join().unwrap();
        assert!(line.contains(" 408 ") || line.contains(" 503 "), "slow body answered {line:?}");
    }
    let grown = peak.saturating_sub(base);
    println!("serve RSS: {base} KiB at rest, peak +{grown} KiB under 200 slowloris and 12 slow 8 MiB bodies");
    assert!(grown < 64 << 10, "the server grew by {grown} KiB");
    // The header deadline closed every slowloris connection.
    for s in &mut slow {
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 256];
        match s.read(&mut buf) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("a slowloris connection is still open after the header deadline: {e}"),
        }
    }
    drop(slow);
    // Over the connection cap a client is told so at once.
    let idle: Vec<TcpStream> = (0..260).map(|_| TcpStream::connect(addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let (status, body) = http(addr, "GET", "/healthz", b"");
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
    drop(idle);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(http(addr, "GET", "/healthz", b"").0, 200);
}

/// Children of `pid` (the worker processes of a server).
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let p = task.unwrap().path().join("children");
        if let Ok(s) = std::fs::read_to_string(p) {
            out.extend(s.split_whitespace().filter_map(|x| x.parse::<u32>().ok()));
        }
    }
    out
}

/// A runaway request is answered 504 at its deadline while another
/// client's requests keep their latency; a crashed worker is replaced and
/// counted.
#[test]
fn runaway_requests_end_their_worker_only() {
    let (_key, d) = store_with_noop_and_faulty();
    let store = d.path().join("store");
    let server = start(&store, &["--workers", "2", "--timeout-ms", "400"]);
    let a = server.addr;
    let runaway = std::thread::spawn(move || {
        let t = std::time::Instant::now();
        let (s, body) = http(a, "POST", "/functions/faulty", b"loop");
        (s, String::from_utf8_lossy(&body).to_string(), t.elapsed())
    });
    // Meanwhile another client is served as usual.
    let mut lat = Vec::new();
    while !runaway.is_finished() {
        let t = std::time::Instant::now();
        assert_eq!(http(a, "POST", "/functions/noop", b"hi"), (200, b"hi".to_vec()));
        lat.push(t.elapsed());
    }
    let (s, body, took) = runaway.join().unwrap();
    assert_eq!(s, 504, "{body}");
    assert!(body.contains("timed out after 400 ms") && body.contains("\"kind\":\"timeout\""), "{body}");
    assert!(!body.contains("--timeout-ms"), "a CLI hint reached an HTTP client: {body}");
    assert!(took >= Duration::from_millis(400) && took < Duration::from_secs(3), "{took:?}");
    lat.sort();
    println!("runaway answered in {took:?}; {} requests beside it, p50 {:?}, max {:?}", lat.len(), lat[lat.len() / 2], lat.last().unwrap());
    assert!(lat.len() >= 3, "the other client was starved");
    // The faulty function still answers (a fresh worker took over).
    assert_eq!(http(a, "POST", "/functions/faulty", b"fine"), (200, b"fine".to_vec()));
    // A worker killed from outside: its next request fails cleanly, the
    // worker is replaced, and the function keeps answering.
    // The worker that ran away is replaced in the background; wait for it
    // rather than racing the respawn.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut before = children(server.child.id());
    while before.len() != 4 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        before = children(server.child.id());
    }
    assert_eq!(before.len(), 4, "two workers per function: {before:?}");
    for pid in &before {
        let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
    }
    std::thread::sleep(Duration::from_millis(100));
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(http(a, "POST", "/functions/noop", b"again").0);
    }
    assert!(statuses.contains(&500), "{statuses:?}");
    assert_eq!(*statuses.last().unwrap(), 200, "{statuses:?}");
    let (_, m) = http(a, "GET", "/metrics", b"");
    let m = String::from_utf8(m).unwrap();
    assert!(m.contains("limes_worker_replacements_total{function=\"noop\",reason=\"crash\"} 2"), "{m}");
}

/// The value of a Prometheus sample (the first line starting with `series`).
fn metric(addr: SocketAddr, series: &str) -> Option<f64> {
    let (status, body) = http(addr, "GET", "/metrics", b"");
    assert_eq!(status, 200);
    String::from_utf8_lossy(&body).lines().find(|l| l.starts_with(series)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Attack: clients that send a request and close the connection at once
/// (400 of them, 8 at a time). Each abandoned request used to take its
/// worker with it, until no worker was left and every later request hung.
/// Now the exchange finishes without the client: every worker is still
/// live (none had to be replaced: each one's state was known), and
/// requests get answers.
#[test]
fn clients_that_abandon_requests_cost_no_worker() {
    let (_key, d) = store_with_noop_and_faulty();
    let server = start(&d.path().join("store"), &["--function", "noop", "--workers", "4", "--queue-timeout-ms", "2000"]);
    let addr = server.addr;
    let clients: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                for _ in 0..50 {
                    let mut s = TcpStream::connect(addr).unwrap();
                    let _ = s.write_all(b"POST /functions/noop HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello");
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let live = r#"limes_workers_live{function="noop",backend="wasm"}"#;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while metric(addr, live) != Some(4.0) {
        assert!(std::time::Instant::now() < deadline, "workers live: {:?}", metric(addr, live));
        std::thread::sleep(Duration::from_millis(100));
    }
    for i in 0..20 {
        let body = format!("after-{i}");
        assert_eq!(http(addr, "POST", "/functions/noop", body.as_bytes()), (200, body.into_bytes()));
    }
    assert_eq!(http(addr, "GET", "/healthz", b"").0, 200);
    assert_eq!(metric(addr, r#"limes_worker_replacements_total{function="noop",reason="crash"}"#), Some(0.0));
}

/// Attack: 8 connections declare 4 MiB bodies and send a byte every half
/// second, against a 16 MiB body budget. Declared sizes used to be reserved
/// up front, so 4 of them held the whole budget and legitimate requests got
/// 503. A body now holds only what has arrived, and one that arrives slower
/// than the minimum rate is cut off with 408.
#[test]
fn dripping_bodies_cannot_reserve_the_body_budget() {
    let (_key, d) = store_with_noop_and_faulty();
    let server = start(&d.path().join("store"), &["--function", "noop", "--body-budget-mib", "16", "--queue-timeout-ms", "500"]);
    let addr = server.addr;
    let mut hogs: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(format!("POST /functions/noop HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\nx", 4 << 20).as_bytes()).unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..10 {
        let body = format!("legit-{i}");
        assert_eq!(http(addr, "POST", "/functions/noop", body.as_bytes()), (200, body.into_bytes()), "request {i} beside the hogs");
        for h in &mut hogs {
            let _ = h.write_all(b"x");
        }
    }
    // The hogs are cut off once past the grace period, slower than the rate.
    let t = std::time::Instant::now();
    let mut hog = hogs.pop().unwrap();
    hog.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut answer = Vec::new();
    let _ = hog.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408") && answer.contains("body-too-slow"), "{answer}");
    assert!(t.elapsed() < Duration::from_secs(10));
}

/// Attack: a function writes text that looks like serve's own log lines
/// (newlines, a carriage return, ANSI escapes) to its stderr. Each line of
/// guest output is one escaped field of a `guest output` event: nothing it
/// writes starts a line of the log, moves the cursor or clears it.
#[test]
fn guest_output_cannot_forge_log_lines() {
    let (_key, d) = store_with_noop_and_faulty();
    let mut child = limes_cmd(&d.path().join("store"))
        .args(["serve", "--listen", "127.0.0.1:0", "--function", "faulty"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = listening_addr(&mut child);
    let forged = "stderr:first\n2026-12-03T00:00:00.000000Z  WARN limes::access: FORGED request function=noop status=200\r\x1b[2K\x1b[1ASPOOFED";
    assert_eq!(http(addr, "POST", "/functions/faulty", forged.as_bytes()), (200, b"logged".to_vec()));
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!log.contains('\x1b') && !log.contains('\r'), "raw control characters in the log:\n{log}");
    let forged_lines: Vec<&str> = log.lines().filter(|l| l.contains("FORGED") || l.contains("SPOOFED")).collect();
    assert!(!forged_lines.is_empty(), "the guest output was not logged:\n{log}");
    for l in forged_lines {
        assert!(
            l.contains("guest output") && l.contains("function=\"faulty\"") || l.contains("guest output") && l.contains("function=faulty"),
            "a forged line: {l}\n{log}"
        );
        assert!(!l.trim_start().starts_with("2026-12-03T00:00:00"), "{l}");
    }
    assert!(log.contains(r"\u{1b}[2K"), "the escape is shown escaped:\n{log}");
    // At start, serve said where each function answers.
    assert!(log.contains(&format!("faulty: http://{addr}/functions/faulty")), "{log}");
}

/// A loopback HTTP upstream answering every request `203 upstream:PATH`;
/// counts the connections it accepted.
fn upstream(addr: &str) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let l = std::net::TcpListener::bind(addr).unwrap_or_else(|e| panic!("the test upstream needs {addr}: {e}"));
    let a = l.local_addr().unwrap();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            // The whole request (a chunked body ends with an empty chunk)
            // before answering: closing earlier resets the client's send.
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let text = String::from_utf8_lossy(&got).to_lowercase();
                let done = match text.split_once("\r\n\r\n") {
                    Some((h, rest)) if h.contains("transfer-encoding: chunked") => rest.ends_with("0\r\n\r\n"),
                    Some((h, rest)) => {
                        let len = h.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse::<usize>().ok()).unwrap_or(0);
                        rest.len() >= len
                    }
                    None => false,
                };
                if done {
                    break;
                }
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            let head = String::from_utf8_lossy(&got).to_string();
            let path = head.split(' ').nth(1).unwrap_or("?").to_string();
            let body = format!("upstream:{path}");
            let _ = write!(s, "HTTP/1.1 203 Non-Authoritative Information\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
        }
    });
    (a, hits)
}

/// Raw HTTP/1.1 exchange: the whole response head (lower-cased) and body.
fn http_raw(addr: SocketAddr, request: &str) -> (String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("response has headers");
    (String::from_utf8_lossy(&raw[..split]).to_lowercase(), raw[split + 4..].to_vec())
}

#[test]
fn wasi_http_functions_get_the_whole_request_and_call_only_listed_hosts() {
    // The pack's manifest allows http://127.0.0.1:18999 and nothing else.
    let (listed, _) = upstream("127.0.0.1:18999");
    let (unlisted, unlisted_hits) = upstream("127.0.0.1:0");
    let key = test_key();
    let d = tempdir();
    let store = d.path().join("store");
    let built = build_signed(&pack("http"), &key, d.path());
    let m = &built.manifest;
    assert_eq!(m.world.kind, limes_bundle::manifest::WorldKind::WasiHttp);
    assert_eq!(m.allowed_outbound_hosts, ["http://127.0.0.1:18999"]);
    assert!(m.microvm.is_none(), "a wasi:http function has no native build, so no microVM image");
    install(&store, &built.bundle, &key);
    let server = start(&store, &["--route", "/=http-hello", "--route", "/api=http-hello"]);
    let a = server.addr;

    // Method, path below the route and query reach the function; its
    // status and headers reach the client.
    let (head, body) = http_raw(a, "PUT /functions/http-hello/a/b?x=1 HTTP/1.1\r\nHost: h\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("x-limes-example: http"), "{head}");
    assert_eq!(String::from_utf8_lossy(&body), "{\"method\":\"PUT\",\"path\":\"/a/b\",\"query\":\"x=1\"}\n");
    for (path, seen) in [("/deep/path?y=2", "/deep/path"), ("/api/v1", "/v1"), ("/api", "/"), ("/apix", "/apix")] {
        let (s, body) = http(a, "DELETE", path, b"");
        assert_eq!(s, 200, "{path}");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!((v["method"].as_str(), v["path"].as_str()), (Some("DELETE"), Some(seen)), "{path}");
    }
    let (head, body) =
        http_raw(a, "POST /functions/http-hello/echo HTTP/1.1\r\nHost: h\r\nConnection: close\r\nContent-Type: text/x-test\r\nContent-Length: 5\r\n\r\nhello");
    assert!(head.contains("content-type: text/x-test"), "{head}");
    assert_eq!(body, b"hello");
    // /healthz and /metrics keep their meaning under a root route.
    assert_eq!(http(a, "GET", "/healthz", b"").0, 200);

    // Outbound: the listed origin answers; another is denied inside the
    // guest (wasi:http's HTTP-request-denied), never connected to, counted.
    let (s, body) = http(a, "GET", &format!("/fetch?url=http://{listed}/hi"), b"");
    assert_eq!((s, String::from_utf8_lossy(&body).to_string()), (203, "upstream:/hi".to_string()));
    let (s, body) = http(a, "GET", &format!("/fetch?url=http://{unlisted}/secret"), b"");
    assert_eq!(s, 502);
    assert!(String::from_utf8_lossy(&body).contains("HttpRequestDenied"), "{}", String::from_utf8_lossy(&body));
    let (s, _) = http(a, "GET", &format!("/fetch?url=http://localhost:{}/hi", listed.port()), b"");
    assert_eq!(s, 502, "the allow-list names 127.0.0.1, not localhost");
    assert_eq!(unlisted_hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(metric(a, "limes_outbound_denied_total{function=\"http-hello\"}"), Some(2.0));

    // `limes run` gives the same function a request of its own.
    let out = ok(limes_cmd(&store).args(["--json", "run", "http-hello", "-X", "patch", "--path", "/r?q=1"]));
    let v = json(&out);
    assert_eq!(v["status"], 200);
    assert_eq!(v["body_utf8"], "{\"method\":\"PATCH\",\"path\":\"/r\",\"query\":\"q=1\"}\n");
    // No native build, so no microVM image: the microVM backends refuse it
    // and say why.
    let e = fails(limes_cmd(&store).args(["run", "http-hello", "--backend", "microvm"]), 1);
    assert!(e.contains("has no microVM image: a wasi:http function has no native build"), "{e}");
    let e = fails(limes_cmd(&store).args(["serve", "--listen", "127.0.0.1:0", "--auto", "http-hello"]), 1);
    assert!(e.contains("has no microVM image: a wasi:http function has no native build"), "{e}");
}

/// A store of many functions on shared workers (`--max-dedicated-workers
/// 0`: what a store too big for dedicated workers gets): two processes
/// serve both functions, loading each on demand, with a cache of one so
/// every switch between them loads again. Attacks: an artifact tampered
/// after the server started (and checked the store) is refused by each
/// worker that would map it, while the other function keeps answering;
/// a runaway request ends only its own worker while the other function's
/// requests go on.
#[test]
fn shared_workers_load_any_function_verified_and_keep_faults_to_one_request() {
    let (key, d) = store_with_noop_and_faulty();
    let store = d.path().join("store");
    let server = start(&store, &["--max-dedicated-workers", "0", "--shared-workers", "2", "--worker-cache", "1", "--timeout-ms", "1500"]);
    let a = server.addr;
    assert_eq!(http(a, "POST", "/functions/noop", b"first"), (200, b"first".to_vec()));
    assert_eq!(children(server.child.id()).len(), 2, "two shared workers, no pool per function");
    assert_eq!(metric(a, "limes_workers_live{function=\"*\",backend=\"wasm\"}"), Some(2.0));

    // Tampered after the server checked the store, before any worker
    // loaded it: refused at every load, by every worker.
    let object = object_dir(&store, "faulty");
    for e in std::fs::read_dir(object.join("aot")).unwrap() {
        tamper(&e.unwrap().path(), |b| {
            let mid = b.len() / 2;
            for x in &mut b[mid..mid + 64] {
                *x ^= 0x90;
            }
        });
    }
    for _ in 0..4 {
        let (s, body) = http(a, "POST", "/functions/faulty", b"fine");
        let body = String::from_utf8_lossy(&body).to_string();
        assert!(s >= 500 && body.contains("verification"), "{s} {body}");
        assert_eq!(http(a, "POST", "/functions/noop", b"still").1, b"still");
    }
    // The genuine bundle again: the next load maps the repaired object.
    let keys = limes_bundle::TrustedKeys::load(std::slice::from_ref(&key.public)).unwrap();
    let genuine = build_signed(&fixture("faulty"), &key, d.path());
    limes::Store::open(&store).unwrap().install(&genuine.bundle, &keys, limes::store::InstallPolicy { force: true, ..Default::default() }).unwrap();
    // Both functions on two workers that keep one each: right answers
    // through every switch.
    for i in 0..6 {
        let body = format!("round {i}");
        assert_eq!(http(a, "POST", "/functions/faulty", body.as_bytes()), (200, body.clone().into_bytes()));
        assert_eq!(http(a, "POST", "/functions/noop", body.as_bytes()), (200, body.into_bytes()));
    }

    // A runaway request: 504 at its deadline, its worker replaced; the
    // other worker answers the other function meanwhile.
    let runaway = std::thread::spawn(move || http(a, "POST", "/functions/faulty", b"loop").0);
    let mut beside = 0;
    while !runaway.is_finished() {
        assert_eq!(http(a, "POST", "/functions/noop", b"hi"), (200, b"hi".to_vec()));
        beside += 1;
    }
    assert_eq!(runaway.join().unwrap(), 504);
    assert!(beside >= 3, "the other function was starved: {beside} answers");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while metric(a, "limes_workers_live{function=\"*\",backend=\"wasm\"}") != Some(2.0) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(metric(a, "limes_worker_replacements_total{function=\"*\",reason=\"timeout\"}"), Some(1.0));
    assert_eq!(http(a, "POST", "/functions/faulty", b"after"), (200, b"after".to_vec()));
}
