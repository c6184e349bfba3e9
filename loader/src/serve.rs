//! `limes serve`: a long-running HTTP front for installed functions.
//!
//! `POST /functions/{name}` invokes `name` on a fresh instance (from its
//! `InstancePre`) with the request body as input; request headers and query
//! parameters become metadata. A faulty function (trap, timeout, memory
//! limit) yields an error response and never takes the server down.
//! `GET /healthz` answers while the server runs; `GET /metrics` exposes
//! counters and cold/warm latency quantiles in Prometheus text format.
//!
//! Hostile clients are bounded: connections are capped (over the cap a
//! client gets an immediate 503), headers and bodies must arrive within
//! their deadlines, the function and the declared size are checked before
//! a byte of the body is read, and bodies being read share a byte budget,
//! so memory stays bounded whatever clients send.

use crate::launch::{self, LoadMode};
use crate::pool::{CallError, Pool, WorkerSpec};
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
    /// The `limes` executable workers run [default: this executable].
    pub worker_exe: Option<crate::pool::WorkerExe>,
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

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            listen: "127.0.0.1:8080".parse().unwrap(),
            functions: Vec::new(),
            concurrency: 16,
            queue_timeout: Duration::from_secs(5),
            max_body: 32 << 20,
            timeout: None,
            dirs: Vec::new(),
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            body_budget: 256 << 20,
            min_body_rate: 4 << 10,
            workers: 4,
            worker_exe: None,
            in_process: false,
            microvm_functions: Vec::new(),
            auto_functions: Vec::new(),
            vm_pool: 2,
            vm: crate::microvm::VmOptions::default(),
            anchors: crate::trust::Anchors::from_keys(Default::default()),
            routes: Vec::new(),
        }
    }
}

/// Labels of the request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct RequestLabels {
    function: String,
    status: String,
}

/// Labels of the latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct LatencyLabels {
    function: String,
    phase: String,
}

type LatencyFamily = Family<LatencyLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 50 µs to ~26 s, doubling.
    Histogram::new(exponential_buckets(50e-6, 2.0, 20))
}

/// The server's Prometheus registry (prometheus-client): request counts and
/// latency histograms recorded as requests finish, and the pools' own
/// counters read at scrape time.
struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: LatencyFamily,
    /// Outbound HTTP requests denied by the manifest's allow-list.
    outbound_denied: Family<FunctionLabel, Counter>,
}

/// A label set of just the function.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct FunctionLabel {
    function: String,
}

/// Reads worker replacements and microVM boots from the pools on each scrape.
/// Also reads what `limes sync` recorded per function in the store.
struct PoolCounters(Arc<std::sync::RwLock<HashMap<String, Arc<Served>>>>, PathBuf);

impl std::fmt::Debug for PoolCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PoolCounters")
    }
}

impl prometheus_client::collector::Collector for PoolCounters {
    fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        use prometheus_client::metrics::MetricType::{Counter, Gauge};
        let functions = self.0.read().unwrap().clone();
        let mut names: Vec<&String> = functions.keys().collect();
        names.sort();
        let (mut replaced, mut boots, mut choice, mut p50) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut live, mut queue_timeouts) = (Vec::new(), Vec::new());
        let (mut versions, mut polls, mut rollbacks) = (Vec::new(), Vec::new(), Vec::new());
        let store = Store::open(&self.1).ok();
        for n in names {
            versions.push((n.as_str(), functions[n].version.clone(), ConstGauge::new(1i64)));
            if let Some(st) = store.as_ref().map(|s| crate::sync::state::SyncState::load(s, n)).filter(|st| !st.reference.is_empty()) {
                if let Some(at) = st.last_sync {
                    polls.push((n.as_str(), if st.last_ok { "ok" } else { "error" }.to_string(), ConstGauge::new(at as i64)));
                }
                if let Some(rb) = &st.last_rollback {
                    rollbacks.push((n.as_str(), rb.from.clone(), ConstCounter::new(st.rollbacks)));
                }
            }
            let exec = &functions[n].exec;
            if let Executor::Workers(pool) | Executor::Auto { wasm: pool, .. } = exec {
                for reason in ["timeout", "crash"] {
                    replaced.push((n.as_str(), reason, ConstCounter::new(pool.replaced.lock().unwrap().get(reason).copied().unwrap_or(0))));
                }
                live.push((n.as_str(), "wasm", ConstGauge::new(pool.live.load(Ordering::Relaxed) as i64)));
                queue_timeouts.push((n.as_str(), "wasm", ConstCounter::new(pool.queue_timeouts.load(Ordering::Relaxed))));
            }
            if let Executor::MicroVm(pool) | Executor::Auto { vm: pool, .. } = exec {
                boots.push((n.as_str(), "ok", ConstCounter::new(pool.boots.load(Ordering::Relaxed))));
                boots.push((n.as_str(), "failed", ConstCounter::new(pool.boot_failures.load(Ordering::Relaxed))));
                boots.push((n.as_str(), "faulted", ConstCounter::new(pool.faults.load(Ordering::Relaxed))));
            }
            if let Executor::Auto { router, .. } = exec {
                let r = router.lock().unwrap();
                for b in [Backend::Wasm, Backend::MicroVm] {
                    choice.push((n.as_str(), b.name(), ConstGauge::new(i64::from(r.current == b))));
                    p50.extend(r.p50(b).map(|v| (n.as_str(), b.name(), ConstGauge::new(v))));
                }
            }
        }
        const REPLACED: &str = "Worker processes killed and replaced, by reason (timeout: past its deadline; crash: died or broke the protocol).";
        encode_rows(&mut encoder, "limes_worker_replacements", REPLACED, Counter, "reason", replaced)?;
        encode_rows(&mut encoder, "limes_workers_live", "Worker processes alive (idle or answering), per function.", Gauge, "backend", live)?;
        encode_rows(
            &mut encoder,
            "limes_queue_timeouts",
            "Requests answered 503 because no worker became free within the queue timeout.",
            Counter,
            "backend",
            queue_timeouts,
        )?;
        encode_rows(&mut encoder, "limes_microvm_boots", "microVMs of the pre-booted pool, by outcome (ok: booted; failed: did not boot; faulted: flooded its console or ended unasked, killed and replaced).", Counter, "outcome", boots)?;
        encode_rows(
            &mut encoder,
            "limes_auto_backend",
            "For functions served with --auto: 1 for the backend requests are routed to.",
            Gauge,
            "backend",
            choice,
        )?;
        encode_rows(&mut encoder, "limes_auto_p50_seconds", "For --auto functions: median latency per backend over its recent window.", Gauge, "backend", p50)?;
        encode_rows(&mut encoder, "limes_served_version", "1 for the version each function is served at.", Gauge, "version", versions)?;
        encode_rows(
            &mut encoder,
            "limes_sync_last_poll_timestamp_seconds",
            "When `limes sync` last polled the function's registry tag (Unix seconds), labelled with its result (ok, error).",
            Gauge,
            "result",
            polls,
        )?;
        encode_rows(
            &mut encoder,
            "limes_sync_rollbacks",
            "Automatic and manual rollbacks, labelled with the version the last one left.",
            Counter,
            "from",
            rollbacks,
        )
    }
}

