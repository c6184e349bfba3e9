//! Machine description, the serve load test, and writing the results as
//! JSON, CSV, Markdown and SVG.

use crate::{LoadRow, Results};
use anyhow::Result;
use serde::Serialize;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub kernel: String,
    pub os: String,
    pub rustc: String,
    pub wasmtime: String,
    pub date_utc: String,
    pub kvm_device: bool,
}

fn cmd(c: &str, args: &[&str]) -> String {
    std::process::Command::new(c).args(args).output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default()
}

impl Machine {
    pub fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).unwrap_or("unknown").trim().to_string();
        let os = std::fs::read_to_string("/etc/os-release")
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("PRETTY_NAME="))
            .map(|l| l.trim_start_matches("PRETTY_NAME=").trim_matches('"').to_string())
            .unwrap_or_default();
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            kernel: cmd("uname", &["-r"]),
            os,
            rustc: cmd("rustc", &["-V"]),
            wasmtime: limes_bundle::profile::WASMTIME_VERSION.into(),
            date_utc: cmd("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            kvm_device: Path::new("/dev/kvm").exists(),
        }
    }

    /// The one line the separate pages (fleet, density) name their machine
    /// with: CPU, cores, date, kernel and build.
    pub fn label(&self, quick: bool) -> String {
        format!("{}, {} cores, {} ({}, {} build)", self.cpu, self.cores, self.date_utc, self.kernel, if quick { "debug" } else { "release" })
    }
}

/// A keep-alive HTTP/1.1 client on one connection (as `wrk`'s are).
pub(crate) struct KeepAlive {
    s: std::io::BufReader<TcpStream>,
}

impl KeepAlive {
    pub(crate) fn connect(addr: SocketAddr) -> Result<KeepAlive> {
        let s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        s.set_nodelay(true)?;
        Ok(KeepAlive { s: std::io::BufReader::new(s) })
    }

    fn send(&mut self, path: &str, body: &[u8]) -> Result<()> {
        let s = self.s.get_mut();
        write!(s, "POST {path} HTTP/1.1\r\nHost: b\r\nContent-Length: {}\r\n\r\n", body.len())?;
        s.write_all(body)?;
        Ok(())
    }

    /// POST and read the whole answer; returns its status.
    pub(crate) fn post(&mut self, path: &str, body: &[u8]) -> Result<u16> {
        use std::io::BufRead;
        self.send(path, body)?;
        let (mut line, mut status, mut len, mut chunked) = (String::new(), 0u16, 0usize, false);
        loop {
            line.clear();
            anyhow::ensure!(self.s.read_line(&mut line)? > 0, "serve closed the connection");
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if status == 0 {
                status = l.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
            } else if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse()?;
                } else if k.eq_ignore_ascii_case("transfer-encoding") && v.trim().eq_ignore_ascii_case("chunked") {
                    chunked = true;
                }
            }
        }
        if !chunked {
            let mut body = vec![0u8; len];
            self.s.read_exact(&mut body)?;
            return Ok(status);
        }
        // `wasmtime serve` streams its answers: chunks until an empty one.
        loop {
            line.clear();
            anyhow::ensure!(self.s.read_line(&mut line)? > 0, "closed inside a chunked body");
            let size = usize::from_str_radix(line.trim_end().split(';').next().unwrap_or(""), 16)?;
            let mut chunk = vec![0u8; size + 2];
            if size == 0 {
                // Trailers (none expected), then the blank line.
                loop {
                    line.clear();
                    anyhow::ensure!(self.s.read_line(&mut line)? > 0, "closed inside trailers");
                    if line.trim_end().is_empty() {
                        return Ok(status);
                    }
                }
            }
            self.s.read_exact(&mut chunk)?;
        }
    }
}

fn post_to(addr: SocketAddr, function: &str, body: &[u8]) -> Result<u16> {
    Ok(post(addr, &format!("/functions/{function}"), body)?.0)
}

/// One POST on its own connection: the status (0 when there is none) and
/// the body.
pub(crate) fn post(addr: SocketAddr, path: &str, body: &[u8]) -> Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(s, "POST {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\nContent-Length: {}\r\n\r\n", body.len())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let line = String::from_utf8_lossy(&raw[..raw.len().min(16)]).to_string();
    let status = line.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = raw.windows(4).position(|w| w == b"\r\n\r\n").map(|i| raw[i + 4..].to_vec()).unwrap_or_default();
    Ok((status, body))
}

/// Requests sent and not timed after a server's settling second.
const WARMUP: usize = 3;

/// How long one server of [`serve_mode`] is measured.
enum Until {
    Requests(usize),
    Elapsed(Duration),
}

