//! `limes serve`: a long-running HTTP front for installed functions.
//!
//! `POST /functions/{name}` invokes `name` on a fresh instance (from its
//! `InstancePre`) with the request body as input; request headers and query
//! parameters become metadata. A faulty function (trap, timeout, memory
//! limit) yields an error response and never takes the server down.
//! `GET /healthz` answers while the server runs; `GET /metrics` exposes
//! counters and cold/warm latency histograms in Prometheus text format.
//!
//! Hostile clients are bounded: connections are capped (over the cap a
//! client gets an immediate 503), headers and bodies must arrive within
//! their deadlines, the function and the declared size are checked before
//! a byte of the body is read, and bodies being read share a byte budget,
//! so memory stays bounded whatever clients send.
//!
//! Here: the options and their defaults, the server's state, and the accept
//! loop. [`http`]: routes, bodies, one request's span; [`exec`]: calling
//! the workers or microVMs; [`auto`]: the `--auto` policy; [`follow`]:
//! following the store; [`metrics`]: `/metrics`.
//! Must not touch: the store's files other than through [`crate::store`].

mod auto;
mod exec;
mod follow;
mod http;
mod metrics;

use crate::args::escape_log;
use auto::*;
use exec::*;
use follow::*;
use http::*;
use metrics::*;

use crate::exec::pool::{CallError, Pool, Target, WorkerSpec};
use crate::load::LoadMode;
use crate::runtime::{FunctionSpec, InvokeOptions, LoadedFunction, RunError, Runtime, RuntimeOptions};
use crate::store::Store;
use crate::ErrorKind;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    /// Functions to serve (empty: every installed function).
    pub functions: Vec<String>,
    /// Invocations running at once; more wait up to `queue_timeout`.
    pub concurrency: usize,
    pub queue_timeout: Duration,
    /// Largest request body accepted (also capped by each manifest).
    pub max_body: usize,
    /// Overrides each manifest's wall-time limit.
    pub timeout: Option<Duration>,
    pub dirs: Vec<(String, PathBuf)>,
    /// Open connections at once (also kept below the open-file limit).
    pub max_connections: usize,
    /// A request's headers must arrive within this.
    pub header_timeout: Duration,
    /// A request's body must arrive within this.
    pub body_timeout: Duration,
    /// Bytes of request bodies being received at once, over all requests.
    /// A body holds only what has arrived of it, and one client address at
    /// most a quarter ([`CLIENT_SHARE`]).
    pub body_budget: usize,
    /// A body must arrive at this many bytes per second on average, after
    /// [`BODY_RATE_GRACE`] (else 408): a client dripping a byte a second
    /// cannot hold a request open until the body deadline.
    pub min_body_rate: u64,
    /// Pre-warmed worker processes per function.
    pub workers: usize,
    /// Functions get `workers` processes of their own while all of them
    /// together need at most this many; beyond it they share one pool
    /// (`shared_workers`), which loads any function on demand.
    pub max_dedicated_workers: usize,
    /// Size of the shared pool.
    pub shared_workers: usize,
    /// Loaded functions a shared worker keeps (least recently used out).
    pub worker_cache: usize,
    /// The `limes` executable workers run [default: this executable].
    pub worker_exe: Option<crate::exec::pool::WorkerExe>,
    /// Run functions inside the server process instead of in workers: the
    /// previous design, kept for benchmark comparisons only. Compiled code
    /// has no epoch checks, so deadlines are NOT enforced in this mode.
    pub in_process: bool,
    /// Functions served from their microVM image instead of as Wasm.
    pub microvm_functions: Vec<String>,
    /// Functions served by both backends, each request routed to the one
    /// with the lower measured latency (see `AutoRouter`).
    pub auto_functions: Vec<String>,
    /// Pre-booted VMs kept per microVM function.
    pub vm_pool: usize,
    /// How microVMs boot (kernel, acceleration, boot limit); the call limit
    /// is each function's.
    pub vm: crate::microvm::VmOptions,
    /// What every load checks signatures against (none: nothing loads).
    pub anchors: crate::trust::Anchors,
    /// Extra routes: a path prefix served by a function (`/` serves one
    /// function at the root, as `wasmtime serve` does). The longest
    /// matching prefix wins; `/functions/...`, `/healthz` and `/metrics`
    /// keep their meaning.
    pub routes: Vec<Route>,
}