/// One metric family read at scrape time: a value per (function, `label`).
fn encode_rows<V: AsRef<str>, M: prometheus_client::encoding::EncodeMetric>(
    encoder: &mut prometheus_client::encoding::DescriptorEncoder,
    name: &str,
    help: &str,
    kind: prometheus_client::metrics::MetricType,
    label: &str,
    rows: Vec<(&str, V, M)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, kind)?;
    for (function, value, metric) in rows {
        let labels = vec![("function".to_string(), function.to_string()), (label.to_string(), value.as_ref().to_string())];
        metric.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Metrics {
    fn new(functions: Arc<std::sync::RwLock<HashMap<String, Arc<Served>>>>, store_root: PathBuf) -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = LatencyFamily::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register("limes_requests", "Invocations by function and HTTP status.", requests.clone());
        registry.register(
            "limes_request_duration_seconds",
            "Invocation latency (queue + execution); cold is the first invocation after a load.",
            latency.clone(),
        );
        let outbound_denied = Family::<FunctionLabel, Counter>::default();
        registry.register(
            "limes_outbound_denied",
            "Outbound HTTP requests of wasi:http functions denied because their origin is not in the manifest's allowed-outbound-hosts.",
            outbound_denied.clone(),
        );
        registry.register_collector(Box::new(PoolCounters(functions, store_root)));
        Metrics { registry, requests, latency, outbound_denied }
    }
}

/// What runs a function's requests.
enum Executor {
    /// Worker processes (the default).
    Workers(Arc<Pool>),
    /// This process (benchmark comparisons only: no deadlines).
    InProcess(LoadedFunction),
    /// Pre-booted microVMs, one request each.
    MicroVm(Arc<crate::pool::VmPool>),
    /// Both, chosen per request by measured latency.
    Auto { wasm: Arc<Pool>, vm: Arc<crate::pool::VmPool>, router: std::sync::Mutex<AutoRouter> },
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
    /// agent's post-switch watch (see [`SERVE_STATE`]).
    failed: AtomicU64,
}

struct AppState {
    /// Only in the in-process mode.
    runtime: Option<Runtime>,
    worker_exe: crate::pool::WorkerExe,
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
    Load(#[from] launch::LoadError),
    #[error(transparent)]
    Pool(#[from] crate::pool::PoolError),
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

fn error_response(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = format!("{}\n", serde_json::json!({"error": message, "kind": kind}));
    (status, [("content-type", "application/json")], body).into_response()
}

/// The most of the body budget one client address may hold, as a fraction.
pub const CLIENT_SHARE: usize = 4;
/// How long a body may take before [`ServeOptions::min_body_rate`] applies.
pub const BODY_RATE_GRACE: Duration = Duration::from_secs(2);

/// The client's address, set per connection by the accept loop.
#[derive(Clone, Copy)]
struct ClientAddr(std::net::IpAddr);

/// Put `client` into each request of its connection (whatever its body type).
fn tag_client<B>(client: ClientAddr) -> impl Fn(axum::http::Request<B>) -> axum::http::Request<B> + Clone {
    move |mut r| {
        r.extensions_mut().insert(client);
        r
    }
}

/// The part of the body budget (in KiB) one request holds: what has
/// arrived of its body, never what it declared. Given back on drop.
struct BodyReservation<'a> {
    app: &'a AppState,
    client: std::net::IpAddr,
    kib: u32,
}

impl BodyReservation<'_> {
    /// Hold enough for `bytes` received so far. The error is the answer to
    /// send (built once, on a path that ends the request).
    #[allow(clippy::result_large_err)]
    fn grow_to(&mut self, bytes: usize) -> Result<(), Response> {
        let need = bytes.div_ceil(1024).max(1).min(u32::MAX as usize) as u32;
        if need <= self.kib {
            return Ok(());
        }
        let more = need - self.kib;
        let share = (self.app.opts.body_budget / 1024 / CLIENT_SHARE).max(1);
        {
            let mut held = self.app.client_kib.lock().unwrap();
            let h = held.entry(self.client).or_default();
            if *h + more as usize > share {
                return Err(error_response(StatusCode::SERVICE_UNAVAILABLE, "busy", "this client has too many request bodies in flight; retry later"));
            }
            *h += more as usize;
        }
        match self.app.body_budget.try_acquire_many(more) {
            Ok(p) => {
                // Given back by hand in `drop`, with the per-client count.
                p.forget();
                self.kib = need;
                Ok(())
            }
            Err(_) => {
                self.release(more);
                Err(error_response(StatusCode::SERVICE_UNAVAILABLE, "busy", "too many request bodies in flight; retry later"))
            }
        }
    }

    fn release(&self, kib: u32) {
        let mut held = self.app.client_kib.lock().unwrap();
        if let Some(h) = held.get_mut(&self.client) {
            *h = h.saturating_sub(kib as usize);
            if *h == 0 {
                held.remove(&self.client);
            }
        }
    }
}

impl Drop for BodyReservation<'_> {
    fn drop(&mut self) {
        self.release(self.kib);
        self.app.body_budget.add_permits(self.kib as usize);
    }
}