/// Start `limes serve` for `function` in `mode` (`wasm`, `microvm` or
/// `auto`), let it settle (a second for its pools to boot and go idle, then
/// three discarded requests) and time sequential requests until `until`.
fn serve_mode(store: &limes::Store, kernel: &std::path::Path, function: &str, mode: &str, body: &[u8], until: Until) -> Result<Vec<Duration>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let root = store.root().to_path_buf();
    let opts = limes::serve::ServeOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        functions: vec![function.to_string()],
        workers: 2,
        worker_exe: Some(crate::sibling("limes")?.into()),
        microvm_functions: if mode == "microvm" { vec![function.to_string()] } else { vec![] },
        auto_functions: if mode == "auto" { vec![function.to_string()] } else { vec![] },
        vm_pool: 2,
        vm: limes::microvm::VmOptions { kernel: Some(kernel.to_path_buf()), ..Default::default() },
        queue_timeout: Duration::from_secs(60),
        anchors: limes::trust::Anchors::load(&[], limes::trust::default_dir(), &root)?,
        ..Default::default()
    };
    let server = std::thread::spawn(move || -> Result<()> {
        let store = limes::Store::open(root)?;
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        rt.block_on(limes::serve::serve(&store, opts, move |a, _| tx.send(a).unwrap(), async move {
            let _ = stop_rx.await;
        }))?;
        Ok(())
    });
    let addr = rx.recv_timeout(Duration::from_secs(120))?;
    std::thread::sleep(Duration::from_secs(1));
    let mut lat = Vec::new();
    let mut started = Instant::now();
    for i in 0.. {
        if i == WARMUP {
            // The run's time counts from its first timed request: discarded
            // ones (an `auto` try of a microVM takes over a second under
            // emulation) must not use it up.
            started = Instant::now();
        }
        let done = match until {
            Until::Requests(n) => i >= n + WARMUP,
            // At least one timed request, however slow the machine.
            Until::Elapsed(d) => i > WARMUP && started.elapsed() >= d,
        };
        if done {
            break;
        }
        let t = Instant::now();
        anyhow::ensure!(post_to(addr, function, body)? == 200, "non-200 from serve ({function}, {mode})");
        if i >= WARMUP {
            lat.push(t.elapsed());
        }
    }
    let _ = stop_tx.send(());
    server.join().unwrap()?;
    Ok(lat)
}

fn backend_row(workload: &str, mode: &str, lat: &[Duration]) -> Result<crate::BackendRow> {
    let s = crate::Stats::of(lat, &format!("{workload} served by {mode}"))?;
    Ok(crate::BackendRow {
        workload: workload.to_string(),
        mode: mode.to_string(),
        requests: lat.len(),
        p50_us: s.p50_us,
        p99_us: s.p99_us,
        mean_us: s.mean_us,
    })
}

/// Each workload served by `limes serve` three ways (Wasm workers,
/// pre-booted microVMs, `auto`), `n` sequential requests each (given per
/// workload), in `rounds`
/// rounds that take the modes in turn (a fresh server each), so a slow
/// spell of the shared machine falls on every mode alike.
pub fn backend_choice(
    store: &limes::Store,
    kernel: &std::path::Path,
    workloads: &[(&str, &str, Vec<u8>, usize)],
    rounds: usize,
) -> Result<Vec<crate::BackendRow>> {
    const MODES: [&str; 3] = ["wasm", "microvm", "auto"];
    let mut rows = Vec::new();
    for &(workload, function, ref body, n) in workloads {
        let mut lat: [Vec<Duration>; 3] = Default::default();
        for round in 0..rounds {
            let per_round = n / rounds + usize::from(round < n % rounds);
            for (i, mode) in MODES.iter().enumerate() {
                lat[i].extend(serve_mode(store, kernel, function, mode, body, Until::Requests(per_round))?);
            }
        }
        for (mode, lat) in MODES.iter().zip(&lat) {
            rows.push(backend_row(workload, mode, lat)?);
        }
    }
    Ok(rows)
}

/// One workload served for `seconds` by Wasm workers and by `auto`, one
/// client back to back: what `auto`'s tries of a much slower backend cost a
/// long-running server (its mean), which the short rows cannot show.
pub fn sustained(store: &limes::Store, kernel: &std::path::Path, workload: &str, function: &str, body: &[u8], seconds: u64) -> Result<Vec<crate::BackendRow>> {
    ["wasm", "auto"]
        .iter()
        .map(|mode| backend_row(workload, mode, &serve_mode(store, kernel, function, mode, body, Until::Elapsed(Duration::from_secs(seconds)))?))
        .collect()
}

/// Worker processes of the load test's server.
const WORKERS: u64 = 4;