/// `PREFIX=NAME` of `limes serve --route`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Starts with `/`, no trailing `/` except for the root itself.
    pub prefix: String,
    pub function: String,
}

impl std::str::FromStr for Route {
    type Err = String;
    fn from_str(s: &str) -> Result<Route, String> {
        let (prefix, function) = s.split_once('=').ok_or_else(|| format!("{s:?}: expected PREFIX=NAME, e.g. /=hello or /api=hello"))?;
        if !prefix.starts_with('/') || prefix.contains(['?', '#', '{', '}', '*']) {
            return Err(format!("{prefix:?}: a route prefix is a path starting with `/`"));
        }
        if !limes_bundle::manifest::is_name(function) {
            return Err(format!("{function:?} is not a function name"));
        }
        let prefix = if prefix.len() > 1 { prefix.trim_end_matches('/') } else { prefix };
        Ok(Route { prefix: prefix.to_string(), function: function.to_string() })
    }
}

impl Route {
    /// The path below this route's prefix (`/` for the prefix itself), when
    /// `path` is at or below it (on a segment boundary).
    pub fn below<'a>(&self, path: &'a str) -> Option<&'a str> {
        if self.prefix == "/" {
            return Some(path);
        }
        let rest = path.strip_prefix(self.prefix.as_str())?;
        match rest {
            "" => Some("/"),
            r if r.starts_with('/') => Some(r),
            _ => None,
        }
    }
}

/// Every default of `limes serve`, once: `ServeOptions::default()` and the
/// CLI's flags both take them from here.
pub mod defaults {
    pub const LISTEN: &str = "127.0.0.1:8080";
    pub const CONCURRENCY: usize = 16;
    pub const QUEUE_TIMEOUT_MS: u64 = 5000;
    pub const MAX_BODY: usize = 32 << 20;
    pub const MAX_CONNECTIONS: usize = 1024;
    pub const HEADER_TIMEOUT_MS: u64 = 10_000;
    pub const BODY_TIMEOUT_MS: u64 = 30_000;
    pub const BODY_BUDGET_MIB: usize = 256;
    /// Bytes per second, on average after the first 2 s of a body.
    pub const MIN_BODY_RATE: u64 = 4 << 10;
    pub const WORKERS: usize = 4;
    /// 8 functions with 4 workers each; a store with more shares
    /// [`SHARED_WORKERS`] (see docs/density.md for the measurements).
    pub const MAX_DEDICATED_WORKERS: usize = 32;
    pub const SHARED_WORKERS: usize = 4;
    pub const WORKER_CACHE: usize = 32;
    pub const VM_POOL: usize = 2;
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            listen: defaults::LISTEN.parse().expect("the default address parses"),
            functions: Vec::new(),
            concurrency: defaults::CONCURRENCY,
            queue_timeout: Duration::from_millis(defaults::QUEUE_TIMEOUT_MS),
            max_body: defaults::MAX_BODY,
            timeout: None,
            dirs: Vec::new(),
            max_connections: defaults::MAX_CONNECTIONS,
            header_timeout: Duration::from_millis(defaults::HEADER_TIMEOUT_MS),
            body_timeout: Duration::from_millis(defaults::BODY_TIMEOUT_MS),
            body_budget: defaults::BODY_BUDGET_MIB << 20,
            min_body_rate: defaults::MIN_BODY_RATE,
            workers: defaults::WORKERS,
            max_dedicated_workers: defaults::MAX_DEDICATED_WORKERS,
            shared_workers: defaults::SHARED_WORKERS,
            worker_cache: defaults::WORKER_CACHE,
            worker_exe: None,
            in_process: false,
            microvm_functions: Vec::new(),
            auto_functions: Vec::new(),
            vm_pool: defaults::VM_POOL,
            vm: crate::microvm::VmOptions::default(),
            anchors: crate::trust::Anchors::from_keys(Default::default()),
            routes: Vec::new(),
        }
    }
}

/// What runs a function's requests.
enum Executor {
    /// Worker processes of its own (the default for a few functions).
    Workers(Arc<Pool>),
    /// The shared workers (a store of many functions).
    Shared(Arc<Pool>),
    /// This process (benchmark comparisons only: no deadlines).
    InProcess(LoadedFunction),
    /// Pre-booted microVMs, one request each.
    MicroVm(Arc<crate::microvm::pool::VmPool>),
    /// Both, chosen per request by measured latency.
    Auto { wasm: Arc<Pool>, vm: Arc<crate::microvm::pool::VmPool>, router: std::sync::Mutex<AutoRouter> },
}