/// Read a request body of at most `limit` bytes within the body deadline
/// and at the minimum rate, holding budget only for what has arrived.
async fn read_body(app: &AppState, client: std::net::IpAddr, mut body: Body, limit: usize) -> Result<Bytes, Response> {
    use http_body_util::BodyExt;
    let started = tokio::time::Instant::now();
    let deadline = started + app.opts.body_timeout;
    let mut reservation = BodyReservation { app, client, kib: 0 };
    let mut buf: Vec<u8> = Vec::new();
    loop {
        // Wake at least once a second to check the rate.
        let wake = deadline.min(tokio::time::Instant::now() + Duration::from_secs(1));
        match tokio::time::timeout_at(wake, body.frame()).await {
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(error_response(StatusCode::BAD_REQUEST, "bad-body", &format!("reading the request body: {e}"))),
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    if buf.len() + data.len() > limit {
                        return Err(error_response(StatusCode::PAYLOAD_TOO_LARGE, "too-large", &format!("body exceeds {limit} bytes")));
                    }
                    reservation.grow_to(buf.len() + data.len())?;
                    buf.extend_from_slice(&data);
                }
            }
            Err(_) => {}
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err(error_response(
                StatusCode::REQUEST_TIMEOUT,
                "body-timeout",
                &format!("the request body did not arrive within {} ms", app.opts.body_timeout.as_millis()),
            ));
        }
        let late = now.duration_since(started).saturating_sub(BODY_RATE_GRACE);
        if (buf.len() as f64) < app.opts.min_body_rate as f64 * late.as_secs_f64() {
            return Err(error_response(
                StatusCode::REQUEST_TIMEOUT,
                "body-too-slow",
                &format!("the request body arrived slower than {} bytes/s", app.opts.min_body_rate),
            ));
        }
    }
    Ok(Bytes::from(buf))
}

/// `/functions/{name}`: the function, at its root.
async fn invoke(State(app): State<Arc<AppState>>, Path(name): Path<String>, request: axum::extract::Request) -> Response {
    dispatch(app, name, "/".to_string(), request).await
}

/// `/functions/{name}/{*rest}`: a `wasi:http` function, below its root.
async fn invoke_below(State(app): State<Arc<AppState>>, Path((name, rest)): Path<(String, String)>, request: axum::extract::Request) -> Response {
    dispatch(app, name, format!("/{rest}"), request).await
}

/// Every other path: the `--route` with the longest matching prefix.
async fn invoke_routed(State(app): State<Arc<AppState>>, request: axum::extract::Request) -> Response {
    let path = request.uri().path().to_string();
    let best = app.opts.routes.iter().filter_map(|r| r.below(&path).map(|below| (r, below))).max_by_key(|(r, _)| r.prefix.len());
    match best {
        Some((r, below)) => dispatch(app.clone(), r.function.clone(), below.to_string(), request).await,
        None => error_response(StatusCode::NOT_FOUND, "no-route", "no function is served at this path (POST /functions/NAME, or a --route)"),
    }
}

async fn dispatch(app: Arc<AppState>, name: String, below: String, request: axum::extract::Request) -> Response {
    // Every log line of a request (its access-log line, the function's own
    // output) carries the request's id.
    let id = app.next_request.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!("request", id, function = %name);
    tracing::Instrument::instrument(invoke_in_span(app, name, below, request, id), span).await
}

/// Headers that describe one hop, not the message (RFC 9110 7.6.1): never
/// forwarded to a function or from it to the client.
const HOP_BY_HOP: &[&str] = &["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"];

fn is_hop_by_hop(name: &str, connection: &HeaderMap) -> bool {
    HOP_BY_HOP.contains(&name)
        || connection.get_all(axum::http::header::CONNECTION).iter().any(|v| v.to_str().unwrap_or("").split(',').any(|t| t.trim().eq_ignore_ascii_case(name)))
}

