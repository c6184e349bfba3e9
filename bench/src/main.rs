//! `limes-bench`: the Limes study's comparison, measured in one run on this
//! machine, with our AOT path beside the study's compile-at-load method.
//!
//! Writes `results.json`, `results.csv`, `report.md` and `scaling.svg` to
//! `--out`. `--quick` is a smoke run (few iterations) for CI; it asserts
//! nothing about timings.

mod arm64;
mod density;
mod fleet;
mod process;
mod report;
mod synth;

use anyhow::{Context, Result};
use clap::Parser;
use limes::runtime::{InvokeOptions, RuntimeOptions};
use limes::store::Integrity;
use limes::{LoadMode, Runtime, Store};
use limes_sdk::Request;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(name = "limes-bench", about = "Cold start and execution: compile-at-load vs AOT vs native, in one run")]
struct Args {
    /// Output directory for results and the report.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// Smoke mode: a few iterations of everything (CI).
    #[arg(long)]
    quick: bool,
    /// In-process cold starts per pack (AOT path).
    #[arg(long)]
    runs: Option<usize>,
    /// Executions of each full workload per method.
    #[arg(long)]
    exec_runs: Option<usize>,
    /// Compile-at-load starts per pack (slow: a full Cranelift compile each).
    #[arg(long)]
    compile_runs: Option<usize>,
    /// Whole-process starts (`limes run`, native executables).
    #[arg(long)]
    process_runs: Option<usize>,
    /// microVM boots per workload (boot-to-answer).
    #[arg(long)]
    vm_runs: Option<usize>,
    /// Kernel for the microVM backend [default: $LIMES_KERNEL, else /var/tmp/limes-kernel/vmlinuz].
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Only the serve rows: the wasi:http comparison with `wasmtime serve`
    /// and the no-op under load (a quick check of #24's aims).
    #[arg(long)]
    only_serve: bool,
    /// Only the ARM64 rows: each tier's precompile cost, and the aarch64
    /// loader against native aarch64 builds under qemu-user (#25's aims);
    /// writes arm64.md.
    #[arg(long)]
    only_arm64: bool,
    /// Only the fleet: N devices (store + `limes serve` + `limes sync`) on
    /// one registry through three updates and an outage (#26's aims);
    /// writes fleet.md and fleet.json.
    #[arg(long)]
    only_fleet: bool,
    /// Devices in the fleet run.
    #[arg(long, default_value_t = 50)]
    devices: usize,
    /// Only the whole-process rows: `limes run` (device and glibc builds)
    /// against each reference pack's native executable, and the loader's
    /// floor (`limes --version`), in turn (#27's one-shot aim); writes
    /// process.md.
    #[arg(long)]
    only_process: bool,
    /// Only the scaling rows (AOT cold start against component size), for
    /// profiling with `perf record`; prints them.
    #[arg(long)]
    only_scaling: bool,
    /// Only density: N distinct functions in one store behind one
    /// `limes serve` (memory, warm and cold requests, uniform and Zipf
    /// load) beside dedicated workers on one function (#27's aims);
    /// writes density.md and density.json.
    #[arg(long)]
    only_density: bool,
    /// Functions in the density run [default: 1000; 100 with --quick]. The
    /// full run (no --only-*) ends with the density run too, unless --quick.
    #[arg(long)]
    functions: Option<usize>,
    /// Extra `limes serve` flags for the density run's server (repeatable),
    /// e.g. `--serve-arg=--worker-cache=128`.
    #[arg(long, allow_hyphen_values = true)]
    serve_arg: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub n: usize,
    pub p50_us: f64,
    pub p99_us: f64,
    pub min_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
}

impl Stats {
    /// Statistics of `samples`; an empty set is an error naming `what` (a
    /// loop that measured nothing must say so, not panic or print zeros).
    pub fn of(samples: &[Duration], what: &str) -> anyhow::Result<Stats> {
        anyhow::ensure!(!samples.is_empty(), "no sample was measured for {what}");
        let mut v: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e6).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
        Ok(Stats { n: v.len(), p50_us: q(0.5), p99_us: q(0.99), min_us: v[0], max_us: v[v.len() - 1], mean_us: v.iter().sum::<f64>() / v.len() as f64 })
    }
}

/// One measured quantity.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub workload: String,
    pub method: String,
    /// `cold_start`, `execution` or `total`.
    pub phase: String,
    #[serde(flatten)]
    pub stats: Stats,
}

