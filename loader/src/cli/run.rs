use super::{Ctx, EXIT_FUNCTION_ERROR};
use anyhow::{bail, Context};
use clap::Args;
use limes::exec::watchdog::Expiry;
use limes::load::LoadMode;
use limes::runtime::{Interfaces, InvokeOptions, RuntimeOptions};
use limes::store::{InstalledFunction, Integrity};
use limes::{Runtime, Store};
use limes_bundle::TrustedKeys;
use limes_sdk::Request;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Run a function once: an installed NAME, or a BUNDLE file (verified first).
///
/// The response body goes to stdout; the function's own stdout/stderr go to
/// stderr. An error answer from the function (for a wasi:http function, a
/// 5xx status) exits 4; a trap, timeout or memory-limit hit exits 5. A
/// wasi:http function gets --method, --path and --header as its request.
#[derive(Args)]
#[command(
    after_help = "Examples:\n  limes run hello --data world --timings\n  limes run mandelbrot --data output=checksum --json\n  limes run image --input photo.jpg > out.jpg\n  limes run image --meta file=in.jpg --dir images=/srv/images\n  limes run hello-0.1.0.limes --trust limes.pub --data x\n  limes run hello --backend microvm --kernel /boot/vmlinuz --accel tcg\n  limes run http-hello -X PUT --path '/items?id=3' -H 'accept: application/json' --data x --include"
)]
pub struct RunCommand {
    /// Installed function name, or path to a `.limes` bundle.
    target: String,
    #[command(flatten)]
    request: limes::args::RequestArgs,
    /// Bind a declared preopen to a host directory: `NAME=PATH` (repeatable).
    #[arg(long, value_name = "NAME=PATH", value_parser = limes::args::parse_dir)]
    dir: Vec<(String, PathBuf)>,
    /// Trusted keys (repeatable): required to run a bundle file; an installed
    /// function's signature is checked against these and the trust
    /// directory's (see --trust-dir).
    #[arg(long, value_name = "KEY|DIR")]
    trust: Vec<PathBuf>,
    /// Memory limit in MiB (overrides the manifest).
    #[arg(long, value_name = "MIB")]
    memory_limit_mib: Option<u64>,
    /// Wall-time limit in milliseconds (overrides the manifest).
    #[arg(long, value_name = "MS")]
    timeout_ms: Option<u64>,
    /// Compile at load instead of mapping a precompiled tier (needs a loader
    /// built with the `jit` feature).
    #[arg(long)]
    jit: bool,
    /// Print the cold-start breakdown (microseconds) on stderr.
    #[arg(long)]
    timings: bool,
    /// Run as Wasm (precompiled tier, JIT fallback) or boot the bundle's
    /// microVM image (Firecracker when present with a working KVM, else
    /// QEMU -M microvm: KVM if it runs guests, else TCG).
    #[arg(long, value_enum, default_value = "wasm")]
    backend: Backend,
    /// Kernel for the microVM backend [default: embedded in the bundle, else $LIMES_KERNEL].
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// Hardware acceleration for the microVM: `auto` asks KVM once whether it
    /// runs guests (a one-instruction guest, at most a second) and remembers
    /// the answer in the store; `kvm` or `tcg` (software emulation) force it.
    #[arg(long, value_enum, default_value = "auto")]
    accel: limes::microvm::Accel,
    /// microVM boot limit in ms (the function's own limit starts when the
    /// request reaches the booted function).
    #[arg(long, value_name = "MS", default_value_t = 60_000)]
    boot_timeout_ms: u64,
    /// Print a wasi:http function's status and headers on stderr (in
    /// --json they are always in the document).
    #[arg(long)]
    include: bool,
    /// Run NAME's candidate version (staged beside the current one by
    /// `limes sync` or `install --health-check`, not yet switched to).
    #[arg(long, hide = true)]
    candidate: bool,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum, PartialEq, Eq)]
enum Backend {
    Wasm,
    Microvm,
}