async fn invoke_in_span(app: Arc<AppState>, name: String, below: String, request: axum::extract::Request, id: u64) -> Response {
    // Nothing of the body is read before the function and the declared size
    // have been checked.
    let found = app.functions.read().unwrap().get(&name).cloned();
    let Some(f) = found else {
        return error_response(StatusCode::NOT_FOUND, "unknown-function", &format!("no function {} is served", limes_bundle::untrusted(&name)));
    };
    let is_http = f.spec.kind == limes_bundle::manifest::WorldKind::WasiHttp;
    if !is_http && below != "/" {
        return error_response(StatusCode::NOT_FOUND, "no-route", &format!("{name} is a limes function: it is served at /functions/{name} only"));
    }
    if !is_http && request.method() != axum::http::Method::POST && request.method() != axum::http::Method::GET {
        return error_response(StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed", "a limes function takes POST (or GET, with an empty body)");
    }
    let limit = (f.spec.limits.max_input_bytes as usize).min(app.opts.max_body);
    let (parts, body) = request.into_parts();
    let client = parts.extensions.get::<ClientAddr>().map(|c| c.0).unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into());
    let headers: HeaderMap = parts.headers;
    let declared = match headers.get(axum::http::header::CONTENT_LENGTH).map(|v| v.to_str().ok().and_then(|s| s.parse::<u64>().ok())) {
        Some(None) => return error_response(StatusCode::BAD_REQUEST, "bad-request", "invalid Content-Length"),
        Some(Some(n)) => Some(n),
        None => None,
    };
    if declared.is_some_and(|n| n > limit as u64) {
        return error_response(StatusCode::PAYLOAD_TOO_LARGE, "too-large", &format!("body of {} bytes exceeds {limit} bytes", declared.unwrap_or(0)));
    }
    // The body holds budget as it arrives (a declared size reserves
    // nothing: a client could declare 32 MiB and send a byte a second).
    let body = match read_body(&app, client, body, limit).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let Ok(permit) = tokio::time::timeout(app.opts.queue_timeout, app.permits.acquire()).await else {
        return error_response(StatusCode::SERVICE_UNAVAILABLE, "busy", "all instances are busy; retry later");
    };
    let permit = permit.expect("semaphore never closes");
    let mut req = limes_sdk::Request::new(body.to_vec());
    req.content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).map(String::from);
    if is_http {
        // The request line as pseudo-headers (see `wasi_http`), then the
        // end-to-end headers.
        use crate::wasi_http::{AUTHORITY, METHOD, PATH, SCHEME};
        let target = match parts.uri.query() {
            Some(q) => format!("{below}?{q}"),
            None => below.clone(),
        };
        let authority = headers.get(axum::http::header::HOST).and_then(|v| v.to_str().ok()).map(String::from).unwrap_or_else(|| app.opts.listen.to_string());
        req.metadata.push((METHOD.into(), parts.method.as_str().to_string()));
        req.metadata.push((PATH.into(), target));
        req.metadata.push((SCHEME.into(), "http".into()));
        req.metadata.push((AUTHORITY.into(), authority));
        for (k, v) in &headers {
            if let (false, Ok(v)) = (is_hop_by_hop(k.as_str(), &headers), v.to_str()) {
                req.metadata.push((k.as_str().to_string(), v.to_string()));
            }
        }
    } else {
        for (k, v) in &headers {
            if let Ok(v) = v.to_str() {
                req.metadata.push((k.as_str().to_ascii_lowercase(), v.to_string()));
            }
        }
        let query = axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&parts.uri).map(|q| q.0).unwrap_or_default();
        for (k, v) in query {
            req.metadata.push((k.to_ascii_lowercase(), v));
        }
    }
    if req.body.len() > limit {
        return error_response(StatusCode::PAYLOAD_TOO_LARGE, "too-large", &format!("body exceeds {limit} bytes"));
    }
    let started = Instant::now();
    let invoke = InvokeOptions { dirs: app.opts.dirs.clone(), timeout: app.opts.timeout, ..Default::default() };
    let deadline = app.opts.timeout.unwrap_or(Duration::from_millis(f.spec.limits.timeout_ms));
    // Under `auto`, the backend that answered (for the access log).
    let mut answered_by: Option<&'static str> = None;
    let outcome: Outcome = match &f.exec {
        Executor::Workers(pool) => call_workers(&app, pool, &req, deadline, app.opts.queue_timeout, &name).await,
        Executor::MicroVm(pool) => call_vm(pool, req, deadline, app.opts.queue_timeout, &name).await,
        Executor::Auto { wasm, vm, router } => {
            let (mut backend, routing_to) = {
                let mut r = router.lock().unwrap();
                (r.pick(Instant::now()), r.current)
            };
            // Spare VMs boot in the background while Wasm is the choice.
            vm.background.store(routing_to == Backend::Wasm, Ordering::Relaxed);
            let t = Instant::now();
            let mut outcome = match backend {
                Backend::Wasm => call_workers(&app, wasm, &req, deadline, app.opts.queue_timeout, &name).await,
                // No waiting for a VM to boot: with none ready, Wasm answers.
                Backend::MicroVm => call_vm(vm, req.clone(), deadline, Duration::ZERO, &name).await,
            };
            if backend == Backend::MicroVm && matches!(outcome, Err((ErrorKind::Busy, _))) {
                // No VM was ready: the try did not happen, so it is not due later.
                router.lock().unwrap().next_try = None;
                backend = Backend::Wasm;
                outcome = call_workers(&app, wasm, &req, deadline, app.opts.queue_timeout, &name).await;
            }
            // Only answers count: a fault says nothing about the backend.
            if outcome.is_ok() {
                router.lock().unwrap().record(backend, t.elapsed(), Instant::now());
            }
            answered_by = Some(match backend {
                Backend::Wasm => "auto:wasm",
                Backend::MicroVm => "auto:microvm",
            });
            outcome
        }
        Executor::InProcess(_) => {
            let app2 = app.clone();
            let f2 = f.clone();
            let joined = tokio::task::spawn_blocking(move || {
                let (Executor::InProcess(loaded), Some(rt)) = (&f2.exec, &app2.runtime) else { unreachable!("in-process mode") };
                rt.invoke(loaded, req, &invoke)
            })
            .await;
            match joined {
                Err(join) => Err((ErrorKind::Other, format!("invocation task failed: {join}"))),
                Ok(Err(e)) => Err((e.kind(), e.to_string())),
                Ok(Ok(inv)) => {
                    log_guest_output(&name, &inv.stdout, &inv.stderr);
                    count_denied(&app, &name, inv.outbound_denied);
                    Ok(match (inv.http, inv.result) {
                        (Some(head), Ok(r)) => Answer::Http(head, r.body),
                        (_, result) => Answer::Limes(result),
                    })
                }
            }
        }
    };
    drop(permit);
    let elapsed = started.elapsed();
    let phase = if f.served.fetch_add(1, Ordering::Relaxed) == 0 { "cold" } else { "warm" };
    app.metrics.latency.get_or_create(&LatencyLabels { function: name.clone(), phase: phase.into() }).observe(elapsed.as_secs_f64());
    let backend = answered_by.unwrap_or(match &f.exec {
        Executor::Workers(_) => "wasm",
        Executor::InProcess(_) => "wasm-in-process",
        Executor::MicroVm(_) => "microvm",
        Executor::Auto { .. } => "auto",
    });
    let resp = match outcome {
        Err((kind, message)) => {
            // The detail (a panic message, paths, the server's own flags)
            // is for the operator's log; the client gets the kind, a
            // sentence of its own and the request id to quote.
            tracing::warn!(function = %name, kind = kind.name(), request_id = id, error = %escape_log(&message), "invocation failed");
            let public = match kind {
                ErrorKind::Timeout => format!("{name} timed out after {} ms", deadline.as_millis()),
                ErrorKind::MemoryLimit => format!("{name} exceeded its memory limit of {} MiB", f.spec.limits.memory_bytes >> 20),
                ErrorKind::Trap => format!("{name} failed (a trap: a panic or an invalid operation)"),
                ErrorKind::WorkerCrashed => format!("{name}: its worker process ended unexpectedly and was replaced"),
                ErrorKind::Busy => "all workers are busy; retry later".to_string(),
                ErrorKind::TooLarge => message,
                ErrorKind::Verification => format!("{name} failed verification on this device"),
                ErrorKind::Usage | ErrorKind::Load | ErrorKind::NotInstalled | ErrorKind::Other => format!("{name} could not answer"),
            };
            let status = StatusCode::from_u16(kind.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let body = format!("{}\n", serde_json::json!({"error": public, "kind": kind, "request_id": id}));
            (status, [("content-type", "application/json")], body).into_response()
        }
        Ok(Answer::Http(head, body)) => http_answer(&name, head, body),
        Ok(Answer::Limes(result)) => match result {
            Ok(r) => {
                let ct = r.content_type.unwrap_or_else(|| "application/octet-stream".into());
                (StatusCode::OK, [("content-type", ct)], r.body).into_response()
            }
            Err(e) => {
                let status = match e {
                    limes_sdk::Error::BadRequest(_) => StatusCode::BAD_REQUEST,
                    limes_sdk::Error::NotFound(_) => StatusCode::NOT_FOUND,
                    limes_sdk::Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
                };
                error_response(status, e.kind(), e.message())
            }
        },
    };
    let status = resp.status().as_u16();
    if status >= 500 && status != 503 {
        f.failed.fetch_add(1, Ordering::Relaxed);
    }
    app.metrics.requests.get_or_create(&RequestLabels { function: name.clone(), status: status.to_string() }).inc();
    // The access log: one line per request (--access-log, -v, or
    // RUST_LOG=limes::access=info); under `auto`, the backend that answered.
    tracing::info!(target: "limes::access", function = %name, backend, status, latency_us = elapsed.as_micros() as u64, "request");
    resp
}