/// `limes_workers_live` of the no-op once it reaches `want` (or after 10 s,
/// whatever it is then).
fn workers_live_after(addr: SocketAddr, want: u64) -> Result<u64> {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let mut s = TcpStream::connect(addr)?;
        write!(s, "GET /metrics HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")?;
        let mut raw = String::new();
        s.read_to_string(&mut raw)?;
        let live = raw.lines().find(|l| l.starts_with("limes_workers_live{function=\"noop\"")).and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or(0);
        if live == want || Instant::now() > until {
            return Ok(live);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `limes serve` (in process, on 127.0.0.1) under 1..N concurrent clients,
/// a bounded number of requests per level.
/// A `limes serve` in this process (its own Tokio runtime, on a thread),
/// with workers from the release `limes` beside the benchmark; the bound
/// address, and what stops it.
struct InProcessServe {
    addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<Result<()>>,
}

impl InProcessServe {
    fn start(store: &limes::Store, opts: limes::serve::ServeOptions) -> Result<InProcessServe> {
        let worker_exe = crate::sibling("limes")?;
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let root = store.root().to_path_buf();
        let anchors = limes::trust::Anchors::load(&[], limes::trust::default_dir(), &root)?;
        let thread = std::thread::spawn(move || -> Result<()> {
            let store = limes::Store::open(root)?;
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            let opts = limes::serve::ServeOptions { anchors, listen: "127.0.0.1:0".parse().unwrap(), worker_exe: Some(worker_exe.into()), ..opts };
            rt.block_on(limes::serve::serve(&store, opts, move |a, _| tx.send(a).unwrap(), async move {
                let _ = stop_rx.await;
            }))?;
            Ok(())
        });
        let addr = rx.recv_timeout(Duration::from_secs(30))?;
        Ok(InProcessServe { addr, stop, thread })
    }

    fn stop(self) -> Result<()> {
        let _ = self.stop.send(());
        self.thread.join().unwrap()
    }
}

pub fn serve_load(store: &limes::Store, levels: &[usize], per_level: usize, in_process: bool) -> Result<Vec<LoadRow>> {
    let server = InProcessServe::start(
        store,
        limes::serve::ServeOptions { functions: vec!["noop".into()], concurrency: 64, workers: WORKERS as usize, in_process, ..Default::default() },
    )?;
    let addr = server.addr;
    let mut rows = Vec::new();
    for &clients in levels {
        // Keep-alive clients, then an abrupt stop: each sends one more request
        // and drops its connection without reading the answer (as `wrk` does
        // when its time is up).
        let mode = if in_process { "in-process" } else { "workers" };
        let mut row = load_levels(addr, "/functions/noop", b"ping", clients, per_level, mode, true)?;
        // Every pool must be full again after the abrupt stop.
        if !in_process {
            let live = workers_live_after(addr, WORKERS)?;
            anyhow::ensure!(live == WORKERS, "only {live} of {WORKERS} workers alive after {clients} clients stopped abruptly");
            row.pool_after_abrupt_stop = Some((live, WORKERS));
        }
        rows.push(row);
    }
    server.stop()?;
    Ok(rows)
}

/// `clients` keep-alive clients against `addr`, `per_level` requests in
/// all, each POSTing `body` to `path`; every answer must be 200. With
/// `abandon`, each client ends with one more request whose answer it does
/// not wait for.
fn load_levels(addr: SocketAddr, path: &'static str, body: &'static [u8], clients: usize, per_level: usize, mode: &str, abandon: bool) -> Result<LoadRow> {
    let per = (per_level / clients).max(1);
    let t = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            std::thread::spawn(move || -> Result<Vec<Duration>> {
                let mut c = KeepAlive::connect(addr)?;
                let mut lat = Vec::with_capacity(per);
                for _ in 0..per {
                    let t = Instant::now();
                    let status = c.post(path, body)?;
                    anyhow::ensure!(status == 200, "status {status} from {addr}{path}");
                    lat.push(t.elapsed());
                }
                if abandon {
                    c.send(path, b"abandoned")?;
                }
                Ok(lat)
            })
        })
        .collect();
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.join().unwrap()?);
    }
    let wall = t.elapsed().as_secs_f64();
    let s = crate::Stats::of(&all, &format!("{mode} at {clients} clients"))?;
    Ok(LoadRow {
        mode: mode.into(),
        clients,
        requests: all.len(),
        requests_per_s: all.len() as f64 / wall,
        p50_us: s.p50_us,
        p99_us: s.p99_us,
        pool_after_abrupt_stop: None,
    })
}

/// The Wasmtime CLI to compare with: `$LIMES_WASMTIME`, else what
/// `scripts/fetch-wasmtime.sh` installed.
pub fn wasmtime_cli() -> Option<PathBuf> {
    std::env::var_os("LIMES_WASMTIME").map(PathBuf::from).or_else(|| Some(PathBuf::from("/var/tmp/limes-wasmtime-49.0.4/wasmtime"))).filter(|p| p.is_file())
}

/// The same wasi:http component (packs/http, body echo at `/echo`) served
/// by `wasmtime serve` (AOT, `--allow-precompiled`) and by `limes serve`
/// (its signed bundle, installed in `store`), taking turns per level.
pub fn http_vs_wasmtime(
    store: &limes::Store,
    wasmtime: &std::path::Path,
    component: &std::path::Path,
    work: &std::path::Path,
    levels: &[usize],
    per_level: usize,
) -> Result<Vec<LoadRow>> {
    let version = cmd(wasmtime.to_str().unwrap_or("wasmtime"), &["--version"]);
    let cwasm = work.join("http-hello.cwasm");
    let st = std::process::Command::new(wasmtime).arg("compile").arg(component).arg("-o").arg(&cwasm).status()?;
    anyhow::ensure!(st.success(), "wasmtime compile failed");
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let wt_addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let mut wt = std::process::Command::new(wasmtime)
        .args(["serve", "--allow-precompiled", "-S", "cli", "--addr"])
        .arg(wt_addr.to_string())
        .arg(&cwasm)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(wt_addr).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "wasmtime serve did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    let server = InProcessServe::start(
        store,
        limes::serve::ServeOptions {
            functions: vec!["http-hello".into()],
            concurrency: 64,
            workers: WORKERS as usize,
            routes: vec!["/=http-hello".parse().map_err(anyhow::Error::msg)?],
            ..Default::default()
        },
    )?;
    let limes_addr = server.addr;
    let wt_mode = format!("wasmtime serve ({})", version.trim());
    let mut rows = Vec::new();
    for (i, &clients) in levels.iter().enumerate() {
        // Warm both, then take turns (the order alternates per level).
        load_levels(wt_addr, "/echo", b"ping", 1, 20, &wt_mode, false)?;
        load_levels(limes_addr, "/echo", b"ping", 1, 20, "limes serve", false)?;
        let (w, l) = if i % 2 == 0 {
            let w = load_levels(wt_addr, "/echo", b"ping", clients, per_level, &wt_mode, false)?;
            (w, load_levels(limes_addr, "/echo", b"ping", clients, per_level, "limes serve", false)?)
        } else {
            let l = load_levels(limes_addr, "/echo", b"ping", clients, per_level, "limes serve", false)?;
            (load_levels(wt_addr, "/echo", b"ping", clients, per_level, &wt_mode, false)?, l)
        };
        rows.push(w);
        rows.push(l);
    }
    let _ = wt.kill();
    let _ = wt.wait();
    server.stop()?;
    Ok(rows)
}

