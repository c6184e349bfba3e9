use super::Ctx;
use anyhow::Context;
use clap::Args;
use limes::serve::{defaults, serve, ServeOptions};
use limes::Store;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Serve installed functions over HTTP, following the store.
///
/// Functions installed or removed while serve runs are picked up within a
/// quarter second (SIGHUP reloads at once); serve starts on an empty store.
/// Every load checks the function's signature against the trust directory
/// and any --trust keys (keys added to the directory count at once). Each
/// function runs in pre-warmed worker processes; a request past its
/// deadline is answered 504 and its worker replaced.
///
/// `POST /functions/NAME` runs NAME on a fresh instance with the body as
/// input (headers and query parameters become metadata); a wasi:http
/// function gets the whole request at `/functions/NAME/...` (any method,
/// the path below its root, query, headers, body) and answers with its own
/// status and headers; `--route` serves a function at a path of your
/// choice. Outbound HTTP goes only to the origins its manifest lists;
/// `GET /healthz`;
/// `GET /metrics` (Prometheus text: counts by status, cold/warm latency).
/// Prints `listening on ADDR` once ready; SIGINT/SIGTERM stop accepting and
/// finish the requests in flight.
#[derive(Args)]
#[command(
    after_help = "Examples:\n  limes serve --listen 127.0.0.1:8080\n  limes serve --function hello --workers 8 --timeout-ms 2000\n  curl -X POST --data-binary @photo.jpg http://127.0.0.1:8080/functions/image > out.jpg\n  limes serve --route /=hello   # a wasi:http function at the root: curl http://127.0.0.1:8080/any/path"
)]
pub struct ServeCommand {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = defaults::LISTEN)]
    listen: std::net::SocketAddr,
    /// Serve only these functions (repeatable), once installed [default: all installed].
    #[arg(long = "function", value_name = "NAME")]
    functions: Vec<String>,
    /// Invocations running at once.
    #[arg(long, default_value_t = defaults::CONCURRENCY)]
    concurrency: usize,
    /// How long a request may wait for a free instance before 503, in ms.
    #[arg(long, default_value_t = defaults::QUEUE_TIMEOUT_MS)]
    queue_timeout_ms: u64,
    /// Largest request body in bytes (each function's manifest may lower it).
    #[arg(long, default_value_t = defaults::MAX_BODY)]
    max_body: usize,
    /// Wall-time limit per request in ms (overrides the manifests).
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Bind a declared preopen to a host directory: `NAME=PATH` (repeatable).
    #[arg(long, value_name = "NAME=PATH", value_parser = limes::args::parse_dir)]
    dir: Vec<(String, PathBuf)>,
    /// Open connections at once; over it a client gets 503 at once (also
    /// kept below the open-file limit).
    #[arg(long, default_value_t = defaults::MAX_CONNECTIONS)]
    max_connections: usize,
    /// A request's headers must arrive within this many ms.
    #[arg(long, default_value_t = defaults::HEADER_TIMEOUT_MS)]
    header_timeout_ms: u64,
    /// A request's body must arrive within this many ms (else 408).
    #[arg(long, default_value_t = defaults::BODY_TIMEOUT_MS)]
    body_timeout_ms: u64,
    /// MiB of request bodies being received at once, over all requests.
    #[arg(long, default_value_t = defaults::BODY_BUDGET_MIB)]
    body_budget_mib: usize,
    /// Slowest accepted request body, in bytes per second on average after
    /// its first 2 s (else 408): a client that drips its body is cut off
    /// instead of holding a request open until the body deadline.
    #[arg(long, value_name = "BYTES_PER_S", default_value_t = defaults::MIN_BODY_RATE)]
    min_body_rate: u64,
    /// Pre-warmed worker processes per function (each runs one request at a
    /// time; a worker past its deadline is killed and replaced).
    #[arg(long, default_value_t = defaults::WORKERS)]
    workers: usize,
    /// Functions get --workers processes of their own while all of them
    /// together need at most this many; beyond it (a store of many
    /// functions) they share --shared-workers processes that load any
    /// function on first use and keep --worker-cache of them loaded.
    /// 0: always share.
    #[arg(long, value_name = "N", default_value_t = defaults::MAX_DEDICATED_WORKERS)]
    max_dedicated_workers: usize,
    /// Shared worker processes (see --max-dedicated-workers).
    #[arg(long, value_name = "N", default_value_t = defaults::SHARED_WORKERS)]
    shared_workers: usize,
    /// Loaded functions each shared worker keeps.
    #[arg(long, value_name = "N", default_value_t = defaults::WORKER_CACHE)]
    worker_cache: usize,
    /// Benchmarking only: run functions inside the server process (the
    /// previous design). Deadlines are NOT enforced in this mode.
    #[arg(long)]
    in_process: bool,
    /// Serve NAME from its microVM image (repeatable), with pre-booted VMs
    /// waiting at the function's ready frame.
    #[arg(long = "microvm", value_name = "NAME")]
    microvm: Vec<String>,
    /// Serve NAME with both backends (repeatable): each request goes to the
    /// one whose median latency over its last 9 answers is lower; every
    /// 16th request tries the other (the microVM only if one is booted and
    /// waiting), and a try that loses delays the next by 19x its own time;
    /// a switch needs a 10% lead. The choice
    /// and its figures are in /metrics (limes_auto_backend, limes_auto_p50_seconds).
    #[arg(long = "auto", value_name = "NAME")]
    auto: Vec<String>,
    /// Pre-booted VMs kept per microVM function (each answers one request).
    #[arg(long, default_value_t = defaults::VM_POOL)]
    vm_pool: usize,
    /// Kernel for microVM functions [default: embedded in the bundle, else $LIMES_KERNEL].
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// Hardware acceleration for microVMs (see `limes run --help`).
    #[arg(long, value_enum, default_value = "auto")]
    accel: limes::microvm::Accel,
    /// Trusted keys (repeatable) besides the trust directory's: every load,
    /// in the server and in each worker, checks the function's signature.
    #[arg(long, value_name = "KEY|DIR")]
    trust: Vec<PathBuf>,
    /// Also serve function NAME at path PREFIX and below (repeatable):
    /// `--route /=hello` serves hello at the root, as `wasmtime serve`
    /// does; a wasi:http function gets the path below the prefix. The
    /// longest matching prefix wins; /functions/..., /healthz and /metrics
    /// keep their meaning.
    #[arg(long = "route", value_name = "PREFIX=NAME")]
    routes: Vec<limes::serve::Route>,
    /// Log one line per request on stderr (function, backend, status,
    /// latency, request id), whatever the log level.
    #[arg(long)]
    access_log: bool,
}