/// What a function answered.
enum Answer {
    /// A limes function's result.
    Limes(Result<limes_sdk::Response, limes_sdk::Error>),
    /// A `wasi:http` function's status, headers and body.
    Http(crate::wasi_http::HttpHead, Vec<u8>),
}

/// What a request resolved to: the function's answer, or a failure (its
/// kind decides the HTTP status, and the message goes to the log).
type Outcome = Result<Answer, (ErrorKind, String)>;

/// A `wasi:http` function's answer as the client gets it: its status and
/// end-to-end headers (hop-by-hop ones and a stale length dropped: hyper
/// frames the body it was given).
fn http_answer(name: &str, head: crate::wasi_http::HttpHead, body: Vec<u8>) -> Response {
    let Ok(status) = StatusCode::from_u16(head.status) else {
        return error_response(StatusCode::BAD_GATEWAY, "bad-response", &format!("{name} answered with the invalid status {}", head.status));
    };
    let mut out = Response::new(Body::from(body));
    *out.status_mut() = status;
    let mut listed = HeaderMap::new();
    for (k, v) in &head.headers {
        if let (Ok(k), Ok(v)) = (axum::http::HeaderName::from_bytes(k.as_bytes()), axum::http::HeaderValue::from_str(v)) {
            listed.append(k, v);
        }
    }
    for (k, v) in &listed {
        if !is_hop_by_hop(k.as_str(), &listed) && k != axum::http::header::CONTENT_LENGTH {
            out.headers_mut().append(k.clone(), v.clone());
        }
    }
    out
}

fn count_denied(app: &AppState, name: &str, n: u32) {
    if n > 0 {
        app.metrics.outbound_denied.get_or_create(&FunctionLabel { function: name.to_string() }).inc_by(n.into());
    }
}

async fn call_workers(app: &AppState, pool: &Arc<Pool>, req: &limes_sdk::Request, deadline: Duration, queue: Duration, name: &str) -> Outcome {
    let payload = limes_sdk::frame::encode_request(req);
    match pool.call(payload, deadline, queue).await {
        Err(CallError::Busy) => Err((ErrorKind::Busy, "all workers are busy; retry later".into())),
        Err(CallError::Timeout) => Err((ErrorKind::Timeout, RunError::Timeout { function: name.to_string(), ms: deadline.as_millis() as u64 }.to_string())),
        Err(CallError::Crashed(why)) => Err((ErrorKind::WorkerCrashed, format!("{name}: the worker crashed ({why}); it was replaced"))),
        Ok(reply) => {
            log_guest_output(name, &reply.stdout, &reply.stderr);
            count_denied(app, name, reply.meta.outbound_denied);
            if let (None, Some(head)) = (&reply.meta.error, reply.meta.http) {
                return Ok(Answer::Http(head, reply.response));
            }
            match reply.meta.error {
                Some(e) => Err((e.kind, e.message)),
                None => limes_sdk::frame::decode_response(&reply.response)
                    .map(Answer::Limes)
                    .map_err(|e| (ErrorKind::Other, format!("bad answer from the worker: {e}"))),
            }
        }
    }
}

async fn call_vm(pool: &Arc<crate::pool::VmPool>, req: limes_sdk::Request, deadline: Duration, queue: Duration, name: &str) -> Outcome {
    let pool = pool.clone();
    match tokio::task::spawn_blocking(move || pool.call(&req, deadline, queue)).await {
        Err(join) => Err((ErrorKind::Other, format!("microVM task failed: {join}"))),
        Ok(Err(crate::pool::VmCallError::Busy)) => Err((ErrorKind::Busy, "no pre-booted microVM is free; retry later".into())),
        // The VM's own kind: a timeout or memory limit of the function, a
        // flooding guest a trap, a hypervisor that failed an error of ours.
        Ok(Err(crate::pool::VmCallError::Vm(e))) => Err((e.kind(), format!("{name}: {e}"))),
        Ok(Ok(o)) => {
            tracing::debug!(function = %name, exec_us = o.exec_time.as_micros() as u64, "microVM answered");
            Ok(Answer::Limes(o.result))
        }
    }
}

