//! A thousand functions on one device (#27, item 4).
//!
//! N distinct functions are generated from the no-op pack: each gets its
//! own name and a custom section naming it, so every component, every
//! precompiled artifact and every store object is a file of its own and
//! nothing is shared by accident (compiled here, one tier: the host's).
//! They are installed into one store and served by the real `limes serve`
//! with its defaults, which put a store this size on the shared workers.
//!
//! Beside it, in the same run, the baseline: today's dedicated workers (4
//! per function) serving the plain no-op alone. Measured, taking turns
//! where two things are compared:
//! - memory of the server and its workers (RSS summed, and PSS, which
//!   splits shared pages fairly) after the load;
//! - a warm request (the same function again) against the first request to
//!   a function no worker has loaded, one client;
//! - keep-alive clients spread over all functions, uniform and Zipf (s=1),
//!   against the baseline's clients on its one function.

use crate::report::KeepAlive;
use anyhow::{Context, Result};
use limes_bundle::archive::{self, Source};
use limes_bundle::manifest::{aot_path, COMPONENT_PATH};
use serde::Serialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Serialize)]
pub struct Memory {
    pub processes: usize,
    pub rss_kib: u64,
    pub pss_kib: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub requests: usize,
    pub p50_us: f64,
    pub p99_us: f64,
    pub requests_per_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DensityReport {
    pub functions: usize,
    pub clients: usize,
    /// `limes serve` start to listening, all functions verified.
    pub start_s: f64,
    /// CPU the idle server used (following the store), in % of one core.
    pub idle_cpu_percent: f64,
    /// Generating and installing the functions.
    pub install_s: f64,
    pub memory: Memory,
    /// The baseline: dedicated workers, one function.
    pub baseline_memory: Memory,
    pub warm: Latency,
    pub cold: Latency,
    pub baseline_warm: Latency,
    pub uniform: Latency,
    pub zipf: Latency,
    /// The same clients on one function of the many.
    pub one_of_many: Latency,
    pub baseline_load: Latency,
    /// Extra flags the server ran with (none: the defaults).
    pub serve_args: Vec<String>,
}

/// A `limes serve` child, killed on drop.
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

fn serve(limes: &Path, store: &Path, trust: &Path, extra: &[&str]) -> Result<Server> {
    // Its log (a line per route at start) beside its store.
    let log = std::fs::File::create(store.with_extension("log"))?;
    let mut child = Command::new(limes)
        .arg("--store")
        .arg(store)
        .arg("--trust-dir")
        .arg(trust)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(extra)
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()?;
    let mut out = std::io::BufReader::new(child.stdout.take().context("serve stdout")?);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line)?;
    let addr = line.trim().strip_prefix("listening on ").with_context(|| format!("serve said {line:?}"))?.parse()?;
    // The routes it prints next (a thousand lines) must not fill the pipe.
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    Ok(Server { child, addr })
}

/// CPU seconds (user + system) `pid` has used.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let f: Vec<&str> = stat.rsplit_once(')').context("stat")?.1.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
    // In USER_HZ, which Linux's ABI fixes at 100 on x86 and ARM.
    Ok(ticks / 100.0)
}

/// The process and its children (the workers).
fn memory_of(pid: u32) -> Result<Memory> {
    let mut pids = vec![pid];
    for e in std::fs::read_dir("/proc")?.flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else { continue };
        // pid (comm) state ppid ...: comm may hold spaces, so after the last ')'.
        let ppid = stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().nth(1)).and_then(|s| s.parse::<u32>().ok());
        if ppid == Some(pid) {
            pids.push(p);
        }
    }
    let field = |text: &str, key: &str| -> u64 {
        text.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.split_whitespace().next()).and_then(|v| v.parse().ok()).unwrap_or(0)
    };
    let (mut rss, mut pss) = (0, 0);
    for p in &pids {
        rss += field(&std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default(), "VmRSS:");
        pss += field(&std::fs::read_to_string(format!("/proc/{p}/smaps_rollup")).unwrap_or_default(), "Pss:");
    }
    Ok(Memory { processes: pids.len(), rss_kib: rss, pss_kib: pss })
}

fn latency(lat: Vec<Duration>, wall: Duration) -> Result<Latency> {
    let s = crate::Stats::of(&lat, "density requests")?;
    Ok(Latency { requests: s.n, p50_us: s.p50_us, p99_us: s.p99_us, requests_per_s: s.n as f64 / wall.as_secs_f64() })
}