fn find<'a>(r: &'a Results, workload: &str, method: &str, phase: &str) -> Option<&'a crate::Stats> {
    r.rows.iter().find(|x| x.workload == workload && x.method == method && x.phase == phase).map(|x| &x.stats)
}

fn us(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.1} ms", v / 1000.0)
    } else if v >= 1000.0 {
        format!("{:.2} ms", v / 1000.0)
    } else {
        format!("{v:.0} µs")
    }
}

pub fn markdown(r: &Results) -> String {
    let m = &r.machine;
    let mut s = String::new();
    let _ = writeln!(s, "# limes benchmark report{}\n", if r.quick { " (quick smoke run: too few iterations to quote)" } else { "" });
    let _ = writeln!(
        s,
        "Machine: {} ({} cores), {}, kernel {}, {}, Wasmtime {}; /dev/kvm {}. Measured {}.\n",
        m.cpu,
        m.cores,
        m.os,
        m.kernel,
        m.rustc,
        m.wasmtime,
        if m.kvm_device { "present" } else { "absent" },
        m.date_utc
    );
    let workloads: Vec<String> = {
        let mut v: Vec<String> = Vec::new();
        for row in &r.rows {
            if !v.contains(&row.workload) {
                v.push(row.workload.clone());
            }
        }
        v
    };
    s += "## Cold start (in process): the study's compile-at-load vs our AOT path\n\n";
    s += "Cold start = everything before the function's first instruction: compile-at-load is a fresh engine plus `Component::new` (the Limes study's method); AOT is mapping the verified `.cwasm` (`deserialize_file`), linking and instantiating from the pooling allocator.\n\n";
    s += "| workload | compile-at-load p50 | p99 | AOT p50 | AOT p99 | AOT min / max | runs (AOT) | speed-up (p50) |\n|---|---|---|---|---|---|---|---|\n";
    for w in &workloads {
        if let (Some(c), Some(a)) = (find(r, w, "compile-at-load", "cold_start"), find(r, w, "aot-in-process", "cold_start")) {
            let _ = writeln!(
                s,
                "| {w} | {} | {} | {} | {} | {} / {} | {} | {:.0}x |",
                us(c.p50_us),
                us(c.p99_us),
                us(a.p50_us),
                us(a.p99_us),
                us(a.min_us),
                us(a.max_us),
                a.n,
                c.p50_us / a.p50_us
            );
        }
    }
    s += "\n## Integrity check at load: install-time stamp (`limes run`) vs re-hashing the artifact (`limes serve`)\n\n";
    s += "Both rows are check + map + link + instantiate. The stamp check is an `fstat` of the `.cwasm` compared with its inode, size and ctime at install; re-hashing reads the artifact, checks its SHA-256 against the signed manifest and deserializes that same buffer.\n\n";
    s += "| workload | stamp p50 | re-hash p50 | re-hash p99 | cost of re-hashing (p50) |\n|---|---|---|---|---|\n";
    for w in &workloads {
        if let (Some(a), Some(h)) = (find(r, w, "aot-in-process", "cold_start"), find(r, w, "aot-rehash", "cold_start")) {
            let _ =
                writeln!(s, "| {w} | {} | {} | {} | +{} ({:.1}x) |", us(a.p50_us), us(h.p50_us), us(h.p99_us), us(h.p50_us - a.p50_us), h.p50_us / a.p50_us);
        }
    }
    s += "\n## Signature check at load (every load since #23)\n\n";
    s += "What `limes run NAME` does before mapping, taking turns in one loop: the store lookup (record, object tree, manifest) and then the stamp check, map, link and instantiate, without and with the installed manifest's Ed25519 signature checked against the trust directory's keys. The first column is the cold start above (no lookup), the figure before #23's check.\n\n";
    s += "| workload | cold start (no lookup) p50 | lookup, no signature check p50 | lookup + signature check p50 | p99 | cost of the signature check (p50) |\n|---|---|---|---|---|---|\n";
    for w in &workloads {
        if let (Some(a), Some(l), Some(g)) =
            (find(r, w, "aot-in-process", "cold_start"), find(r, w, "aot-lookup", "cold_start"), find(r, w, "aot-signature", "cold_start"))
        {
            let _ = writeln!(s, "| {w} | {} | {} | {} | {} | {:+.0} µs |", us(a.p50_us), us(l.p50_us), us(g.p50_us), us(g.p99_us), g.p50_us - l.p50_us);
        }
    }
    s += "\n## Execution: Wasm (AOT) against the same function compiled natively\n\n";
    s += "| workload | native p50 | AOT p50 | AOT / native | compile-at-load p50 | AOT p99 |\n|---|---|---|---|---|---|\n";
    for w in &workloads {
        if let Some(a) = find(r, w, "aot-in-process", "execution") {
            let n = find(r, w, "native-in-process", "execution");
            let c = find(r, w, "compile-at-load", "execution");
            let _ = writeln!(
                s,
                "| {w} | {} | {} | {} | {} | {} |",
                n.map(|n| us(n.p50_us)).unwrap_or("-".into()),
                us(a.p50_us),
                n.filter(|n| n.p50_us >= 50.0).map(|n| format!("{:.2}x", a.p50_us / n.p50_us)).unwrap_or("-".into()),
                c.map(|c| us(c.p50_us)).unwrap_or("-".into()),
                us(a.p99_us)
            );
        }
    }
    s += "\n## microVM image of the same function (boot-to-answer)\n\n| workload | backend | boot p50 | execution p50 | boot-to-answer p50 | runs |\n|---|---|---|---|---|---|\n";
    for w in &workloads {
        for row in r.rows.iter().filter(|x| &x.workload == w && x.method.starts_with("microvm") && x.phase == "total") {
            let boot = find(r, w, &row.method, "cold_start");
            let exec = find(r, w, &row.method, "execution");
            let _ = writeln!(
                s,
                "| {w} | {} | {} | {} | {} | {} |",
                row.method.trim_start_matches("microvm-").trim_matches(|c| c == '(' || c == ')'),
                boot.map(|b| us(b.p50_us)).unwrap_or("-".into()),
                exec.map(|b| us(b.p50_us)).unwrap_or("-".into()),
                us(row.stats.p50_us),
                row.stats.n
            );
        }
    }
    s += &process_section(r, &workloads);
    s += &arm64_section(r, &workloads);
    s += "\n## Cold start against component size\n\n![scaling](scaling.svg)\n\n| component size | compile-at-load p50 | AOT (map + instantiate + call) p50 | AOT p99 |\n|---|---|---|---|\n";
    for x in &r.scaling {
        let _ = writeln!(s, "| {:.0} KB | {} | {} | {} |", x.size_bytes as f64 / 1e3, us(x.compile_at_load.p50_us), us(x.aot.p50_us), us(x.aot.p99_us));
    }
    s += "\n## `limes serve` under concurrent load (noop, 127.0.0.1, keep-alive clients, stopped abruptly)\n\n`workers` is the design (4 pre-warmed worker processes, requests over a pipe, deadlines by killing the worker); `in-process` is the previous design, measured in the same run for comparison (it cannot enforce deadlines without epoch checks). Each client keeps one connection (as `wrk` does); at the end every client sends one more request and drops its connection without reading the answer. The last column is the workers alive afterwards: before #23, each abandoned request cost a worker for good.\n\n| mode | clients | requests | requests/s | p50 | p99 | workers alive after the abrupt stop |\n|---|---|---|---|---|---|---|\n";
    for l in &r.serve_load {
        let pool = l.pool_after_abrupt_stop.map(|(live, of)| format!("{live} of {of}")).unwrap_or_else(|| "-".into());
        let _ = writeln!(s, "| {} | {} | {} | {:.0} | {} | {} | {pool} |", l.mode, l.clients, l.requests, l.requests_per_s, us(l.p50_us), us(l.p99_us));
    }
    s += "\n## Backend choice: `limes serve` per function as Wasm, as pre-booted microVMs, and `auto` (one client, sequential)\n\n`auto` routes each request to the backend with the lower recent median and tries the other on every 16th request, at most once per gap (250 ms, doubling while the tries confirm the choice), and a losing try delays the next by 19x its own time. Each row is 30 requests (300 for the no-op, whose sub-millisecond median needs more) in three rounds that take the modes in turn, each round on a fresh server after a settling second (its pools booted and idle) and three discarded requests, so every mode meets the shared machine's slow spells alike; each `auto` round includes its first try of the microVM. microVM rows are the Hermit image under QEMU TCG here: each VM answers one request, so once the pre-booted ones are used a request waits for a boot (about 0.1 s).\n\nThe aim is on the median; the mean shows what the tries cost (a microVM try of the image pipeline takes over a second).\n\n| workload | wasm p50 | microvm p50 | auto p50 | auto / better fixed (p50) | auto / better fixed (mean) |\n|---|---|---|---|---|---|\n";
    let mut seen: Vec<&str> = Vec::new();
    for b in &r.backends {
        if seen.contains(&b.workload.as_str()) {
            continue;
        }
        seen.push(&b.workload);
        let get = |m: &str| r.backends.iter().find(|x| x.workload == b.workload && x.mode == m);
        if let (Some(w), Some(v), Some(a)) = (get("wasm"), get("microvm"), get("auto")) {
            let (best, best_mean) = (w.p50_us.min(v.p50_us), w.mean_us.min(v.mean_us));
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {:.2}x | {:.2}x |",
                b.workload,
                us(w.p50_us),
                us(v.p50_us),
                us(a.p50_us),
                a.p50_us / best,
                a.mean_us / best_mean
            );
        }
    }
    if let [w, a] = &r.sustained[..] {
        let _ = write!(
            s,
            "\nThe same server for {:.0} s, one client back to back ({}: {} requests on Wasm, {} with `auto`): `auto` / Wasm p50 **{:.2}x**, mean **{:.2}x** (p50 {} vs {}, mean {} vs {}). A long-running server pays for its tries of the slower backend in its mean, bounded by the 19x spacing.\n",
            w.requests as f64 * w.mean_us / 1e6,
            w.workload,
            w.requests,
            a.requests,
            a.p50_us / w.p50_us,
            a.mean_us / w.mean_us,
            us(a.p50_us),
            us(w.p50_us),
            us(a.mean_us),
            us(w.mean_us)
        );
    }
    s += "\n## Build (limes-pack)\n\n| pack | cold build | no-change build | component | bundle | tiers (precompile ms, bytes) |\n|---|---|---|---|---|---|\n";
    for b in &r.builds {
        let tiers: Vec<String> = b.tiers.iter().map(|(t, ms, sz)| format!("{t}: {ms:.0} ms, {sz} B")).collect();
        let _ = writeln!(
            s,
            "| {} | {:.0} ms | {:.0} ms | {} B | {} B | {} |",
            b.pack,
            b.cold_build_ms,
            b.no_change_build_ms,
            b.component_bytes,
            b.bundle_bytes,
            tiers.join("; ")
        );
    }
    s += "\n## microVM images: Hermit unikernel beside the Linux initrd (same run)\n\n\
          Image build: the microVM step of `limes-pack build`; for Hermit after the function's own crates were cleaned \
          (kernel, std and dependencies cached), and again with no change.\n\n\
          | pack | Linux image build | initrd | Hermit image build | no-change | unikernel | loader |\n|---|---|---|---|---|---|---|\n";
    for b in &r.builds {
        let _ = writeln!(
            s,
            "| {} | {:.0} ms | {} B | {:.0} ms | {:.0} ms | {} B | {} B |",
            b.pack, b.linux_image_ms, b.linux_initrd_bytes, b.hermit_image_ms, b.hermit_no_change_ms, b.hermit_image_bytes, b.hermit_loader_bytes
        );
    }
    s += "\n| workload | image | boot (p50) | execution (p50) | boot-to-answer (p50) | Hermit / Linux execution |\n|---|---|---|---|---|---|\n";
    let mut workloads: Vec<&str> = Vec::new();
    for row in r.rows.iter().filter(|x| x.method.starts_with("microvm-")) {
        if !workloads.contains(&row.workload.as_str()) {
            workloads.push(&row.workload);
        }
    }
    for w in workloads {
        let get = |kind: &str, phase: &str| r.rows.iter().find(|x| x.workload == w && x.method.starts_with(&format!("microvm-{kind} ")) && x.phase == phase);
        for kind in ["linux", "hermit"] {
            if let (Some(b), Some(e), Some(t)) = (get(kind, "cold_start"), get(kind, "execution"), get(kind, "total")) {
                let ratio = match (kind, get("linux", "execution")) {
                    ("hermit", Some(l)) => format!("{:.2}x", e.stats.p50_us / l.stats.p50_us),
                    _ => String::new(),
                };
                let _ = writeln!(s, "| {w} | {} | {} | {} | {} | {ratio} |", b.method, us(b.stats.p50_us), us(e.stats.p50_us), us(t.stats.p50_us));
            }
        }
    }
    s += &http_section(r);
    for n in &r.notes {
        let _ = writeln!(s, "\nNote: {n}");
    }
    s
}