/// A backend `auto` can route to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Wasm,
    MicroVm,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Wasm => "wasm",
            Backend::MicroVm => "microvm",
        }
    }
    fn other(self) -> Backend {
        match self {
            Backend::Wasm => Backend::MicroVm,
            Backend::MicroVm => Backend::Wasm,
        }
    }
}

/// The `auto` rule: route each request to the backend whose median
/// latency (queue + execution, answered requests only) over its last
/// [`AUTO_WINDOW`] requests is lower; switch only when the other's median
/// is at least 10% lower (hysteresis). Starts on Wasm. The other backend is
/// tried on every [`AUTO_EXPLORE`]th request, but at most once per gap: the
/// gap starts at [`AUTO_GAP_MIN`], doubles each time a try confirms the
/// choice (up to [`AUTO_GAP_MAX`]) and resets when a try beats it. So a busy
/// server explores a few times a minute, not a sixteenth of its traffic:
/// each microVM try uses up a pre-booted VM, whose replacement boot costs
/// seconds of CPU under emulation. A try that loses also pays for itself:
/// the next one waits at least [`AUTO_TRY_SPACING`] times as long as it
/// took, so exploring costs a client at most about 5% of its time even when
/// the other backend is 20x slower (an image request on an emulated VM).
struct AutoRouter {
    current: Backend,
    windows: [std::collections::VecDeque<f64>; 2],
    requests: u64,
    gap: Duration,
    next_try: Option<Instant>,
}

/// Short enough that a few explorations reveal a change of regime.
const AUTO_WINDOW: usize = 9;
const AUTO_EXPLORE: u64 = 16;
const AUTO_GAP_MIN: Duration = Duration::from_millis(250);
const AUTO_GAP_MAX: Duration = Duration::from_secs(30);
const AUTO_TRY_SPACING: u32 = 19;

impl AutoRouter {
    fn new() -> AutoRouter {
        AutoRouter { current: Backend::Wasm, windows: Default::default(), requests: 0, gap: AUTO_GAP_MIN, next_try: None }
    }
    fn window(&self, b: Backend) -> &std::collections::VecDeque<f64> {
        &self.windows[b as usize]
    }
    fn p50(&self, b: Backend) -> Option<f64> {
        let mut v: Vec<f64> = self.window(b).iter().copied().collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        Some(v[v.len() / 2])
    }
    fn pick(&mut self, now: Instant) -> Backend {
        self.requests += 1;
        let other = self.current.other();
        // Measure the other backend early (every 4th request until it has
        // three answers), then every AUTO_EXPLORE-th; never within the gap.
        let turn = (self.window(other).len() < 3 && self.requests.is_multiple_of(4)) || self.requests.is_multiple_of(AUTO_EXPLORE);
        if turn && self.next_try.is_none_or(|t| now >= t) {
            self.next_try = Some(now + self.gap);
            other
        } else {
            self.current
        }
    }
    fn record(&mut self, b: Backend, took: Duration, now: Instant) {
        let w = &mut self.windows[b as usize];
        w.push_back(took.as_secs_f64());
        if w.len() > AUTO_WINDOW {
            w.pop_front();
        }
        let other = self.current.other();
        let Some(cur) = self.p50(self.current) else { return };
        if b == other {
            // A try that beats the current median is worth repeating soon.
            if took.as_secs_f64() < cur {
                self.gap = AUTO_GAP_MIN;
            } else {
                self.gap = (self.gap * 2).min(AUTO_GAP_MAX);
                let paid = now + took * AUTO_TRY_SPACING;
                self.next_try = Some(self.next_try.map_or(paid, |t| t.max(paid)));
            }
        }
        if let Some(alt) = self.p50(other) {
            if self.window(other).len() >= 3 && alt < cur * 0.9 {
                tracing::info!(
                    from = self.current.name(),
                    to = other.name(),
                    current_p50_us = (cur * 1e6) as u64,
                    other_p50_us = (alt * 1e6) as u64,
                    "auto backend switch"
                );
                self.current = other;
                self.gap = AUTO_GAP_MIN;
            }
        }
    }
}

/// Re-hash what the workers will map, here first, so a tampered store is a
/// verification failure of the server itself (the workers re-hash too).
fn check_wasm_artifacts(f: &crate::store::InstalledFunction) -> Result<(), crate::store::StoreError> {
    let (best, _) = crate::select::best_tier_of(&f.manifest, |p| f.has(p));
    let mut check = vec![f.manifest.component.as_str()];
    check.extend(best.map(|a| a.path.as_str()));
    f.check_files(&check, crate::store::Integrity::Rehash)
}

/// Guest stdout/stderr go to the server's log, bounded (4 KiB, 64 lines
/// per stream and request), one event per line with the line as one
/// escaped field (see [`escape_log`]), tagged with the function.
fn log_guest_output(function: &str, stdout: &[u8], stderr: &[u8]) {
    const MAX_BYTES: usize = 4096;
    const MAX_LINES: usize = 64;
    for (stream, bytes) in [("stdout", stdout), ("stderr", stderr)] {
        let text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_BYTES)]);
        let lines: Vec<&str> = text.split('\n').collect();
        let shown = lines.len().min(MAX_LINES);
        for (i, line) in lines[..shown].iter().enumerate() {
            if i + 1 == lines.len() && line.is_empty() {
                break;
            }
            let truncated = i + 1 == shown && (bytes.len() > MAX_BYTES || lines.len() > MAX_LINES);
            tracing::info!(function, stream, truncated, line = %escape_log(line), "guest output");
        }
    }
}

/// Text a guest or client controls, made safe for one log field: control
/// characters (newline, carriage return, ANSI escape, ...) and quotes come
/// out escaped, so it can neither end a log line nor redraw one.
pub fn escape_log(s: &str) -> String {
    s.chars().flat_map(|c| if c.is_control() || c == '"' || c == '\\' { c.escape_default().collect::<Vec<_>>() } else { vec![c] }).collect()
}