/// The JSON answer of `limes run --json` (documented in docs/cli-output.md):
/// the body always as base64, also as text when it is UTF-8.
fn print_result(
    ctx: &Ctx,
    result: Result<limes_sdk::Response, limes_sdk::Error>,
    http: Option<&limes::wasi_http::HttpHead>,
    include: bool,
    timings: serde_json::Value,
    hint: Option<String>,
) -> anyhow::Result<u8> {
    if ctx.json {
        println!("{}", limes::args::answer_json(&result, http, timings));
    }
    match result {
        Ok(resp) => {
            // A wasi:http function answers with a status: a server error
            // (5xx) is the function's failure, as an error answer is.
            let failed = http.is_some_and(|h| h.status >= 500);
            if !ctx.json {
                if let (true, Some(h)) = (include, http) {
                    let mut head = format!("HTTP {}\n", h.status);
                    for (k, v) in &h.headers {
                        head += &format!("{k}: {}\n", limes::args::escape_log(v));
                    }
                    eprint!("{head}");
                }
                std::io::stdout().write_all(&resp.body)?;
                std::io::stdout().flush()?;
            }
            Ok(if failed { EXIT_FUNCTION_ERROR } else { 0 })
        }
        Err(e) => {
            eprintln!("function error: {e}");
            if let (limes_sdk::Error::NotFound(_), Some(h)) = (&e, hint) {
                eprintln!("hint: {h}");
            }
            Ok(EXIT_FUNCTION_ERROR)
        }
    }
}

impl RunCommand {
    fn run_microvm(&self, ctx: &Ctx, store: &Store, f: &InstalledFunction, req: Request, verify: Option<Duration>) -> anyhow::Result<u8> {
        let opts = limes::microvm::VmOptions {
            kernel: self.kernel.clone(),
            boot_timeout: Duration::from_millis(self.boot_timeout_ms),
            timeout: Duration::from_millis(self.timeout_ms.unwrap_or(f.manifest.limits.timeout_ms)),
            accel: self.accel,
            probe_cache: Some(store.root().join("microvm-accel")),
            memory_limit: self.memory_limit_mib.map(|m| m << 20),
            background: false,
        };
        let o = match limes::microvm::run(f, &req, &opts) {
            // A fault of the function, not of booting: same message as Wasm.
            Err(limes::microvm::VmError::Run(e)) => return Err(e.into()),
            r => r.with_context(|| format!("booting the microVM image of {}", f.manifest.function.name))?,
        };
        // The function's output goes to stderr, as a Wasm function's does.
        {
            use std::io::Write;
            let _ = std::io::stderr().write_all(&o.output);
        }
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let us = |d: Duration| d.as_micros() as u64;
        if self.timings {
            eprintln!(
                "timings ({}): {}{}boot {:.1} ms, execution {:.1} ms, total {:.1} ms",
                o.hypervisor,
                o.kvm_probe
                    .map(|p| format!("KVM probe {:.1} ms ({}), ", ms(p.took), if p.runs_guests { "runs guests" } else { "runs no guests: TCG" }))
                    .unwrap_or_default(),
                verify.map(|v| format!("verify {:.1} ms, ", ms(v))).unwrap_or_default(),
                ms(o.boot_time),
                ms(o.exec_time),
                ms(o.total)
            );
        }
        let timings = serde_json::json!({"backend": "microvm", "hypervisor": o.hypervisor, "kvm_probe_us": o.kvm_probe.map(|p| us(p.took)),
            "verify_us": verify.map(us), "boot_us": us(o.boot_time), "execution_us": us(o.exec_time), "total_us": us(o.total)});
        print_result(ctx, o.result, None, false, timings, None)
    }
}