/// A small deterministic generator (xorshift64*): the same spread every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// `clients` keep-alive clients, `per_client` requests each, to the
/// function `pick` chooses; every answer must be the echo.
fn load(addr: SocketAddr, clients: usize, per_client: usize, pick: impl Fn(&mut Rng) -> String + Sync) -> Result<Latency> {
    let (lat, wall) = load_samples(addr, clients, per_client, pick)?;
    latency(lat, wall)
}

/// [`load`]'s latencies and its wall time.
fn load_samples(addr: SocketAddr, clients: usize, per_client: usize, pick: impl Fn(&mut Rng) -> String + Sync) -> Result<(Vec<Duration>, Duration)> {
    let t = Instant::now();
    let lat = std::thread::scope(|s| -> Result<Vec<Duration>> {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let pick = &pick;
                s.spawn(move || -> Result<Vec<Duration>> {
                    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (c as u64 + 1));
                    let mut conn = KeepAlive::connect(addr)?;
                    let mut lat = Vec::with_capacity(per_client);
                    for _ in 0..per_client {
                        let path = format!("/functions/{}", pick(&mut rng));
                        let t = Instant::now();
                        let status = conn.post(&path, b"ping")?;
                        anyhow::ensure!(status == 200, "status {status} from {path}");
                        lat.push(t.elapsed());
                    }
                    Ok(lat)
                })
            })
            .collect();
        let mut all = Vec::new();
        for h in handles {
            all.extend(h.join().expect("client thread")?);
        }
        Ok(all)
    })?;
    Ok((lat, t.elapsed()))
}

fn name(i: usize) -> String {
    format!("fn{i:04}")
}