struct Served {
    spec: FunctionSpec,
    exec: Executor,
    /// The store object it was loaded from (a change means a new install).
    object: String,
    version: String,
    /// Invocations so far: the first after a load is the cold one (pages of
    /// code and data faulted in).
    served: AtomicU64,
    /// Requests that failed on the function's side (a 5xx other than 503
    /// busy: traps, timeouts, memory limits, error answers), for the sync
    /// agent's post-switch watch (see [`crate::store::SERVE_STATE`]).
    failed: AtomicU64,
}

struct AppState {
    /// Only in the in-process mode.
    runtime: Option<Runtime>,
    worker_exe: crate::exec::pool::WorkerExe,
    /// The shared workers, started when the first function needs them.
    shared: tokio::sync::OnceCell<Arc<Pool>>,
    store_root: PathBuf,
    functions: Arc<std::sync::RwLock<HashMap<String, Arc<Served>>>>,
    metrics: Metrics,
    permits: Semaphore,
    /// In KiB, so that any body size fits a permit count.
    body_budget: Semaphore,
    /// KiB of the body budget held per client address (see [`CLIENT_SHARE`]).
    client_kib: std::sync::Mutex<HashMap<std::net::IpAddr, usize>>,
    opts: ServeOptions,
    started: Instant,
    /// Request ids for the logs.
    next_request: AtomicU64,
    /// The last state written for `limes list`.
    published: std::sync::Mutex<Vec<u8>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Load(#[from] crate::load::LoadError),
    #[error(transparent)]
    Pool(#[from] crate::exec::pool::PoolError),
    #[error(transparent)]
    MicroVm(#[from] crate::microvm::VmError),
    #[error("cannot listen on {addr}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
}

impl ServeError {
    pub fn kind(&self) -> crate::ErrorKind {
        match self {
            ServeError::Store(s) => s.kind(),
            ServeError::Run(r) => r.kind(),
            ServeError::Load(l) => l.kind(),
            ServeError::Pool(p) => p.kind(),
            ServeError::MicroVm(v) => v.kind(),
            ServeError::Bind { .. } | ServeError::Io(_) => crate::ErrorKind::Other,
        }
    }
}

/// The most of the body budget one client address may hold, as a fraction.
pub const CLIENT_SHARE: usize = 4;

/// How long a body may take before [`ServeOptions::min_body_rate`] applies.
pub const BODY_RATE_GRACE: Duration = Duration::from_secs(2);

/// Load the functions and serve until `shutdown` resolves (then finish the
/// requests in flight). `on_ready` gets the bound address.
pub async fn serve(
    store: &Store,
    opts: ServeOptions,
    on_ready: impl FnOnce(SocketAddr, &[String]),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let runtime =
        if opts.in_process { Some(Runtime::new(&RuntimeOptions { max_instances: opts.concurrency as u32 + 1, ..Default::default() })?) } else { None };
    let worker_exe = match &opts.worker_exe {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.into(),
    };
    let body_budget = Semaphore::new((opts.body_budget / 1024).max(1));
    let functions = Arc::new(std::sync::RwLock::new(HashMap::new()));
    let app = Arc::new(AppState {
        runtime,
        worker_exe,
        shared: tokio::sync::OnceCell::new(),
        store_root: store.root().to_path_buf(),
        metrics: Metrics::new(functions.clone(), store.root().to_path_buf()),
        functions,
        permits: Semaphore::new(opts.concurrency.max(1)),
        body_budget,
        client_kib: Default::default(),
        opts,
        started: Instant::now(),
        next_request: AtomicU64::new(1),
        published: std::sync::Mutex::new(Vec::new()),
    });
    // What is installed now must load: a store that fails verification stops
    // the server here (later changes are followed, and a bad one is logged
    // and not served).
    reconcile(&app, true).await?;
    publish_state(&app);
    let listener = tokio::net::TcpListener::bind(app.opts.listen).await.map_err(|source| ServeError::Bind { addr: app.opts.listen, source })?;
    let addr = listener.local_addr()?;
    let max_connections = app.opts.max_connections.min(connection_ceiling()).max(1);
    let header_timeout = app.opts.header_timeout;
    // The live store: installs and removals are picked up by polling the
    // records (cheap: a directory listing and a few small files), and at
    // once on SIGHUP.
    let follower = {
        let app = app.clone();
        tokio::spawn(async move {
            let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            // A poll that finds nothing changed costs two `stat`s, not a
            // read of every record (a thousand functions cost 6% of a core
            // when every poll read them all).
            let mut seen = StoreSeen::now(&app);
            let mut checked = Instant::now();
            let mut published_at = u64::MAX;
            loop {
                let forced = tokio::select! {
                    _ = tokio::time::sleep(STORE_POLL) => false,
                    Some(_) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                        tracing::info!("SIGHUP: reloading the store");
                        true
                    }
                };
                let now = StoreSeen::now(&app);
                let changed = forced || now.is_none() || now != seen || checked.elapsed() >= FULL_RECHECK;
                if changed {
                    checked = Instant::now();
                    match reconcile(&app, false).await {
                        Ok(()) => seen = now,
                        Err(e) => {
                            seen = None;
                            tracing::error!(error = %e, "following the store failed");
                        }
                    }
                }
                // What is published moves only with answers.
                let answers: u64 = app.functions.read().unwrap().values().map(|f| f.served.load(Ordering::Relaxed) + f.failed.load(Ordering::Relaxed)).sum();
                if changed || answers != published_at {
                    published_at = answers;
                    publish_state(&app);
                }
            }
        })
    };
    let mut served: Vec<String> = app.functions.read().unwrap().keys().cloned().collect();
    served.sort();
    let router = Router::new()
        // GET: an empty body (a function that needs no input, from a browser).
        // Any method: a wasi:http function takes them all (a limes function
        // POST, or GET with an empty body; others get 405).
        .route("/functions/{name}", any(invoke))
        .route("/functions/{name}/{*rest}", any(invoke_below))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback(invoke_routed)
        .with_state(app);
    on_ready(addr, &served);
    accept_loop(listener, router, max_connections, header_timeout, shutdown).await;
    follower.abort();
    Ok(())
}

/// Raise the soft open-file limit to the hard one and return how many
/// connections fit under it (room is kept for the store, logs and workers),
/// so that accepting never fails for want of descriptors.
fn connection_ceiling() -> usize {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit { rlim_cur: lim.rlim_max.min(1 << 20), rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = raised.rlim_cur;
            }
        }
    }
    (lim.rlim_cur as usize).saturating_sub(128).max(16)
}