/// The whole-process rows: `limes run` (both builds) against the native
/// process, and the loader's floor.
fn process_section(r: &Results, workloads: &[String]) -> String {
    let mut s = String::new();
    s += "\n## Whole process: `limes run` (verify-free start from the store, AOT) vs a native process\n\n";
    s += "`limes run` is the static device build (x86_64-unknown-linux-musl, not position-independent: see .cargo/config.toml; linked by LLD with the code a one-shot run executes laid out first: see loader/build.rs); the glibc build of the same loader ran in turn with it. The native process is the function's own native build (glibc, dynamically linked, as `cargo build` makes it).\n\n";
    s += "| workload | `limes run` p50 | p99 | glibc build p50 | native process p50 | p99 | `limes run` / native (p50) | runs |\n|---|---|---|---|---|---|---|---|\n";
    for w in workloads {
        if let Some(l) = find(r, w, crate::RUN_STATIC, "total") {
            let g = find(r, w, crate::RUN_GLIBC, "total");
            let n = find(r, w, "native-process", "total");
            let _ = writeln!(
                s,
                "| {w} | {} | {} | {} | {} | {} | {} | {} |",
                us(l.p50_us),
                us(l.p99_us),
                g.map(|g| us(g.p50_us)).unwrap_or("-".into()),
                n.map(|n| us(n.p50_us)).unwrap_or("-".into()),
                n.map(|n| us(n.p99_us)).unwrap_or("-".into()),
                n.map(|n| format!("{:.2}x", l.p50_us / n.p50_us)).unwrap_or("-".into()),
                l.n
            );
        }
    }
    if let Some(v) = r.rows.iter().find(|x| x.method == crate::process::LOADER_FLOOR) {
        let _ = writeln!(
            s,
            "\nThe device loader's floor, in turn with the no-op rows: `limes --version` (start the executable, parse the command line, exit) p50 {}, p99 {} ({} runs).",
            us(v.stats.p50_us),
            us(v.stats.p99_us),
            v.stats.n
        );
    }
    s
}