impl RunCommand {
    /// What a run past the function's deadline does as the watchdog ends
    /// the process: the same message, JSON and exit code as any other
    /// fault, and a staged bundle is removed. Decided before the call (the
    /// watchdog's signal handler can only write, remove and exit).
    fn on_timeout(ctx: &Ctx, staging: Option<PathBuf>) -> impl FnOnce(&limes::RunError) -> Expiry {
        let json = ctx.json;
        move |err| {
            let mut expiry = limes::once::timeout_expiry(json, err);
            if let Some(s) = staging {
                // A staging tree whose directory cannot be opened is left
                // to the store's sweep of stale tmp/ entries.
                if let Err(e) = expiry.remove_tree(&s) {
                    tracing::warn!("cannot prepare {} for removal at a timeout: {e}", s.display());
                }
            }
            expiry
        }
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Whole microseconds, for JSON.
fn ius(d: Duration) -> u64 {
    d.as_micros() as u64
}

impl RunCommand {
    /// Run, and return the process's exit code as a number: a one-shot run
    /// ends with `_exit`, which takes one (`ExitCode` has no stable way to
    /// read it back).
    pub fn execute(self, ctx: &Ctx) -> anyhow::Result<u8> {
        let start = Instant::now();
        let req = self.request.request()?;
        let opts = InvokeOptions {
            memory_limit: self.memory_limit_mib.map(|m| m << 20),
            timeout: self.timeout_ms.map(Duration::from_millis),
            dirs: self.dir.clone(),
            leave_to_exit: true,
            ..Default::default()
        };

        let store = Store::open(&ctx.store)?;
        // A bundle file is verified and staged in the store's tmp/ (removed
        // afterwards); a name resolves to an installed, verified object.
        let is_file = std::path::Path::new(&self.target).is_file();
        let t = Instant::now();
        let staged = if is_file {
            if self.trust.is_empty() {
                bail!("running a bundle file needs --trust KEY|DIR (or install it first)");
            }
            let keys = TrustedKeys::load(&self.trust)?;
            Some(store.stage_function(std::path::Path::new(&self.target), &keys).with_context(|| format!("verifying {}", self.target))?)
        } else {
            None
        };
        let f = match &staged {
            Some(s) => s.function().clone(),
            None if self.candidate => store.load_candidate(&self.target, &super::anchors(ctx, &self.trust, &store)?)?,
            None => store.load(&self.target, &super::anchors(ctx, &self.trust, &store)?)?,
        };
        let verify_time = t.elapsed();

        if self.backend == Backend::Microvm {
            if !self.dir.is_empty() {
                anyhow::bail!("--dir binds preopens for Wasm runs; a microVM image has no shared filesystem: send the file as the request body (--input FILE)");
            }
            return self.run_microvm(ctx, &store, &f, req, is_file.then_some(verify_time));
        }
        let t = Instant::now();
        // One instance, once: the on-demand allocator (a pool sized for a
        // server costs more to set up than it saves here; see the benchmark).
        let rt = Runtime::new(&RuntimeOptions {
            pooling: std::env::var_os("LIMES_RUN_POOLING").is_some(),
            max_instances: 1,
            // One component, linked once: define only what it imports.
            interfaces: Interfaces::Imported,
        })?;
        let engine_time = t.elapsed();
        // A one-shot run trusts the install-time hash when the artifact's stamp
        // is unchanged (the store's ownership was checked when it opened), and
        // re-hashes otherwise; `serve` always re-hashes once per load.
        let loaded = limes::load::load(&rt, &f, if self.jit { LoadMode::Jit } else { LoadMode::Auto }, Integrity::Stamp);
        let inv = loaded.map_err(anyhow::Error::from).and_then(|l| {
            let on_timeout = Self::on_timeout(ctx, staged.as_ref().map(|s| s.path().to_path_buf()));
            Ok((limes::once::invoke(&rt, &l, req, &opts, on_timeout)?, l))
        });
        // The mapped artifact stays valid after its file is unlinked.
        drop(staged);
        let (inv, loaded) = inv?;
        let total = start.elapsed();
        let timings = serde_json::json!({
            "backend": "wasm",
            "verify_us": is_file.then(|| ius(verify_time)),
            "engine_us": ius(engine_time),
            "map_us": ius(loaded.load_time),
            "link_us": ius(loaded.link_time),
            "instantiate_us": ius(inv.instantiate_time),
            "call_us": ius(inv.call_time),
            "cold_start_us": ius(loaded.load_time + loaded.link_time + inv.instantiate_time),
            "total_us": ius(total),
            "tier": loaded.tier,
            "jit": loaded.jit,
        });
        if self.timings {
            eprintln!(
                "timings ({}): {}map {:.0} us, link {:.0} us, instantiate {:.0} us, call {:.0} us, cold start {:.0} us, process total {:.0} us",
                loaded.tier.as_deref().unwrap_or("jit"),
                if is_file { format!("verify {:.0} us, ", us(verify_time)) } else { String::new() },
                us(loaded.load_time),
                us(loaded.link_time),
                us(inv.instantiate_time),
                us(inv.call_time),
                us(loaded.load_time + loaded.link_time + inv.instantiate_time),
                us(total)
            );
        }
        // A function that reads a declared preopen and answers not-found
        // may simply not have been given the directory.
        let unbound: Vec<&str> = f.manifest.preopens.iter().map(|p| p.name.as_str()).filter(|n| !opts.dirs.iter().any(|(d, _)| d == n)).collect();
        let hint = (!unbound.is_empty())
            .then(|| format!("{} declares preopen(s) {} that this run did not bind; pass --dir NAME=PATH", f.manifest.function.name, unbound.join(", ")));
        let code = print_result(ctx, inv.result, inv.http.as_ref(), self.include, timings, hint);
        // The process ends next: the kernel frees the mapped code, memories
        // and engine at once, where dropping them would unmap and deregister
        // each piece (a measurable share of a no-op run; see docs/results.md).
        std::mem::forget(loaded);
        std::mem::forget(rt);
        code
    }
}