#[derive(Debug, Clone, Serialize)]
pub struct BuildRow {
    pub pack: String,
    pub cold_build_ms: f64,
    pub no_change_build_ms: f64,
    pub component_bytes: u64,
    pub bundle_bytes: u64,
    pub tiers: Vec<(String, f64, u64)>,
    /// The microVM images built in the same run: the Linux initrd (static
    /// musl /init) and the Hermit unikernel (function + kernel in one ELF).
    pub linux_image_ms: f64,
    pub linux_initrd_bytes: u64,
    /// Hermit image step of a build whose function crate was cleaned first
    /// (kernel and std already cached), and of a no-change build.
    pub hermit_image_ms: f64,
    pub hermit_no_change_ms: f64,
    pub hermit_image_bytes: u64,
    pub hermit_loader_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScalingRow {
    pub size_bytes: u64,
    pub compile_at_load: Stats,
    pub aot: Stats,
}

#[derive(Debug, Clone, Serialize)]
pub struct LoadRow {
    /// `workers` (pre-warmed worker processes, the design) or `in-process`
    /// (the previous design: no deadline enforcement without epochs).
    pub mode: String,
    pub clients: usize,
    pub requests: usize,
    pub requests_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Workers alive after every client dropped its connection with a
    /// request in flight (`workers` mode), of how many the pool keeps.
    pub pool_after_abrupt_stop: Option<(u64, u64)>,
}

/// One function served one way by `limes serve` (one client, sequential).
#[derive(Debug, Clone, Serialize)]
pub struct BackendRow {
    pub workload: String,
    /// `wasm`, `microvm` (pre-booted pool) or `auto`.
    pub mode: String,
    pub requests: usize,
    pub p50_us: f64,
    pub p99_us: f64,
    pub mean_us: f64,
}

#[derive(Debug, Serialize)]
pub struct Results {
    pub machine: report::Machine,
    pub quick: bool,
    pub rows: Vec<Row>,
    pub builds: Vec<BuildRow>,
    pub scaling: Vec<ScalingRow>,
    pub serve_load: Vec<LoadRow>,
    /// The wasi:http component under `wasmtime serve` and `limes serve`.
    pub http_load: Vec<LoadRow>,
    pub backends: Vec<BackendRow>,
    /// Wasm and `auto` serving one workload for a minute.
    pub sustained: Vec<BackendRow>,
    /// Precompile time and size of every tier (both architectures), per pack.
    pub tier_costs: Vec<arm64::TierCostRow>,
    pub notes: Vec<String>,
}

impl Results {
    /// The results of a run of some rows only (`--only-...`): this
    /// machine, nothing else measured.
    fn partial(quick: bool, rows: Vec<Row>, tier_costs: Vec<arm64::TierCostRow>, notes: Vec<String>) -> Results {
        Results {
            machine: report::Machine::read(),
            quick,
            rows,
            builds: Vec::new(),
            scaling: Vec::new(),
            serve_load: Vec::new(),
            http_load: Vec::new(),
            backends: Vec::new(),
            sustained: Vec::new(),
            tier_costs,
            notes,
        }
    }
}

struct Workload {
    name: &'static str,
    pack: &'static str,
    function: &'static str,
    /// The full request (execution) and a trivial one (cold start).
    full: Request,
    light: Request,
    dirs: Vec<(String, PathBuf)>,
    native: fn(Request) -> Result<limes_sdk::Response, limes_sdk::Error>,
}

pub(crate) fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

pub(crate) fn sibling(bin: &str) -> Result<PathBuf> {
    let p = std::env::current_exe()?.parent().unwrap().join(bin);
    anyhow::ensure!(p.is_file(), "{} not found next to limes-bench; build it first (scripts/bench.sh does)", p.display());
    Ok(p)
}

/// Row names of the whole-process `limes run` measurements.
pub(crate) const RUN_STATIC: &str = "aot-process (limes run)";
pub(crate) const RUN_GLIBC: &str = "aot-process (limes run, glibc build)";

/// The device build of the loader: static, for x86_64-unknown-linux-musl,
/// with the same profile as this benchmark (scripts/bench.sh and
/// scripts/test.sh build it).
pub(crate) fn device_loader() -> Result<PathBuf> {
    device_loader_for(limes::DEVICE_TARGET)
}

/// [`device_loader`] for `target` (also the aarch64 device build).
pub(crate) fn device_loader_for(target: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().unwrap();
    let profile = dir.file_name().unwrap();
    let p = dir.parent().unwrap().join(target).join(profile).join("limes");
    anyhow::ensure!(
        p.is_file(),
        "{} not found; build the device loader first: cargo build -p limes --bin limes --target {target} (scripts/bench.sh does)",
        p.display(),
    );
    Ok(p)
}

fn tiny_jpeg() -> Vec<u8> {
    let img = image::RgbImage::from_fn(8, 8, |x, y| image::Rgb([(x * 30) as u8, (y * 30) as u8, 128]));
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90).encode_image(&img).unwrap();
    out
}

