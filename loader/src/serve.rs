//! `limes serve`: a long-running HTTP front for installed functions.
//!
//! `POST /functions/{name}` invokes `name` on a fresh instance (from its
//! `InstancePre`) with the request body as input; request headers and query
//! parameters become metadata. A faulty function (trap, timeout, memory
//! limit) yields an error response and never takes the server down.
//! `GET /healthz` answers while the server runs; `GET /metrics` exposes
//! counters and cold/warm latency quantiles in Prometheus text format.

use crate::launch::{self, LoadMode};
use crate::runtime::{InvokeOptions, LoadedFunction, RunError, Runtime, RuntimeOptions};
use crate::store::Store;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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
        }
    }
}

/// Latency samples kept per function and phase (a ring, newest wins).
const SAMPLES: usize = 16384;

#[derive(Default)]
struct Latencies {
    samples: Vec<f64>,
    next: usize,
}

impl Latencies {
    fn push(&mut self, secs: f64) {
        if self.samples.len() < SAMPLES {
            self.samples.push(secs);
        } else {
            self.samples[self.next] = secs;
            self.next = (self.next + 1) % SAMPLES;
        }
    }
    fn quantile(&self, q: f64) -> Option<f64> {
        if self.samples.is_empty() {
            return None;
        }
        let mut v = self.samples.clone();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        Some(v[((v.len() - 1) as f64 * q).round() as usize])
    }
}

struct Served {
    loaded: LoadedFunction,
    served: AtomicU64,
    /// First invocation after load (pages of code and data faulted in) vs
    /// every later one.
    cold: Mutex<Latencies>,
    warm: Mutex<Latencies>,
    status: Mutex<BTreeMap<u16, u64>>,
}

