use super::{CargoFlags, CrateArgs};
use crate::ui::Ui;
use anyhow::Context;
use clap::Args;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// Build the function and run it once, locally: the edit-run loop.
///
/// Builds a development bundle with only this host's best CPU tier and no
/// microVM image, into `target/limes/dev/` (so it never replaces what
/// `limes-pack build` writes); it is unsigned unless --sign is given, and
/// never installed: the code it runs was compiled by this process a moment
/// ago. The response goes to stdout, the function's own output to stderr.
/// Exits 4 when the function answers with an error, 5 when it traps, times
/// out or runs out of memory. With --watch, every change under the crate
/// (outside target/) rebuilds and reruns it.
#[derive(Args)]
#[command(
    after_help = "Examples:\n  limes-pack run hello --data world\n  limes-pack run render --data output=checksum --watch\n  limes-pack run image --input photo.jpg > out.jpg"
)]
pub struct RunCommand {
    #[command(flatten)]
    krate: CrateArgs,
    #[command(flatten)]
    cargo: CargoFlags,
    #[command(flatten)]
    request: limes_runtime::args::RequestArgs,
    /// Bind a declared preopen to a host directory: `NAME=PATH` (repeatable).
    #[arg(long, value_name = "NAME=PATH", value_parser = limes_runtime::args::parse_dir)]
    dir: Vec<(String, PathBuf)>,
    /// Wall-time limit in ms [default: the crate's `timeout-ms`].
    #[arg(long, value_name = "MS")]
    timeout_ms: Option<u64>,
    /// Memory limit in MiB [default: the crate's `memory-limit-mib`].
    #[arg(long, value_name = "MIB")]
    memory_limit_mib: Option<u64>,
    /// Rebuild and rerun on every change to the crate's files, until Ctrl-C.
    #[arg(long)]
    watch: bool,
}

/// Exit codes shared with `limes run`.
use limes_runtime::error::EXIT_FUNCTION_ERROR;

/// Set for the runs `--watch` starts (each ends its body with a newline).
const WATCH_CHILD: &str = "LIMES_PACK_WATCH_CHILD";

impl RunCommand {
    pub fn execute(self, ui: &Ui) -> anyhow::Result<std::process::ExitCode> {
        if self.watch {
            return self.watch_loop();
        }
        self.run_once(ui)
    }

    fn run_once(&self, ui: &Ui) -> anyhow::Result<std::process::ExitCode> {
        let location = self.krate.location();
        let project = limes_build::Project::discover(&location, self.krate.package.as_deref(), &self.cargo.options(true).global_flags())?;
        let tier = limes_bundle::profile::Tier::best_for_host().context("no CPU tier fits this host")?;
        let t = Instant::now();
        let opts = super::dev_build_options(&self.krate, &self.cargo, ui, tier.name, project.target_dir.join("limes").join("dev"));
        let out = limes_build::pipeline::build_project(project, &opts, ui)?;
        let build_time = t.elapsed();
        let artifact = out.aot.first().context("the build produced no precompiled tier")?;

        let req = self.request.request()?;
        let invoke = limes_runtime::runtime::InvokeOptions {
            dirs: self.dir.clone(),
            timeout: self.timeout_ms.map(Duration::from_millis),
            memory_limit: self.memory_limit_mib.map(|m| m << 20),
            ..Default::default()
        };
        let rt =
            limes_runtime::Runtime::new(&limes_runtime::RuntimeOptions { pooling: false, max_instances: 1, interfaces: limes_runtime::Interfaces::Imported })?;
        let spec = limes_runtime::runtime::FunctionSpec::from_manifest(&out.manifest);
        // SAFETY: these bytes were compiled by this process, moments ago,
        // from the component it built; they never left its memory.
        let loaded = unsafe { rt.load_precompiled_bytes(spec, &artifact.bytes, tier.name) }?;
        let t = Instant::now();
        let json = ui.json;
        // A failed call is reported as every failure is (`Ui::fail`: its
        // kind and exit code, and the JSON document with --json), as the
        // watchdog reports a timeout.
        let inv = limes_runtime::once::invoke(&rt, &loaded, req, &invoke, |timeout| limes_runtime::once::timeout_expiry(json, timeout))?;
        let call_time = t.elapsed();
        if !ui.quiet {
            eprintln!(
                "limes-pack run: {} {} ({}{}): build {} ms, call {} ms",
                out.manifest.function.name,
                out.manifest.function.version,
                tier.name,
                if out.signed_by.is_some() { ", signed" } else { ", unsigned dev build" },
                build_time.as_millis(),
                call_time.as_millis()
            );
        }
        // The same document as `limes run --json`.
        if ui.json {
            let timings = serde_json::json!({"backend": "wasm", "tier": tier.name, "jit": false,
                "build_us": build_time.as_micros() as u64, "call_us": call_time.as_micros() as u64});
            limes_runtime::args::print_json(&limes_runtime::args::answer_json(&inv.result, inv.http.as_ref(), timings));
        }
        let code = limes_runtime::once::exit_code(&inv);
        match inv.result {
            Ok(r) => {
                if !ui.json {
                    let mut out = std::io::stdout();
                    out.write_all(&r.body)?;
                    // Under --watch, the next status line starts on a line
                    // of its own.
                    if std::env::var_os(WATCH_CHILD).is_some() && !r.body.ends_with(b"\n") {
                        out.write_all(b"\n")?;
                    }
                    out.flush()?;
                }
                Ok(std::process::ExitCode::from(code))
            }
            Err(e) => {
                eprintln!("function error: {e}");
                Ok(std::process::ExitCode::from(EXIT_FUNCTION_ERROR))
            }
        }
    }

    /// Rerun `limes-pack run` (without --watch) in a child process whenever
    /// the crate's files change: a runaway call ends its child, not the loop.
    fn watch_loop(&self) -> anyhow::Result<std::process::ExitCode> {
        let project = limes_build::Project::discover(&self.krate.location(), self.krate.package.as_deref(), &[])?;
        let root = project.package_dir.clone();
        let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--watch").collect();
        let exe = std::env::current_exe()?;
        let mut seen = None;
        loop {
            let now = newest_change(&root, &project.target_dir);
            if seen != Some(now) {
                if seen.is_some() {
                    eprintln!("limes-pack run --watch: change detected, rebuilding");
                }
                seen = Some(now);
                let status = std::process::Command::new(&exe).args(&args).env(WATCH_CHILD, "1").status().context("starting the run")?;
                eprintln!("limes-pack run --watch: exited {}; watching {} for changes (Ctrl-C stops)", status.code().unwrap_or(-1), root.display());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// The newest modification time under `root`, skipping `target` and
/// hidden directories.
pub(super) fn newest_change(root: &Path, target: &Path) -> SystemTime {
    let mut newest = SystemTime::UNIX_EPOCH;
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            let name = e.file_name();
            if p == target || name == "target" || name.to_string_lossy().starts_with('.') {
                continue;
            }
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(p);
            } else if let Ok(t) = m.modified() {
                newest = newest.max(t);
            }
        }
    }
    newest
}