/// Accept connections until `shutdown`, each served by hyper with a header
/// deadline; over `max_connections` a client is answered 503 and closed.
/// On shutdown, connections finish their request in flight and close.
async fn accept_loop(
    listener: tokio::net::TcpListener,
    router: Router,
    max_connections: usize,
    header_timeout: Duration,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    use tokio::io::AsyncWriteExt;
    let slots = Arc::new(Semaphore::new(max_connections));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors or a connection reset before accept:
                    // pause instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        while tasks.try_join_next().is_some() {}
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tasks.spawn(async move {
                let mut stream = stream;
                let body = "{\"error\":\"too many open connections; retry later\",\"kind\":\"busy\"}\n";
                let busy = format!(
                    "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                // Answer, then close gracefully: send FIN and drain what the
                // client already sent, or the kernel resets the connection
                // and the client may never read the 503.
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    use tokio::io::AsyncReadExt;
                    stream.write_all(busy.as_bytes()).await?;
                    stream.shutdown().await?;
                    let mut sink = [0u8; 4096];
                    let mut drained = 0;
                    while drained < 64 << 10 {
                        match stream.read(&mut sink).await? {
                            0 => break,
                            n => drained += n,
                        }
                    }
                    Ok::<(), std::io::Error>(())
                })
                .await;
            });
            continue;
        };
        // Each request learns its client's address (the body budget's
        // per-client share).
        let client = ClientAddr(peer.ip());
        let svc = TowerToHyperService::new(tower::ServiceExt::map_request(router.clone(), tag_client(client)));
        let mut stop = stop_rx.clone();
        tasks.spawn(async move {
            let _slot = slot;
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder.http1().timer(TokioTimer::new()).header_read_timeout(header_timeout).max_buf_size(64 << 10);
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
}