impl ServeCommand {
    /// Whether the access log is asked for (logging is set up before the
    /// command runs).
    pub fn access_log(&self) -> bool {
        self.access_log
    }

    pub fn execute(self, ctx: &Ctx) -> anyhow::Result<ExitCode> {
        let dirs = self.dir.clone();
        let opts = ServeOptions {
            listen: self.listen,
            functions: self.functions.clone(),
            concurrency: self.concurrency,
            queue_timeout: Duration::from_millis(self.queue_timeout_ms),
            max_body: self.max_body,
            timeout: self.timeout_ms.map(Duration::from_millis),
            dirs,
            max_connections: self.max_connections,
            header_timeout: Duration::from_millis(self.header_timeout_ms),
            body_timeout: Duration::from_millis(self.body_timeout_ms),
            body_budget: self.body_budget_mib << 20,
            min_body_rate: self.min_body_rate,
            workers: self.workers,
            max_dedicated_workers: self.max_dedicated_workers,
            shared_workers: self.shared_workers,
            worker_cache: self.worker_cache,
            worker_exe: None,
            in_process: self.in_process,
            microvm_functions: self.microvm.clone(),
            auto_functions: self.auto.clone(),
            vm_pool: self.vm_pool,
            vm: limes::microvm::VmOptions { kernel: self.kernel.clone(), accel: self.accel, ..Default::default() },
            anchors: limes::trust::Anchors::from_keys(Default::default()),
            routes: self.routes.clone(),
        };
        let routes = self.routes.clone();
        let store = Store::open(&ctx.store)?;
        let opts = ServeOptions { anchors: super::anchors(ctx, &self.trust, &store)?, ..opts };
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
        rt.block_on(async move {
            let shutdown = async {
                let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {},
                    _ = term.recv() => {},
                }
                tracing::info!("shutting down: finishing requests in flight");
            };
            serve(
                &store,
                opts,
                |addr, served| {
                    println!("listening on {addr}");
                    let _ = std::io::stdout().flush();
                    // Where each function answers (stderr: stdout's first line is
                    // the address, which scripts read).
                    if served.is_empty() {
                        eprintln!("no function is installed yet; installs are picked up while serving");
                    }
                    for name in served {
                        eprintln!("  {name}: http://{addr}/functions/{name}");
                    }
                    for r in &routes {
                        eprintln!("  {}: http://{addr}{}{}", r.function, r.prefix, if served.contains(&r.function) { "" } else { " (not installed yet)" });
                    }
                },
                shutdown,
            )
            .await
        })?;
        Ok(ExitCode::SUCCESS)
    }
}