/// `--only-process`: the whole-process rows alone.
pub fn process_markdown(r: &Results) -> String {
    page_header(r, "One-shot runs (`limes-bench --only-process`") + &process_section(r, &workloads_of(r))
}

/// The workloads of `r`'s rows, in the order they were measured.
fn workloads_of(r: &Results) -> Vec<String> {
    let mut workloads: Vec<String> = Vec::new();
    for row in &r.rows {
        if !workloads.contains(&row.workload) {
            workloads.push(row.workload.clone());
        }
    }
    workloads
}

/// The title (`title` then whether the run was quick) and machine line of
/// an `--only-...` page.
fn page_header(r: &Results, title: &str) -> String {
    let m = &r.machine;
    format!(
        "# {title}{})\n\nMachine: {} ({} cores), {}, {}, Wasmtime {}. Measured {}. Profile of the loader and this benchmark: {}.\n",
        if r.quick { ", quick: too few iterations to quote" } else { "" },
        m.cpu,
        m.cores,
        m.os,
        m.rustc,
        m.wasmtime,
        m.date_utc,
        if cfg!(debug_assertions) { "dev (dependencies at opt-level 2, our crates unoptimised)" } else { "release" }
    )
}

/// The `--only-arm64` report: the machine, then the ARM64 section.
pub fn arm64_markdown(r: &Results) -> String {
    let mut s = page_header(r, "limes on ARM64 devices (`limes-bench --only-arm64`");
    s += &arm64_section(r, &workloads_of(r));
    for n in &r.notes {
        let _ = writeln!(s, "\n- {n}");
    }
    s
}