struct AppState {
    runtime: Runtime,
    functions: HashMap<String, Arc<Served>>,
    permits: Semaphore,
    opts: ServeOptions,
    started: Instant,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Load(#[from] launch::LoadError),
    #[error("no functions to serve (install some with `limes install`)")]
    Nothing,
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
}

fn error_response(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = format!("{{\"error\":{},\"kind\":{}}}\n", json_str(message), json_str(kind));
    (status, [("content-type", "application/json")], body).into_response()
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

async fn invoke(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(f) = app.functions.get(&name).cloned() else {
        return error_response(StatusCode::NOT_FOUND, "unknown-function", &format!("no function {name:?} is served"));
    };
    let limit = (f.loaded.spec.limits.max_input_bytes as usize).min(app.opts.max_body);
    if body.len() > limit {
        return error_response(StatusCode::PAYLOAD_TOO_LARGE, "too-large", &format!("body exceeds {limit} bytes"));
    }
    let Ok(permit) = tokio::time::timeout(app.opts.queue_timeout, app.permits.acquire()).await else {
        return error_response(StatusCode::SERVICE_UNAVAILABLE, "busy", "all instances are busy; retry later");
    };
    let permit = permit.expect("semaphore never closes");
    let mut req = limes_sdk::Request::new(body.to_vec());
    req.content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).map(String::from);
    for (k, v) in &headers {
        if let Ok(v) = v.to_str() {
            req.metadata.push((k.as_str().to_ascii_lowercase(), v.to_string()));
        }
    }
    for (k, v) in query {
        req.metadata.push((k.to_ascii_lowercase(), v));
    }
    let app2 = app.clone();
    let f2 = f.clone();
    let started = Instant::now();
    let outcome = tokio::task::spawn_blocking(move || {
        let opts = InvokeOptions { dirs: app2.opts.dirs.clone(), timeout: app2.opts.timeout, ..Default::default() };
        app2.runtime.invoke(&f2.loaded, req, &opts)
    })
    .await;
    drop(permit);
    let elapsed = started.elapsed().as_secs_f64();
    let nth = f.served.fetch_add(1, Ordering::Relaxed);
    if nth == 0 { &f.cold } else { &f.warm }.lock().unwrap().push(elapsed);
    let resp = match outcome {
        Err(join) => error_response(StatusCode::INTERNAL_SERVER_ERROR, "internal", &format!("invocation task failed: {join}")),
        Ok(Err(e)) => {
            let (status, kind) = match &e {
                RunError::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
                RunError::MemoryLimit { .. } => (StatusCode::INSUFFICIENT_STORAGE, "memory-limit"),
                RunError::Trap { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "trap"),
                RunError::InputTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too-large"),
                _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            };
            tracing::warn!(function = %name, error = %e, "invocation failed");
            error_response(status, kind, &e.to_string())
        }
        Ok(Ok(inv)) => match inv.result {
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
    *f.status.lock().unwrap().entry(resp.status().as_u16()).or_default() += 1;
    resp
}

async fn healthz(State(app): State<Arc<AppState>>) -> Response {
    let mut names: Vec<&String> = app.functions.keys().collect();
    names.sort();
    let list = names.iter().map(|n| json_str(n)).collect::<Vec<_>>().join(",");
    let body = format!("{{\"status\":\"ok\",\"uptime_s\":{:.3},\"functions\":[{list}]}}\n", app.started.elapsed().as_secs_f64());
    ([("content-type", "application/json")], body).into_response()
}

async fn metrics(State(app): State<Arc<AppState>>) -> Response {
    let mut out = String::new();
    out += "# HELP limes_requests_total Invocations by function and HTTP status.\n# TYPE limes_requests_total counter\n";
    let mut names: Vec<&String> = app.functions.keys().collect();
    names.sort();
    for n in &names {
        for (status, count) in app.functions[*n].status.lock().unwrap().iter() {
            out += &format!("limes_requests_total{{function=\"{n}\",status=\"{status}\"}} {count}\n");
        }
    }
    out += "# HELP limes_request_duration_seconds Invocation latency (instantiate + call); cold is the first invocation after load.\n# TYPE limes_request_duration_seconds summary\n";
    for n in &names {
        let f = &app.functions[*n];
        for (phase, lat) in [("cold", &f.cold), ("warm", &f.warm)] {
            let lat = lat.lock().unwrap();
            for q in [0.5, 0.99] {
                if let Some(v) = lat.quantile(q) {
                    out += &format!("limes_request_duration_seconds{{function=\"{n}\",phase=\"{phase}\",quantile=\"{q}\"}} {v:.6}\n");
                }
            }
            out += &format!("limes_request_duration_seconds_count{{function=\"{n}\",phase=\"{phase}\"}} {}\n", lat.samples.len());
        }
    }
    ([("content-type", "text/plain; version=0.0.4")], out).into_response()
}

/// Load the functions and serve until `shutdown` resolves (then finish the
/// requests in flight). `on_ready` gets the bound address.
pub async fn serve(
    store: &Store,
    opts: ServeOptions,
    on_ready: impl FnOnce(SocketAddr),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let runtime = Runtime::new(&RuntimeOptions { max_instances: opts.concurrency as u32 + 1, ..Default::default() })?;
    let names: Vec<String> = if opts.functions.is_empty() {
        store.list()?.into_iter().map(|r| r.name).collect()
    } else {
        opts.functions.clone()
    };
    if names.is_empty() {
        return Err(ServeError::Nothing);
    }
    let mut functions = HashMap::new();
    for n in names {
        let f = store.get(&n)?;
        // Serve re-hashes each artifact once per load: a long-lived process
        // must not depend on the store staying untouched since install.
        let loaded = launch::load(&runtime, &f, LoadMode::Auto, crate::store::Integrity::Rehash)?;
        tracing::info!(function = %n, tier = ?loaded.tier, "loaded");
        functions.insert(
            n,
            Arc::new(Served {
                loaded,
                served: AtomicU64::new(0),
                cold: Mutex::default(),
                warm: Mutex::default(),
                status: Mutex::default(),
            }),
        );
    }
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|source| ServeError::Bind { addr: opts.listen, source })?;
    let addr = listener.local_addr()?;
    let max_body = opts.max_body;
    let app = Arc::new(AppState { runtime, functions, permits: Semaphore::new(opts.concurrency.max(1)), opts, started: Instant::now() });
    let router = Router::new()
        .route("/functions/{name}", post(invoke))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(app);
    on_ready(addr);
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await?;
    Ok(())
}