/// `ok` (200) while every served function has a live worker; otherwise
/// `unhealthy` (503) with the functions that have none (their requests
/// can only wait for a replacement).
async fn healthz(State(app): State<Arc<AppState>>) -> Response {
    let functions = app.functions.read().unwrap().clone();
    let mut names: Vec<&String> = functions.keys().collect();
    names.sort();
    let dead: Vec<&String> = names
        .iter()
        .copied()
        .filter(|n| matches!(&functions[*n].exec, Executor::Workers(p) | Executor::Auto { wasm: p, .. } if p.live.load(Ordering::Relaxed) == 0))
        .collect();
    let body = serde_json::json!({
        "status": if dead.is_empty() { "ok" } else { "unhealthy" },
        "uptime_s": (app.started.elapsed().as_secs_f64() * 1e3).round() / 1e3,
        "functions": names,
        "no_live_worker": dead,
    });
    let status = if dead.is_empty() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, [("content-type", "application/json")], format!("{body}\n")).into_response()
}

async fn metrics(State(app): State<Arc<AppState>>) -> Response {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &app.metrics.registry) {
        return error_response(StatusCode::INTERNAL_SERVER_ERROR, "internal", &format!("encoding metrics: {e}"));
    }
    ([("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")], out).into_response()
}

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
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(STORE_POLL) => {}
                    Some(_) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                        tracing::info!("SIGHUP: reloading the store");
                    }
                }
                if let Err(e) = reconcile(&app, false).await {
                    tracing::error!(error = %e, "following the store failed");
                }
                publish_state(&app);
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

/// Name of the file (in the store) where a running serve says how it serves
/// each function, for `limes list`.
pub const SERVE_STATE: &str = "serve-state.json";

/// Write what serve is doing per function (backend; for `auto`, where it
/// routes and the medians behind it; the object served and its request and
/// failure counts since it was loaded) into the store, when it changed.
fn publish_state(app: &Arc<AppState>) {
    let functions = app.functions.read().unwrap().clone();
    let mut per = serde_json::Map::new();
    for (n, f) in &functions {
        let v = match &f.exec {
            Executor::Workers(_) => serde_json::json!({"backend": "wasm"}),
            Executor::InProcess(_) => serde_json::json!({"backend": "wasm-in-process"}),
            Executor::MicroVm(_) => serde_json::json!({"backend": "microvm"}),
            Executor::Auto { router, .. } => {
                let r = router.lock().unwrap();
                let p50 = |b| r.p50(b).map(|s| (s * 1e6) as u64);
                serde_json::json!({"backend": "auto", "routing_to": r.current.name(),
                    "p50_us": {"wasm": p50(Backend::Wasm), "microvm": p50(Backend::MicroVm)}})
            }
        };
        let mut v = v;
        v["object"] = f.object.clone().into();
        v["requests"] = f.served.load(Ordering::Relaxed).into();
        v["failures"] = f.failed.load(Ordering::Relaxed).into();
        per.insert(n.clone(), v);
    }
    let state = serde_json::json!({"pid": std::process::id(), "functions": per});
    let text = serde_json::to_vec_pretty(&state).expect("state serializes");
    let mut last = app.published.lock().unwrap();
    if *last != text {
        if let Ok(store) = Store::open(&app.store_root) {
            if store.write_file(SERVE_STATE, &text).is_ok() {
                *last = text;
            }
        }
    }
}

/// How often serve looks for installs and removals.
const STORE_POLL: Duration = Duration::from_millis(250);

/// Make the served set match the store: start what was installed or
/// replaced, drop what was removed (requests in flight keep their `Served`
/// until they finish). With `strict`, any load error is returned; otherwise
/// it is logged and that function is not served.
async fn reconcile(app: &Arc<AppState>, strict: bool) -> Result<(), ServeError> {
    let store = Store::open(&app.store_root)?;
    // Keys added to the trust directory since (by `limes install`) count.
    let anchors = app.opts.anchors.reload()?;
    let records: Vec<crate::store::Installed> =
        store.list()?.into_iter().filter(|r| app.opts.functions.is_empty() || app.opts.functions.contains(&r.name)).collect();
    let current: HashMap<String, String> = app.functions.read().unwrap().iter().map(|(n, f)| (n.clone(), f.object.clone())).collect();
    for r in &records {
        if current.get(&r.name) == Some(&r.object) {
            continue;
        }
        match load_function(app, &store, &anchors, &r.name).await {
            Ok(served) => {
                tracing::info!(function = %r.name, version = %r.version, "serving");
                app.functions.write().unwrap().insert(r.name.clone(), served);
            }
            Err(e) if strict => return Err(e),
            Err(e) => {
                tracing::error!(function = %r.name, error = %e, "cannot serve this function");
                app.functions.write().unwrap().remove(&r.name);
            }
        }
    }
    let gone: Vec<String> = current.keys().filter(|n| !records.iter().any(|r| &r.name == *n)).cloned().collect();
    for n in gone {
        tracing::info!(function = %n, "removed from the store; no longer served");
        app.functions.write().unwrap().remove(&n);
    }
    Ok(())
}