/// Remove the function's own crates from the shared Hermit target
/// directory, so the next Hermit build compiles them again (kernel, std and
/// dependencies stay cached, as after a source change).
fn clean_hermit_build(project: &limes_build::Project, pkg: &str) {
    let shim = project.target_dir.join("limes").join("native-shim").join(pkg).join("Cargo.toml");
    if !shim.is_file() {
        return;
    }
    let Ok(home) = limes_build::templates::sdk_home() else { return };
    let _ = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["clean", "--quiet", "--release", "--target", limes_build::hermit::TARGET, "-p", pkg, "-p", &format!("limes-native-{pkg}")])
        .arg("--manifest-path")
        .arg(&shim)
        .arg("--target-dir")
        .arg(limes_build::hermit::target_dir(&home))
        .status();
}

pub(crate) fn time<T>(f: impl FnOnce() -> T) -> (Duration, T) {
    let t = Instant::now();
    let r = f();
    (t.elapsed(), r)
}

/// One request as whole processes take it: the body file, metadata and
/// directories `limes run` is given, and the frame a native executable
/// reads on stdin. Each run starts a process and must succeed.
pub(crate) struct ProcessRequest<'a> {
    function: &'a str,
    body: PathBuf,
    meta: &'a [(String, String)],
    dirs: &'a [(String, PathBuf)],
    frame: Vec<u8>,
}

impl<'a> ProcessRequest<'a> {
    /// Writes the body to `body` (a file `limes run --input` reads).
    pub(crate) fn new(function: &'a str, req: &'a Request, dirs: &'a [(String, PathBuf)], body: PathBuf) -> Result<Self> {
        std::fs::write(&body, &req.body)?;
        let mut frame = Vec::new();
        limes_sdk::frame::write_frame(&mut frame, limes_sdk::frame::REQUEST_MAGIC, &limes_sdk::frame::encode_request(req))?;
        Ok(ProcessRequest { function, body, meta: &req.metadata, dirs, frame })
    }

    /// The native frame-protocol executable `exe` answering the request.
    pub(crate) fn native(&self, exe: &Path) -> Result<Duration> {
        let (t, ok) = time(|| -> Result<bool> {
            use std::io::Write;
            let mut c = Command::new(exe).stdin(Stdio::piped()).stdout(Stdio::null()).spawn().with_context(|| format!("starting {}", exe.display()))?;
            c.stdin.take().unwrap().write_all(&self.frame)?;
            Ok(c.wait()?.success())
        });
        anyhow::ensure!(ok?, "{} failed", exe.display());
        Ok(t)
    }

    /// `limes run` (the loader `exe`) on `store` answering the request.
    pub(crate) fn limes_run(&self, exe: &Path, store: &Path) -> Result<Duration> {
        let mut cmd = Command::new(exe);
        cmd.arg("--store").arg(store).args(["run", self.function, "--input"]).arg(&self.body);
        for (k, v) in self.meta {
            cmd.arg("--meta").arg(format!("{k}={v}"));
        }
        for (n, p) in self.dirs {
            cmd.arg("--dir").arg(format!("{n}={}", p.display()));
        }
        let (t, out) = time(|| cmd.stdout(Stdio::null()).stderr(Stdio::null()).status());
        anyhow::ensure!(out?.success(), "{} run {} failed", exe.display(), self.function);
        Ok(t)
    }
}

/// Build options of a pack signed with the benchmark's key, into `out_dir`.
pub(crate) fn signed_build_options(path: PathBuf, out_dir: PathBuf, key: &limes_bundle::keys::SecretKey) -> limes_build::BuildOptions {
    limes_build::BuildOptions {
        path,
        out_dir: Some(out_dir),
        signing_key: Some(limes_bundle::keys::SecretKey::from_text(&key.to_text(), "bench").unwrap().into()),
        cargo: limes_build::CargoOptions { quiet: true, ..Default::default() },
        ..Default::default()
    }
}

/// Each reference pack's native executable (frame protocol on stdin) for
/// `target` (`None`: this host).
pub(crate) fn native_builds(target: Option<&str>) -> Result<std::collections::BTreeMap<&'static str, PathBuf>> {
    let mut exes = std::collections::BTreeMap::new();
    for pack in ["noop", "mandelbrot", "image"] {
        let project = limes_build::Project::discover(&repo().join("packs").join(pack), None, &[])?;
        exes.insert(pack, limes_build::compile::build_native(&project, target, &limes_build::CargoOptions { quiet: true, ..Default::default() })?);
    }
    Ok(exes)
}

