//! The HTTP side of `limes serve`: routes, reading bodies within their
//! budgets, one request's span from dispatch to answer, error responses, and
//! `/healthz`.

use super::*;

pub(super) fn error_response(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = format!("{}\n", serde_json::json!({"error": message, "kind": kind}));
    (status, [("content-type", "application/json")], body).into_response()
}

/// The client's address, set per connection by the accept loop.
#[derive(Clone, Copy)]
pub(super) struct ClientAddr(pub(super) std::net::IpAddr);

/// Put `client` into each request of its connection (whatever its body type).
pub(super) fn tag_client<B>(client: ClientAddr) -> impl Fn(axum::http::Request<B>) -> axum::http::Request<B> + Clone {
    move |mut r| {
        r.extensions_mut().insert(client);
        r
    }
}

/// The part of the body budget (in KiB) one request holds: what has
/// arrived of its body, never what it declared. Given back on drop.
pub(super) struct BodyReservation<'a> {
    pub(super) app: &'a AppState,
    pub(super) client: std::net::IpAddr,
    pub(super) kib: u32,
}

impl BodyReservation<'_> {
    /// Hold enough for `bytes` received so far. The error is the answer to
    /// send (built once, on a path that ends the request).
    #[allow(clippy::result_large_err)]
    pub(super) fn grow_to(&mut self, bytes: usize) -> Result<(), Response> {
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

    pub(super) fn release(&self, kib: u32) {
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
// The error is the response the client gets (axum's early-return shape); it
// is built only on the failure path, so boxing it would buy nothing.
#[allow(clippy::result_large_err)]
pub(super) async fn read_body(app: &AppState, client: std::net::IpAddr, mut body: Body, limit: usize) -> Result<Bytes, Response> {
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
pub(super) async fn invoke(State(app): State<Arc<AppState>>, Path(name): Path<String>, request: axum::extract::Request) -> Response {
    dispatch(app, name, "/".to_string(), request).await
}

/// `/functions/{name}/{*rest}`: a `wasi:http` function, below its root.
pub(super) async fn invoke_below(State(app): State<Arc<AppState>>, Path((name, rest)): Path<(String, String)>, request: axum::extract::Request) -> Response {
    dispatch(app, name, format!("/{rest}"), request).await
}

/// Every other path: the `--route` with the longest matching prefix.
pub(super) async fn invoke_routed(State(app): State<Arc<AppState>>, request: axum::extract::Request) -> Response {
    let path = request.uri().path().to_string();
    let best = app.opts.routes.iter().filter_map(|r| r.below(&path).map(|below| (r, below))).max_by_key(|(r, _)| r.prefix.len());
    match best {
        Some((r, below)) => dispatch(app.clone(), r.function.clone(), below.to_string(), request).await,
        None => error_response(StatusCode::NOT_FOUND, "no-route", "no function is served at this path (POST /functions/NAME, or a --route)"),
    }
}

pub(super) async fn dispatch(app: Arc<AppState>, name: String, below: String, request: axum::extract::Request) -> Response {
    // Every log line of a request (its access-log line, the function's own
    // output) carries the request's id.
    let id = app.next_request.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!("request", id, function = %name);
    tracing::Instrument::instrument(invoke_in_span(app, name, below, request, id), span).await
}

/// Headers that describe one hop, not the message (RFC 9110 7.6.1): never
/// forwarded to a function or from it to the client.
pub(super) const HOP_BY_HOP: &[&str] = &["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"];

pub(super) fn is_hop_by_hop(name: &str, connection: &HeaderMap) -> bool {
    HOP_BY_HOP.contains(&name)
        || connection.get_all(axum::http::header::CONNECTION).iter().any(|v| v.to_str().unwrap_or("").split(',').any(|t| t.trim().eq_ignore_ascii_case(name)))
}

pub(super) async fn invoke_in_span(app: Arc<AppState>, name: String, below: String, request: axum::extract::Request, id: u64) -> Response {
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
        Executor::Workers(pool) => call_workers(&app, pool, None, &req, deadline, app.opts.queue_timeout, &name).await,
        Executor::Shared(pool) => {
            let target = Target { function: &name, object: &f.object };
            call_workers(&app, pool, Some(target), &req, deadline, app.opts.queue_timeout, &name).await
        }
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
                Backend::Wasm => call_workers(&app, wasm, None, &req, deadline, app.opts.queue_timeout, &name).await,
                // No waiting for a VM to boot: with none ready, Wasm answers.
                Backend::MicroVm => call_vm(vm, req.clone(), deadline, Duration::ZERO, &name).await,
            };
            if backend == Backend::MicroVm && matches!(outcome, Err((ErrorKind::Busy, _))) {
                // No VM was ready: the try did not happen, so it is not due later.
                router.lock().unwrap().next_try = None;
                backend = Backend::Wasm;
                outcome = call_workers(&app, wasm, None, &req, deadline, app.opts.queue_timeout, &name).await;
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
        Executor::Workers(_) | Executor::Shared(_) => "wasm",
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

/// A `wasi:http` function's answer as the client gets it: its status and
/// end-to-end headers (hop-by-hop ones and a stale length dropped: hyper
/// frames the body it was given).
pub(super) fn http_answer(name: &str, head: crate::wasi_http::HttpHead, body: Vec<u8>) -> Response {
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

pub(super) fn count_denied(app: &AppState, name: &str, n: u32) {
    if n > 0 {
        app.metrics.outbound_denied.get_or_create(&FunctionLabel { function: name.to_string() }).inc_by(n.into());
    }
}

/// Guest stdout/stderr go to the server's log, bounded (4 KiB, 64 lines
/// per stream and request), one event per line with the line as one
/// escaped field (see [`escape_log`]), tagged with the function.
pub(super) fn log_guest_output(function: &str, stdout: &[u8], stderr: &[u8]) {
    log_guest_streams(function, &[("stdout", stdout), ("stderr", stderr)]);
}

/// [`log_guest_output`] for any named streams (a microVM's `console`).
pub(super) fn log_guest_streams(function: &str, streams: &[(&str, &[u8])]) {
    const MAX_BYTES: usize = 4096;
    const MAX_LINES: usize = 64;
    for &(stream, bytes) in streams {
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

/// `ok` (200) while every served function has a live worker; otherwise
/// `unhealthy` (503) with the functions that have none (their requests
/// can only wait for a replacement).
pub(super) async fn healthz(State(app): State<Arc<AppState>>) -> Response {
    let functions = app.functions.read().unwrap().clone();
    let mut names: Vec<&String> = functions.keys().collect();
    names.sort();
    let dead: Vec<&String> = names
        .iter()
        .copied()
        .filter(|n| matches!(&functions[*n].exec, Executor::Workers(p) | Executor::Shared(p) | Executor::Auto { wasm: p, .. } if p.live.load(Ordering::Relaxed) == 0))
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