/// ARM64: the aarch64 tiers' build cost beside x86_64's, and the emulated
/// aarch64 loader beside the pack's native aarch64 build.
fn arm64_section(r: &Results, workloads: &[String]) -> String {
    use limes_bundle::profile::Arch;
    let mut s = String::new();
    if !r.tier_costs.is_empty() {
        s += "\n## aarch64 tiers: what they add to a build\n\nEach tier precompiled from the pack's component one at a time (Cranelift cross-compiles the aarch64 tiers on this x86_64 machine; `limes-pack build` compiles all tiers in parallel, so its wall time grows less). p50 of the runs.\n\n| pack | x86_64 tiers (3) | aarch64 tiers (2) | aarch64 / x86_64 time | x86_64 bytes | aarch64 bytes | per tier (ms, bytes) |\n|---|---|---|---|---|---|---|\n";
        for c in &r.tier_costs {
            let (xm, xb) = c.total(Arch::X86_64);
            let (am, ab) = c.total(Arch::Aarch64);
            let per: Vec<String> = c.tiers.iter().map(|(t, _, ms, b)| format!("{t}: {ms:.0} ms, {b} B")).collect();
            let _ = writeln!(s, "| {} | {xm:.0} ms | {am:.0} ms | {:.2}x | {xb} B | {ab} B | {} |", c.pack, am / xm.max(1e-9), per.join("; "));
        }
    }
    let mut rows = String::new();
    for w in workloads {
        if let (Some(l), Some(n)) = (find(r, w, crate::arm64::RUN_AARCH64, "total"), find(r, w, crate::arm64::NATIVE_AARCH64, "total")) {
            let _ =
                writeln!(rows, "| {w} | {} | {} | {} | {} | {:.2}x | {} |", us(l.p50_us), us(l.p99_us), us(n.p50_us), us(n.p99_us), l.p50_us / n.p50_us, l.n);
        }
    }
    if !rows.is_empty() {
        s += "\n## ARM64 device under emulation: `limes run` (aarch64 loader, AOT) vs the native aarch64 process\n\n";
        s += "Both are static aarch64 executables started by the kernel through qemu-user (binfmt_misc), in turn: the same store and request as the x86_64 rows above; the loader maps the `aarch64-lse` tier (QEMU's default CPU has LSE). Emulation slows both sides, so only the ratio means something; the absolute times say nothing about a real ARM device.\n\n";
        s += "| workload | `limes run` p50 | p99 | native p50 | p99 | `limes run` / native (p50) | runs |\n|---|---|---|---|---|---|---|\n";
        s += &rows;
    }
    s
}

/// Only the serve tables (`--only-serve`).
pub fn serve_markdown(r: &Results) -> String {
    let mut s = format!(
        "# limes serve rows (`limes-bench --only-serve`)\n\n{}\n\n| mode | clients | requests | requests/s | p50 | p99 |\n|---|---|---|---|---|---|\n",
        r.machine.cpu
    );
    for row in &r.serve_load {
        s += &format!("| noop, {} | {} | {} | {:.0} | {} | {} |\n", row.mode, row.clients, row.requests, row.requests_per_s, us(row.p50_us), us(row.p99_us));
    }
    s + &http_section(r)
}