/// Build and install packs/http, then compare `limes serve` with `wasmtime
/// serve` on it (no rows, and a note, without a Wasmtime CLI).
fn http_rows(
    store: &Store,
    keys: &limes_bundle::TrustedKeys,
    key: &limes_bundle::keys::SecretKey,
    work: &std::path::Path,
    q: bool,
    notes: &mut Vec<String>,
) -> Result<Vec<LoadRow>> {
    let Some(wasmtime) = report::wasmtime_cli() else {
        notes.push("no Wasmtime CLI (scripts/fetch-wasmtime.sh, or $LIMES_WASMTIME): the wasi:http comparison with `wasmtime serve` did not run".into());
        return Ok(Vec::new());
    };
    eprintln!("building http");
    let out = limes_build::build(&signed_build_options(repo().join("packs/http"), work.join("out"), key), &limes_build::pipeline::NoProgress)
        .context("building packs/http")?;
    store.install(&out.bundle, keys, limes::store::InstallPolicy { allow_downgrade: true, force: true, ..Default::default() })?;
    report::http_vs_wasmtime(store, &wasmtime, &out.component, work, if q { &[1, 2] } else { &[1, 8, 64] }, if q { 50 } else { 4000 })
}

fn main() -> Result<()> {
    let a = Args::parse();
    let q = a.quick;
    let runs = a.runs.unwrap_or(if q { 20 } else { 1000 });
    let exec_runs = a.exec_runs.unwrap_or(if q { 2 } else { 30 });
    let compile_runs = a.compile_runs.unwrap_or(if q { 2 } else { 20 });
    let process_runs = a.process_runs.unwrap_or(if q { 3 } else { 200 });
    let vm_runs = a.vm_runs.unwrap_or(if q { 1 } else { 5 });
    let kernel =
        a.kernel.clone().or_else(|| std::env::var_os("LIMES_KERNEL").map(PathBuf::from)).unwrap_or_else(|| PathBuf::from("/var/tmp/limes-kernel/vmlinuz"));
    anyhow::ensure!(kernel.is_file(), "no kernel at {} for the microVM backend (scripts/fetch-kernel.sh fetches one)", kernel.display());
    std::fs::create_dir_all(&a.out)?;
    let work = tempfile::tempdir()?;
    let mut notes = Vec::new();
    let mut rows = Vec::new();
    eprintln!("limes-bench: runs={runs} exec_runs={exec_runs} compile_runs={compile_runs} process_runs={process_runs}");

    // --- Build: cold and no-change, per pack; sizes; precompile per tier.
    let key = limes_bundle::keys::SecretKey::generate()?;
    // Loads check signatures against a trust directory outside the store:
    // the benchmark's own, for the servers here and the `limes run`s it spawns.
    let trust = work.path().join("trust");
    std::fs::create_dir(&trust)?;
    let pubkey = trust.join("bench.pub");
    std::fs::write(&pubkey, key.public().to_text())?;
    // No thread has started yet.
    std::env::set_var(limes::trust::TRUST_DIR_ENV, &trust);
    let keys = limes_bundle::TrustedKeys::load(std::slice::from_ref(&pubkey))?;
    let store = Store::open(work.path().join("store"))?;
    let hermit_store = Store::open(work.path().join("store-hermit"))?;
    if a.only_serve {
        let noop = limes_build::build(&signed_build_options(repo().join("packs/noop"), work.path().join("out"), &key), &limes_build::pipeline::NoProgress)?;
        store.install(&noop.bundle, &keys, Default::default())?;
        let http_load = http_rows(&store, &keys, &key, work.path(), q, &mut notes)?;
        let serve_load = report::serve_load(&store, if q { &[1, 2] } else { &[1, 8, 64] }, if q { 50 } else { 4000 }, false)?;
        let results = Results { serve_load, http_load, ..Results::partial(q, Vec::new(), Vec::new(), notes) };
        let md = report::serve_markdown(&results);
        std::fs::write(a.out.join("serve.md"), &md)?;
        println!("{md}");
        return Ok(());
    }
    if a.only_fleet {
        let r = fleet::run(work.path(), &key, &pubkey, a.devices)?;
        let md = fleet::markdown(&r, &report::Machine::read().label(q));
        std::fs::write(a.out.join("fleet.md"), &md)?;
        std::fs::write(a.out.join("fleet.json"), serde_json::to_vec_pretty(&r)?)?;
        println!("{md}");
        return Ok(());
    }
    if a.only_scaling {
        let sizes: &[u64] = if q { &[10_000, 100_000] } else { &[10_000, 100_000, 1_000_000, 10_000_000] };
        let profile = limes_bundle::EngineProfile::default();
        for r in synth::scaling(sizes, &profile, 1, if q { 5 } else { 200 }, work.path())? {
            println!("{} bytes: AOT cold start p50 {:.0} us, p99 {:.0} us", r.size_bytes, r.aot.p50_us, r.aot.p99_us);
        }
        for (size, [de, run, drop]) in synth::breakdown(sizes, &profile, if q { 5 } else { 200 }, work.path())? {
            println!("{size} bytes: deserialize {de:.0} us, instantiate + call {run:.0} us, drop {drop:.0} us (p50 each)");
        }
        return Ok(());
    }
    let density_page = || -> Result<String> {
        let r = density::run(work.path(), &key, &keys, &trust, a.functions.unwrap_or(if q { 100 } else { 1000 }), &a.serve_arg, q)?;
        let md = density::markdown(&r, &report::Machine::read().label(q));
        std::fs::write(a.out.join("density.md"), &md)?;
        std::fs::write(a.out.join("density.json"), serde_json::to_vec_pretty(&r)?)?;
        Ok(md)
    };
    if a.only_density {
        println!("{}", density_page()?);
        return Ok(());
    }
    if a.only_process {
        let rows = process::only(&store, &keys, &key, work.path(), q)?;
        let results = Results::partial(q, rows, Vec::new(), notes);
        let md = report::process_markdown(&results);
        std::fs::write(a.out.join("process.md"), &md)?;
        println!("{md}");
        return Ok(());
    }
    if a.only_arm64 {
        let (tier_costs, rows) = arm64::only(&store, &keys, &key, work.path(), q)?;
        let results = Results::partial(q, rows, tier_costs, notes);
        let md = report::arm64_markdown(&results);
        std::fs::write(a.out.join("arm64.md"), &md)?;
        println!("{md}");
        return Ok(());
    }
    let mut builds = Vec::new();
    let mut components = Vec::new();
    for (dir, pkg) in [("noop", "noop"), ("mandelbrot", "mandelbrot"), ("image", "image-pipeline")] {
        let path = repo().join("packs").join(dir);
        eprintln!("building {dir}");
        // Cold: the function crate itself recompiles (not its dependencies)
        // and no AOT artifact is reused.
        let _ = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["clean", "--quiet", "--release", "--target", "wasm32-wasip2", "-p", pkg])
            .current_dir(repo())
            .status();
        let opts = |no_cache| limes_build::BuildOptions { no_cache, microvm: true, ..signed_build_options(path.clone(), work.path().join("out"), &key) };
        let (cold, out) = time(|| limes_build::build(&opts(true), &limes_build::pipeline::NoProgress));
        let out = out.with_context(|| format!("building {dir}"))?;
        let (warm, again) = time(|| limes_build::build(&opts(false), &limes_build::pipeline::NoProgress));
        anyhow::ensure!(again?.bundle_unchanged, "no-change build rewrote the bundle");
        // The Hermit image of the same function, into its own store (same
        // name and version). Cold for the function's own crate: cleaned
        // from the shared Hermit target directory first.
        let hermit_opts = |no_cache| limes_build::BuildOptions {
            out_dir: Some(work.path().join("out-hermit")),
            image: limes_bundle::manifest::ImageKind::Hermit,
            ..opts(no_cache)
        };
        clean_hermit_build(&out.project, pkg);
        let hermit = limes_build::build(&hermit_opts(false), &limes_build::pipeline::NoProgress).with_context(|| format!("building {dir} for Hermit"))?;
        let hermit_again = limes_build::build(&hermit_opts(false), &limes_build::pipeline::NoProgress)?;
        anyhow::ensure!(hermit_again.bundle_unchanged, "no-change Hermit build rewrote the bundle");
        let size_of = |o: &limes_build::BuildOutput, path: &str| o.manifest.file(path).map(|f| f.size).unwrap_or(0);
        builds.push(BuildRow {
            pack: out.manifest.function.name.clone(),
            cold_build_ms: cold.as_secs_f64() * 1e3,
            no_change_build_ms: warm.as_secs_f64() * 1e3,
            component_bytes: std::fs::metadata(&out.component)?.len(),
            bundle_bytes: out.bundle_size,
            tiers: out.aot.iter().map(|t| (t.tier.name.to_string(), t.compile_time.as_secs_f64() * 1e3, t.size)).collect(),
            linux_image_ms: out.timings.microvm.as_secs_f64() * 1e3,
            linux_initrd_bytes: size_of(&out, limes_bundle::manifest::INITRD_PATH),
            hermit_image_ms: hermit.timings.microvm.as_secs_f64() * 1e3,
            hermit_no_change_ms: hermit_again.timings.microvm.as_secs_f64() * 1e3,
            hermit_image_bytes: size_of(&hermit, limes_bundle::manifest::HERMIT_IMAGE_PATH),
            hermit_loader_bytes: size_of(&hermit, limes_bundle::manifest::HERMIT_LOADER_PATH),
        });
        store.install(&out.bundle, &keys, limes::store::InstallPolicy { allow_downgrade: true, force: true, ..Default::default() })?;
        hermit_store.install(&hermit.bundle, &keys, limes::store::InstallPolicy { allow_downgrade: true, force: true, ..Default::default() })?;
        components.push((out.manifest.function.name.clone(), std::fs::read(&out.component)?));
    }

    // --- Workloads.
    let jpeg = std::fs::read(repo().join("packs/image/testdata/input-1024x768.jpg"))?;
    let images = work.path().join("images");
    std::fs::create_dir_all(&images)?;
    std::fs::write(images.join("in.jpg"), &jpeg)?;
    let img_dirs = vec![("images".to_string(), images.clone())];
    let workloads = vec![
        Workload { name: "noop", pack: "noop", function: "noop", full: Request::new("hello"), light: Request::new("x"), dirs: vec![], native: noop::handle },
        Workload {
            name: "mandelbrot",
            pack: "mandelbrot",
            function: "mandelbrot",
            full: Request::new(""),
            light: Request::new("width=1&height=1"),
            dirs: vec![],
            native: mandelbrot::handle,
        },
        Workload {
            name: "image (body)",
            pack: "image",
            function: "image",
            full: Request::new(jpeg.clone()),
            light: Request::new(tiny_jpeg()),
            dirs: img_dirs.clone(),
            native: image_pipeline::handle,
        },
        Workload {
            name: "image (file)",
            pack: "image",
            function: "image",
            full: Request::new("").with_meta("file", "in.jpg"),
            light: Request::new(tiny_jpeg()),
            dirs: img_dirs.clone(),
            native: |_| unreachable!("native file variant is not measured in-process"),
        },
    ];

    let rt = Runtime::new(&RuntimeOptions { max_instances: 4, ..Default::default() })?;
    let profile = limes_bundle::EngineProfile::default();
    let limes_bin = sibling("limes")?;
    let device_bin = device_loader()?;
    // Each pack's native executable (frame protocol on stdin), the baseline
    // of the whole-process rows.
    let native_exes = native_builds(None)?;
    // ARM64: every tier's precompile cost, one at a time; each pack's native
    // aarch64 build and the aarch64 loader, run under qemu-user below.
    let tier_costs = components.iter().map(|(n, w)| arm64::tier_costs(n, w, &profile, if q { 1 } else { 5 })).collect::<Result<Vec<_>>>()?;
    let arm = if arm64::can_run_aarch64() {
        Some((device_loader_for(limes::DEVICE_TARGET_AARCH64)?, native_builds(Some(limes::DEVICE_TARGET_AARCH64))?))
    } else {
        notes.push("the aarch64 rows were skipped: qemu-user is not registered for aarch64 executables (scripts/setup.sh registers it)".into());
        None
    };
    let anchors = limes::trust::Anchors::load(&[], limes::trust::default_dir(), store.root())?;
    for w in &workloads {
        eprintln!("workload {}", w.name);
        let f = store.get(w.function)?;
        let opts = InvokeOptions { dirs: w.dirs.clone(), ..Default::default() };
        let wasm = &components.iter().find(|(n, _)| n == w.function).unwrap().1;
        let push = |rows: &mut Vec<Row>, method: &str, phase: &str, s: &[Duration]| {
            if !s.is_empty() {
                rows.push(Row { workload: w.name.into(), method: method.into(), phase: phase.into(), stats: Stats::of(s, method).expect("not empty") });
            }
        };

        // Our AOT path, in process: map + link + instantiate (cold start),
        // call (execution). Every start maps the artifact afresh.
        // `limes run` trusts an unchanged install-time stamp; `limes serve`
        // re-hashes the artifact against the signed manifest on every load.
        // Both are measured here, so the cost of re-hashing is on record
        // (cold start = check + map + link + instantiate).
        // And what `limes run` adds before that, taking turns with both: the
        // store lookup (record, object tree, manifest), without and with the
        // manifest's signature checked against the trust directory's keys
        // (every load does the latter since #23).
        let mut cold = Vec::new();
        let mut cold_rehash = Vec::new();
        let mut cold_lookup = Vec::new();
        let mut cold_signed = Vec::new();
        for _ in 0..runs {
            for (integrity, out) in [(Integrity::Stamp, &mut cold), (Integrity::Rehash, &mut cold_rehash)] {
                let t = Instant::now();
                let l = limes::load(&rt, &f, LoadMode::Auto, integrity)?;
                let checked = t.elapsed();
                let inv = rt.invoke(&l, w.light.clone(), &opts)?;
                inv.result.map_err(|e| anyhow::anyhow!("{e}"))?;
                out.push(checked + inv.instantiate_time);
            }
            for (signed, out) in [(false, &mut cold_lookup), (true, &mut cold_signed)] {
                let t = Instant::now();
                let found = if signed { store.load(w.function, &anchors)? } else { store.get(w.function)? };
                let l = limes::load(&rt, &found, LoadMode::Auto, Integrity::Stamp)?;
                let checked = t.elapsed();
                let inv = rt.invoke(&l, w.light.clone(), &opts)?;
                inv.result.map_err(|e| anyhow::anyhow!("{e}"))?;
                out.push(checked + inv.instantiate_time);
            }
        }
        push(&mut rows, "aot-rehash", "cold_start", &cold_rehash);
        push(&mut rows, "aot-lookup", "cold_start", &cold_lookup);
        push(&mut rows, "aot-signature", "cold_start", &cold_signed);
        let mut exec = Vec::new();
        let mut total = Vec::new();
        for _ in 0..exec_runs {
            let (t, inv) = time(|| -> Result<_> {
                let l = limes::load(&rt, &f, LoadMode::Auto, Integrity::Stamp)?;
                Ok(rt.invoke(&l, w.full.clone(), &opts)?)
            });
            let inv = inv?;
            inv.result.map_err(|e| anyhow::anyhow!("{e}"))?;
            exec.push(inv.call_time);
            total.push(t);
        }
        push(&mut rows, "aot-in-process", "cold_start", &cold);
        push(&mut rows, "aot-in-process", "execution", &exec);
        push(&mut rows, "aot-in-process", "total", &total);

        // The study's method: a fresh engine and a full compile per start.
        let mut cold = Vec::new();
        let mut exec = Vec::new();
        let mut total = Vec::new();
        for i in 0..compile_runs {
            let t0 = Instant::now();
            let fresh = Runtime::new(&RuntimeOptions { pooling: false, max_instances: 1, ..Default::default() })?;
            let spec = limes::runtime::FunctionSpec::from_manifest(&f.manifest);
            let l = fresh.load_jit(spec, wasm)?;
            let req = if i % 2 == 0 { w.light.clone() } else { w.full.clone() };
            let inv = fresh.invoke(&l, req, &opts)?;
            inv.result.map_err(|e| anyhow::anyhow!("{e}"))?;
            let start = t0.elapsed() - inv.call_time;
            cold.push(start);
            if i % 2 == 1 {
                exec.push(inv.call_time);
                total.push(t0.elapsed());
            }
        }
        push(&mut rows, "compile-at-load", "cold_start", &cold);
        push(&mut rows, "compile-at-load", "execution", &exec);
        push(&mut rows, "compile-at-load", "total", &total);

        // Native, in process (the same Rust function, no Wasm).
        if !w.name.contains("file") {
            let mut exec = Vec::new();
            for _ in 0..exec_runs.max(3) {
                let (t, r) = time(|| (w.native)(w.full.clone()));
                r.map_err(|e| anyhow::anyhow!("{e}"))?;
                exec.push(t);
            }
            push(&mut rows, "native-in-process", "execution", &exec);
        }

        // Whole processes: `limes run` (AOT) and the native executable.
        let native = (!w.name.contains("file")).then(|| native_exes[w.pack].clone());
        let process = ProcessRequest::new(w.function, &w.full, &w.dirs, work.path().join("body.bin"))?;
        let exes = process::Executables { native: native.as_deref(), device: &device_bin, glibc: &limes_bin };
        let n = process_runs.min(if w.pack == "noop" { usize::MAX } else { exec_runs.max(3) });
        rows.extend(process::rows(w.name, &exes, store.root(), &process, n)?);

        // The same request on an (emulated) ARM64 device.
        if let (Some((loader, exes)), false) = (&arm, w.name.contains("file")) {
            rows.extend(arm64::emulated_rows(loader, &exes[w.pack], store.root(), w.name, &process, arm64::emulated_runs(q, w.pack))?);
        }

        // The microVM images of the same function, Linux and Hermit, in
        // turn: launch to ready frame, request to answer, launch to answer.
        if !w.name.contains("file") {
            let opts = limes::microvm::VmOptions { kernel: Some(kernel.clone()), probe_cache: Some(work.path().join("accel")), ..Default::default() };
            let hermit_f = hermit_store.get(w.function)?;
            for (kind, image) in [("linux", &f), ("hermit", &hermit_f)] {
                let (mut boot, mut exec, mut total) = (Vec::new(), Vec::new(), Vec::new());
                let mut hv = String::new();
                for _ in 0..vm_runs {
                    let o = limes::microvm::run(image, &w.full, &opts)?;
                    o.result.map_err(|e| anyhow::anyhow!("{kind}: {e}"))?;
                    boot.push(o.boot_time);
                    exec.push(o.exec_time);
                    total.push(o.total);
                    hv = o.hypervisor;
                }
                let method = format!("microvm-{kind} ({hv})");
                push(&mut rows, &method, "cold_start", &boot);
                push(&mut rows, &method, "execution", &exec);
                push(&mut rows, &method, "total", &total);
            }
        }
    }

    if rows.iter().any(|r| r.method.contains("qemu-tcg")) {
        notes.push("the microVM rows ran under QEMU TCG (software emulation: this machine's KVM does not run guests), so they measure emulation, not Firecracker on KVM; the study's Firecracker cold starts were 30-95 ms".into());
    }

    // --- Scaling with component size.
    let sizes: &[u64] = if q { &[10_000, 100_000] } else { &[10_000, 100_000, 1_000_000, 10_000_000] };
    let scaling = synth::scaling(sizes, &profile, if q { 2 } else { 5 }, if q { 5 } else { 200 }, work.path())?;

    // --- limes serve under concurrent load.
    let mut serve_load = Vec::new();
    for in_process in [false, true] {
        serve_load.extend(report::serve_load(&store, if q { &[1, 2] } else { &[1, 8, 64] }, if q { 50 } else { 2000 }, in_process)?);
    }

    // --- A standard wasi:http function beside `wasmtime serve`.
    let http_load = http_rows(&store, &keys, &key, work.path(), q, &mut notes)?;

    // --- Backend choice: Wasm workers, pre-booted microVMs, and `auto`,
    // with the default image (Hermit): what `limes-pack build` ships.
    let choice: Vec<(&str, &str, Vec<u8>, usize)> = workloads
        .iter()
        .filter(|w| !w.name.contains("file"))
        // A no-op request takes a third of a millisecond, where the
        // machine's noise moves a median of 30 by a third either way (0.77x
        // and 1.36x in two runs): it gets ten times the requests.
        .map(|w| {
            (
                w.name,
                w.function,
                w.full.body.clone(),
                if q {
                    2
                } else if w.pack == "noop" {
                    300
                } else {
                    30
                },
            )
        })
        .collect();
    let backends = report::backend_choice(&hermit_store, &kernel, &choice, if q { 1 } else { 3 })?;
    let (w, f, body, _) = choice.iter().find(|c| c.1 == "image").expect("the image workload");
    let sustained = report::sustained(&hermit_store, &kernel, w, f, body, if q { 1 } else { 60 })?;

    let results = Results { machine: report::Machine::read(), quick: q, rows, builds, scaling, serve_load, http_load, backends, sustained, tier_costs, notes };
    report::write_all(&a.out, &results)?;
    // --- Density (#27): a thousand functions behind one server, in the
    // same run as the rows above, so the report carries every aim's row
    // from one machine and hour. Also its own page, as --only-density
    // writes it. Left out of the smoke run, which runs --only-density.
    if !q {
        eprintln!("density");
        let md = density_page()?;
        let section: String = md.lines().map(|l| if l.starts_with('#') { format!("#{l}\n") } else { format!("{l}\n") }).collect();
        let mut report = std::fs::read_to_string(a.out.join("report.md"))?;
        report.push('\n');
        report.push_str(&section);
        limes::store::write_atomic(&a.out.join("report.md"), report.as_bytes())?;
    }
    eprintln!("wrote {}", a.out.join("report.md").display());
    println!("{}", std::fs::read_to_string(a.out.join("report.md"))?);
    Ok(())
}