/// Load one installed function: in this process, or as a pool of workers.
async fn load_function(app: &Arc<AppState>, store: &Store, anchors: &crate::trust::Anchors, name: &str) -> Result<Arc<Served>, ServeError> {
    let f = store.load(name, anchors)?;
    // Serve re-hashes each artifact once per load: a long-lived process
    // must not depend on the store staying untouched since install.
    // (Workers re-hash what they map too; checking here first makes a
    // tampered store a verification failure of the server itself.)
    let spec = FunctionSpec::from_manifest(&f.manifest);
    let vm_pool = |vm_opts: crate::microvm::VmOptions| {
        let size = app.opts.vm_pool;
        let f2 = f.clone();
        tokio::task::spawn_blocking(move || crate::pool::VmPool::start(f2, vm_opts, size))
    };
    let mut vm_opts = app.opts.vm.clone();
    vm_opts.timeout = Duration::from_millis(spec.limits.timeout_ms);
    if vm_opts.probe_cache.is_none() {
        vm_opts.probe_cache = Some(app.store_root.join("microvm-accel"));
    }
    let worker_spec = WorkerSpec {
        exe: app.worker_exe.clone(),
        store: app.store_root.clone(),
        function: name.to_string(),
        dirs: app.opts.dirs.clone(),
        start_timeout: Duration::from_secs(30),
        anchors: anchors.clone(),
    };
    let exec = match &app.runtime {
        _ if app.opts.auto_functions.iter().any(|m| m == name) => {
            check_wasm_artifacts(&f)?;
            let wasm = Pool::start(worker_spec, app.opts.workers).await?;
            let vm = vm_pool(vm_opts).await.map_err(|e| ServeError::Io(std::io::Error::other(e.to_string())))??;
            tracing::info!(function = %name, hypervisor = %vm.hypervisor, "auto: workers and microVMs ready");
            Executor::Auto { wasm, vm, router: std::sync::Mutex::new(AutoRouter::new()) }
        }
        _ if app.opts.microvm_functions.iter().any(|m| m == name) => {
            let pool = vm_pool(vm_opts).await.map_err(|e| ServeError::Io(std::io::Error::other(e.to_string())))??;
            tracing::info!(function = %name, hypervisor = %pool.hypervisor, vms = app.opts.vm_pool, "microVMs booted and waiting");
            Executor::MicroVm(pool)
        }
        Some(rt) => {
            let loaded = launch::load(rt, &f, LoadMode::Auto, crate::store::Integrity::Rehash)?;
            tracing::info!(function = %name, tier = loaded.tier.as_deref().unwrap_or("jit"), "loaded in process");
            Executor::InProcess(loaded)
        }
        None => {
            check_wasm_artifacts(&f)?;
            let pool = Pool::start(worker_spec, app.opts.workers).await?;
            tracing::info!(function = %name, tier = pool.ready.tier.as_deref().unwrap_or("jit"), workers = app.opts.workers, "workers ready");
            Executor::Workers(pool)
        }
    };
    Ok(Arc::new(Served {
        spec,
        exec,
        object: f.record.object.clone(),
        version: f.record.version.clone(),
        served: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    }))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Drive the router on a virtual clock: one client sending a request
    /// every `every_ms`, latencies by the backend picked.
    fn drive(r: &mut AutoRouter, now: &mut Instant, n: usize, every_ms: u64, wasm_ms: f64, vm_ms: f64) -> Vec<Backend> {
        (0..n)
            .map(|_| {
                *now += Duration::from_millis(every_ms);
                let b = r.pick(*now);
                let ms = if b == Backend::Wasm { wasm_ms } else { vm_ms };
                let took = Duration::from_secs_f64(ms / 1e3);
                r.record(b, took, *now + took);
                b
            })
            .collect()
    }

    fn tries(picks: &[Backend], b: Backend) -> usize {
        picks.iter().filter(|p| **p == b).count()
    }

    #[test]
    fn auto_routes_to_the_faster_backend_with_hysteresis() {
        let (mut r, mut now) = (AutoRouter::new(), Instant::now());
        // Wasm faster (10 requests a second for 20 s): stays on Wasm and
        // tries the microVM now and then, less often as it keeps losing.
        let picks = drive(&mut r, &mut now, 200, 100, 0.3, 15.0);
        assert_eq!(r.current, Backend::Wasm);
        let vm = tries(&picks, Backend::MicroVm);
        assert!((5..=12).contains(&vm), "tried the microVM {vm} times in 200");
        assert!(picks[100..].iter().filter(|b| **b == Backend::MicroVm).count() < picks[..100].iter().filter(|b| **b == Backend::MicroVm).count());
        // The microVM becomes clearly faster: auto follows within a minute.
        drive(&mut r, &mut now, 600, 100, 5.0, 1.0);
        assert_eq!(r.current, Backend::MicroVm);
        // Only 5% apart: no flapping back.
        drive(&mut r, &mut now, 600, 100, 0.95, 1.0);
        assert_eq!(r.current, Backend::MicroVm, "switched on a lead under 10%");
        // A clear lead again: back to Wasm.
        drive(&mut r, &mut now, 600, 100, 0.5, 1.0);
        assert_eq!(r.current, Backend::Wasm);
    }

    #[test]
    fn auto_tries_the_other_backend_a_few_times_a_minute_under_load() {
        let (mut r, mut now) = (AutoRouter::new(), Instant::now());
        // 1,000 requests a second for a minute, the microVM far behind:
        // without a gap a sixteenth of them (3,750) would each use up a VM.
        let picks = drive(&mut r, &mut now, 60_000, 1, 0.3, 15.0);
        let vm = tries(&picks, Backend::MicroVm);
        assert!((3..=12).contains(&vm), "tried the microVM {vm} times in a minute");
        assert_eq!(r.current, Backend::Wasm);
    }

    #[test]
    fn a_slow_backend_is_tried_rarely_enough_to_cost_little() {
        let (mut r, mut now) = (AutoRouter::new(), Instant::now());
        // One client back to back on an image pipeline: 60 ms on Wasm,
        // 1.3 s on an emulated VM. Every 4th request early on would spend
        // most of the client's time in tries.
        let (mut busy, mut tried) = (Duration::ZERO, Duration::ZERO);
        for _ in 0..1000 {
            let b = r.pick(now);
            let took = Duration::from_millis(if b == Backend::Wasm { 60 } else { 1300 });
            now += took;
            r.record(b, took, now);
            busy += took;
            if b == Backend::MicroVm {
                tried += took;
            }
        }
        assert_eq!(r.current, Backend::Wasm);
        let share = tried.as_secs_f64() / busy.as_secs_f64();
        // About 5% in the long run; the first try comes early, so a
        // minute's share is a little higher. Without the spacing: 16%.
        assert!(tried > Duration::ZERO && share <= 0.07, "tries took {:.1}% of the client's time", share * 100.0);
    }
}