/// Generate, sign and install `n` functions into `store`; returns the
/// plain no-op's bundle they were made from.
fn install_many(work: &Path, key: &limes_bundle::keys::SecretKey, store: &limes::Store, keys: &limes_bundle::TrustedKeys, n: usize) -> Result<PathBuf> {
    let tier = limes_bundle::profile::Tier::best_for_host().context("no tier fits this CPU")?;
    let opts = limes_build::BuildOptions {
        tiers: vec![tier.name.to_string()],
        microvm: false,
        ..crate::signed_build_options(crate::repo().join("packs/noop"), work.join("density-build"), key)
    };
    let noop = limes_build::build(&opts, &limes_build::pipeline::NoProgress).context("building packs/noop")?;
    let mut mem = archive::InMemory::default();
    let base = archive::read_bundle(&noop.bundle, &archive::BundleLimits::default(), archive::SignaturePolicy::Unverified, &mut mem)?;
    let component = mem.0.iter().find(|(p, _)| p == COMPONENT_PATH).context("no component")?.1.clone();
    let engine = limes_build::aot::engine_for(&tier, &limes_bundle::EngineProfile::default())?;
    let tier_path = aot_path(tier.name);
    let dir = work.join("density-bundles");
    std::fs::create_dir_all(&dir)?;
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    std::thread::scope(|s| -> Result<()> {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (engine, component, mem, base, tier_path, dir) = (&engine, &component, &mem, &base, &tier_path, &dir);
                s.spawn(move || -> Result<()> {
                    for i in (t..n).step_by(threads) {
                        // A custom section (id 0) naming the function: its own
                        // component, artifact and object.
                        let label = name(i);
                        let mut section = vec![b"limes-bench".len() as u8];
                        section.extend_from_slice(b"limes-bench");
                        section.extend_from_slice(label.as_bytes());
                        let mut wasm = component.clone();
                        wasm.push(0);
                        wasm.push(section.len() as u8);
                        wasm.extend_from_slice(&section);
                        let cwasm = engine.precompile_component(&wasm).map_err(|e| anyhow::anyhow!("{e:#}"))?;
                        let files: Vec<(String, Vec<u8>)> = mem
                            .0
                            .iter()
                            .map(|(p, b)| match p {
                                p if p == COMPONENT_PATH => (p.clone(), wasm.clone()),
                                p if *p == *tier_path => (p.clone(), cwasm.clone()),
                                _ => (p.clone(), b.clone()),
                            })
                            .collect();
                        let sources: Vec<(String, Source<'_>)> = files.iter().map(|(p, b)| (p.clone(), Source::Bytes(b))).collect();
                        let mut m = base.manifest.clone();
                        m.function.name = label.clone();
                        m.files = archive::file_entries(&sources)?;
                        let json = m.to_json();
                        let sig = key.sign(&json, &m.trusted_comment());
                        archive::write_bundle(&dir.join(format!("{label}.limes")), &json, Some(&sig), &sources, m.provenance.source_date_epoch)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().expect("generator thread")?;
        }
        Ok(())
    })?;
    for i in 0..n {
        store.install(&dir.join(format!("{}.limes", name(i))), keys, Default::default()).with_context(|| format!("installing {}", name(i)))?;
    }
    Ok(noop.bundle)
}

pub fn run(
    work: &Path,
    key: &limes_bundle::keys::SecretKey,
    keys: &limes_bundle::TrustedKeys,
    trust: &Path,
    n: usize,
    serve_args: &[String],
    quick: bool,
) -> Result<DensityReport> {
    anyhow::ensure!(n >= 2, "the density run needs at least 2 functions");
    let limes = crate::sibling("limes")?;
    let clients = 8;
    eprintln!("density: generating and installing {n} functions");
    let t = Instant::now();
    let many = limes::Store::open(work.join("density-store"))?;
    let noop = install_many(work, key, &many, keys, n)?;
    let install_s = t.elapsed().as_secs_f64();
    // The baseline store: the plain no-op, alone.
    let one = limes::Store::open(work.join("density-baseline"))?;
    one.install(&noop, keys, Default::default())?;

    eprintln!("density: serving");
    let t = Instant::now();
    let extra: Vec<&str> = serve_args.iter().map(String::as_str).collect();
    let server = serve(&limes, many.root(), trust, &extra)?;
    let start_s = t.elapsed().as_secs_f64();
    let baseline = serve(&limes, one.root(), trust, &[])?;

    // Warm against cold, one client, taking turns: fn0000 again and again,
    // and each time a function nobody has asked for yet.
    let rounds = (n - 1).min(if quick { 40 } else { 300 });
    let mut hot = KeepAlive::connect(server.addr)?;
    let mut base = KeepAlive::connect(baseline.addr)?;
    for _ in 0..20 {
        anyhow::ensure!(hot.post("/functions/fn0000", b"ping")? == 200, "fn0000 did not answer");
        anyhow::ensure!(base.post("/functions/noop", b"ping")? == 200, "the baseline did not answer");
    }
    let (mut warm, mut cold, mut base_warm) = (Vec::new(), Vec::new(), Vec::new());
    let t = Instant::now();
    for i in 1..=rounds {
        let timed = |c: &mut KeepAlive, path: &str, into: &mut Vec<Duration>| -> Result<()> {
            let t = Instant::now();
            let status = c.post(path, b"ping")?;
            anyhow::ensure!(status == 200, "status {status} from {path}");
            into.push(t.elapsed());
            Ok(())
        };
        timed(&mut hot, "/functions/fn0000", &mut warm)?;
        timed(&mut hot, &format!("/functions/{}", name(n - i)), &mut cold)?;
        timed(&mut base, "/functions/noop", &mut base_warm)?;
    }
    let wall = t.elapsed();
    let (warm, cold, baseline_warm) = (latency(warm, wall)?, latency(cold, wall)?, latency(base_warm, wall)?);

    // Load spread over every function, then the baseline's on its one.
    let per_client = if quick { 25 } else { 1000 };
    eprintln!("density: {clients} clients, uniform");
    let uniform = load(server.addr, clients, per_client, |r| name((r.next() % n as u64) as usize))?;
    eprintln!("density: {clients} clients, Zipf");
    let mut cdf = Vec::with_capacity(n);
    let mut acc = 0.0;
    for k in 1..=n {
        acc += 1.0 / k as f64;
        cdf.push(acc);
    }
    let zipf = load(server.addr, clients, per_client, |r| {
        let u = r.unit() * acc;
        name(cdf.partition_point(|c| *c < u).min(n - 1))
    })?;
    // One function of the many against the baseline, taking turns.
    let (mut one_of_many, mut baseline_load) = ((Vec::new(), Duration::ZERO), (Vec::new(), Duration::ZERO));
    for _ in 0..4 {
        for (addr, f, into) in [(server.addr, name(0), &mut one_of_many), (baseline.addr, "noop".to_string(), &mut baseline_load)] {
            let (lat, wall) = load_samples(addr, clients, per_client / 4, |_| f.clone())?;
            into.0.extend(lat);
            into.1 += wall;
        }
    }
    let (one_of_many, baseline_load) = (latency(one_of_many.0, one_of_many.1)?, latency(baseline_load.0, baseline_load.1)?);
    let memory = memory_of(server.child.id())?;
    // Idle after the load: what following a store of this size costs.
    let (c0, t0) = (cpu_seconds(server.child.id())?, Instant::now());
    std::thread::sleep(Duration::from_secs(if quick { 2 } else { 10 }));
    let idle_cpu_percent = (cpu_seconds(server.child.id())? - c0) / t0.elapsed().as_secs_f64() * 100.0;
    let baseline_memory = memory_of(baseline.child.id())?;
    Ok(DensityReport {
        functions: n,
        clients,
        start_s,
        idle_cpu_percent,
        install_s,
        memory,
        baseline_memory,
        warm,
        cold,
        baseline_warm,
        uniform,
        zipf,
        one_of_many,
        baseline_load,
        serve_args: serve_args.to_vec(),
    })
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn row(what: &str, l: &Latency) -> String {
    format!("| {what} | {} | {:.0} | {:.0} | {:.0} |\n", l.requests, l.p50_us, l.p99_us, l.requests_per_s)
}

pub fn markdown(r: &DensityReport, machine: &str) -> String {
    let per_worker = r.baseline_memory.rss_kib / r.baseline_memory.processes.max(1) as u64;
    let mut s = format!(
        "# A thousand functions on one device\n\n{machine}. `limes-bench --only-density --functions {n}`: {n} distinct functions \
         (the no-op, each with its own name and custom section, so its own component, artifact and object), \
         installed into one store and served by `limes serve` with {}. The baseline, in the same run: \
         dedicated workers (today's design, 4 per function) serving the plain no-op alone.\n\n\
         Generating, compiling (one tier) and installing the {n} functions took {:.1} s; `limes serve` was listening \
         {:.2} s after it started, every function verified. Idle after the load, the server used {:.1}% of a core (following the store).\n\n",
        if r.serve_args.is_empty() { "its defaults".to_string() } else { format!("`{}`", r.serve_args.join(" ")) },
        r.install_s,
        r.start_s,
        r.idle_cpu_percent,
        n = r.functions
    );
    s += "## Memory (after the load below)\n\n| server | processes | RSS, summed | PSS |\n|---|---:|---:|---:|\n";
    s += &format!("| {} functions, shared workers | {} | {} | {} |\n", r.functions, r.memory.processes, mib(r.memory.rss_kib), mib(r.memory.pss_kib));
    s += &format!(
        "| baseline: 1 function, dedicated workers | {} | {} | {} |\n",
        r.baseline_memory.processes,
        mib(r.baseline_memory.rss_kib),
        mib(r.baseline_memory.pss_kib)
    );
    s += &format!(
        "\nThe baseline's design for {n} functions (4 workers each, {} per process as measured) would need about {} before \
         serving anything; it was not started.\n\n",
        mib(per_worker),
        mib(per_worker * 4 * r.functions as u64),
        n = r.functions
    );
    s += "## Latency (µs, client side, keep-alive)\n\n| requests | n | p50 | p99 | requests/s |\n|---|---:|---:|---:|---:|\n";
    s += &row("warm: the same function again (1 client, taking turns)", &r.warm);
    s += &row("cold: a function no worker has loaded (1 client, taking turns)", &r.cold);
    s += &row("baseline warm: the no-op on its own workers (1 client, taking turns)", &r.baseline_warm);
    s += &row(&format!("{} clients, uniform over {} functions", r.clients, r.functions), &r.uniform);
    s += &row(&format!("{} clients, Zipf (s=1) over {} functions", r.clients, r.functions), &r.zipf);
    s += &row(&format!("{} clients, one function of the {} (taking turns with the next row)", r.clients, r.functions), &r.one_of_many);
    s += &row(&format!("baseline: {} clients, the no-op on its own workers", r.clients), &r.baseline_load);
    s += &format!(
        "\nCold minus warm p50: {:.0} µs (aim: <= 1000 µs). Requests/s of the one-client rows are over the three \
         interleaved series together.\n",
        r.cold.p50_us - r.warm.p50_us
    );
    s
}