/// The wasi:http comparison table (empty without rows).
fn http_section(r: &Results) -> String {
    if r.http_load.is_empty() {
        return String::new();
    }
    let mut s = String::from("\n## A standard `wasi:http` function: `limes serve` beside `wasmtime serve` (same component, 127.0.0.1, keep-alive clients)\n\nThe component is `packs/http` (built on `wstd`), POST `/echo` with a 4-byte body; `wasmtime serve` runs the same component precompiled by `wasmtime compile` (`--allow-precompiled -S cli`), `limes serve` its signed bundle in 4 worker processes, routed at `/`. Both are measured in this run, taking turns per level.\n\n| server | clients | requests | requests/s | p50 | p99 |\n|---|---|---|---|---|---|\n");
    for row in &r.http_load {
        s += &format!("| {} | {} | {} | {:.0} | {} | {} |\n", row.mode, row.clients, row.requests, row.requests_per_s, us(row.p50_us), us(row.p99_us));
    }
    s
}

/// Log-log line chart of cold start against component size.
pub fn svg(r: &Results) -> String {
    let (w, h, pad) = (640.0, 400.0, 60.0);
    let pts = |f: &dyn Fn(&crate::ScalingRow) -> f64| -> Vec<(f64, f64)> { r.scaling.iter().map(|x| (x.size_bytes as f64, f(x))).collect() };
    let jit = pts(&|x| x.compile_at_load.p50_us);
    let aot = pts(&|x| x.aot.p50_us);
    let all: Vec<(f64, f64)> = jit.iter().chain(aot.iter()).copied().collect();
    if all.is_empty() {
        return String::from("<svg xmlns=\"http://www.w3.org/2000/svg\"/>");
    }
    let (xmin, xmax) = all.iter().fold((f64::MAX, f64::MIN), |a, p| (a.0.min(p.0), a.1.max(p.0)));
    let (ymin, ymax) = all.iter().fold((f64::MAX, f64::MIN), |a, p| (a.0.min(p.1), a.1.max(p.1)));
    let (lx0, lx1) = (xmin.log10().floor(), xmax.log10().ceil().max(xmin.log10().floor() + 1.0));
    let (ly0, ly1) = (ymin.log10().floor(), ymax.log10().ceil().max(ymin.log10().floor() + 1.0));
    let sx = |x: f64| pad + (x.log10() - lx0) / (lx1 - lx0) * (w - 2.0 * pad);
    let sy = |y: f64| h - pad - (y.log10() - ly0) / (ly1 - ly0) * (h - 2.0 * pad);
    let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n");
    let _ = writeln!(s, "<text x=\"{}\" y=\"20\" text-anchor=\"middle\" font-size=\"14\">Cold start vs component size (log-log, p50)</text>", w / 2.0);
    for e in lx0 as i32..=lx1 as i32 {
        let x = sx(10f64.powi(e));
        let _ = writeln!(
            s,
            "<line x1=\"{x}\" y1=\"{}\" x2=\"{x}\" y2=\"{}\" stroke=\"#ddd\"/><text x=\"{x}\" y=\"{}\" text-anchor=\"middle\">1e{e} B</text>",
            pad,
            h - pad,
            h - pad + 16.0
        );
    }
    for e in ly0 as i32..=ly1 as i32 {
        let y = sy(10f64.powi(e));
        let _ = writeln!(
            s,
            "<line x1=\"{pad}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{}\" text-anchor=\"end\">1e{e} µs</text>",
            w - pad,
            pad - 4.0,
            y + 4.0
        );
    }
    for (pts, color, label, ly) in [(&jit, "#c0392b", "compile-at-load (study)", 40.0), (&aot, "#2471a3", "AOT map + instantiate + call", 56.0)] {
        let path: Vec<String> = pts.iter().map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y))).collect();
        let _ = writeln!(s, "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>", path.join(" "));
        for &(x, y) in pts.iter() {
            let _ = writeln!(s, "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{color}\"/>", sx(x), sy(y));
        }
        let _ = writeln!(s, "<text x=\"{}\" y=\"{ly}\" fill=\"{color}\">{label}</text>", pad + 10.0);
    }
    s += "</svg>\n";
    s
}

pub fn write_all(out: &Path, r: &Results) -> Result<()> {
    std::fs::write(out.join("results.json"), serde_json::to_vec_pretty(r)?)?;
    let mut csv = String::from("workload,method,phase,n,p50_us,p99_us,min_us,max_us,mean_us\n");
    for x in &r.rows {
        let _ = writeln!(
            csv,
            "{},{},{},{},{:.1},{:.1},{:.1},{:.1},{:.1}",
            x.workload, x.method, x.phase, x.stats.n, x.stats.p50_us, x.stats.p99_us, x.stats.min_us, x.stats.max_us, x.stats.mean_us
        );
    }
    std::fs::write(out.join("results.csv"), csv)?;
    std::fs::write(out.join("report.md"), markdown(r))?;
    std::fs::write(out.join("scaling.svg"), svg(r))?;
    Ok(())
}
