//! `wasi:http` functions: how a request reaches one and its answer comes
//! back, and what it may call.
//!
//! A limes request carries an HTTP request to a `wasi:http` function as
//! HTTP/2-style pseudo-headers in its metadata ([`METHOD`], [`PATH`],
//! [`SCHEME`], [`AUTHORITY`]; header names cannot contain `:`, so they
//! never collide) followed by the headers, and the body as the body: the
//! same frame travels to workers, through `limes run` and the shim. The
//! answer is an [`HttpHead`] (status, headers) beside the body.
//!
//! Outbound requests (`wasi:http/outgoing-handler`) go through
//! [`Outbound`]: only to the origins the signed manifest lists, with a
//! connect deadline and a bounded response; every other request fails with
//! `HTTP-request-denied` and is counted.
//!
//! Must not touch: serving (the server turns heads into responses), the
//! store, anything that decides which functions run.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use limes_bundle::outbound::{Origin, Scheme};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use wasmtime_wasi_http::p2::bindings::http::types::ErrorCode;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

/// Metadata keys of the request line.
pub const METHOD: &str = ":method";
/// Path and query below the function's route, starting with `/`.
pub const PATH: &str = ":path";
pub const SCHEME: &str = ":scheme";
pub const AUTHORITY: &str = ":authority";

/// Largest response body a `wasi:http` function may send (it is buffered
/// to cross the worker pipe).
pub const MAX_RESPONSE_BYTES: usize = 64 << 20;
/// Largest request body a function may send out (it is read whole first).
pub const MAX_OUTBOUND_REQUEST_BYTES: usize = 16 << 20;
/// Largest response body an outbound request may bring in.
pub const MAX_OUTBOUND_RESPONSE_BYTES: usize = 16 << 20;
/// Outbound deadlines (the function's own wall-time limit bounds the total).
pub const OUTBOUND_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const OUTBOUND_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(30);
pub const OUTBOUND_BETWEEN_BYTES_TIMEOUT: Duration = Duration::from_secs(30);

/// Status and headers of a `wasi:http` function's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpHead {
    pub status: u16,
    /// In order; names lower-case; values as sent (non-UTF-8 bytes replaced).
    pub headers: Vec<(String, String)>,
}

/// A limes request seen as an HTTP request: its pseudo-headers, defaulted
/// for a caller that gave none (`limes run` without `--method`: a POST of
/// the body to `/`).
pub fn to_hyper(req: limes_sdk::Request) -> Result<(http::Request<Full<Bytes>>, Scheme), String> {
    let meta = |k: &str| req.metadata.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let method = meta(METHOD).unwrap_or_else(|| if req.body.is_empty() { "GET".into() } else { "POST".into() });
    let path = meta(PATH).unwrap_or_else(|| "/".into());
    let scheme = match meta(SCHEME).as_deref() {
        Some("https") => Scheme::Https,
        _ => Scheme::Http,
    };
    let authority = meta(AUTHORITY).unwrap_or_else(|| "localhost".into());
    let uri = http::Uri::builder()
        .scheme(scheme.as_str())
        .authority(authority.as_str())
        .path_and_query(path.as_str())
        .build()
        .map_err(|e| format!("invalid request target: {e}"))?;
    let mut b = http::Request::builder().method(method.as_bytes()).uri(uri);
    let mut content_type_seen = false;
    for (k, v) in &req.metadata {
        if k.starts_with(':') {
            continue;
        }
        content_type_seen |= k == "content-type";
        b = b.header(k.as_str(), v.as_str());
    }
    if let (false, Some(ct)) = (content_type_seen, &req.content_type) {
        b = b.header("content-type", ct.as_str());
    }
    let r = b.body(Full::new(Bytes::from(req.body))).map_err(|e| format!("invalid request: {e}"))?;
    Ok((r, scheme))
}

/// What the response outparam delivered, collected: head and body, or the
/// error code the function answered with.
pub type Collected = Result<(HttpHead, Vec<u8>), String>;

/// Read a function's response: head at once, body until it ends (bounded).
pub async fn collect(resp: Result<hyper::Response<HyperOutgoingBody>, ErrorCode>) -> Collected {
    let resp = match resp {
        Ok(r) => r,
        Err(code) => return Err(format!("the function answered with error {code:?}")),
    };
    let (parts, mut body) = resp.into_parts();
    let head = HttpHead {
        status: parts.status.as_u16(),
        headers: parts.headers.iter().map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned())).collect(),
    };
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("the function's response body failed: {e}"))?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > MAX_RESPONSE_BYTES {
                return Err(format!("the function's response body exceeds {} MiB", MAX_RESPONSE_BYTES >> 20));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok((head, out))
}

/// The outbound policy of one call (a `WasiHttpHooks`).
pub struct Outbound {
    allowed: Arc<Vec<Origin>>,
    denied: Arc<AtomicU32>,
}

impl Outbound {
    pub fn new(allowed: Arc<Vec<Origin>>) -> Outbound {
        Outbound { allowed, denied: Arc::new(AtomicU32::new(0)) }
    }

    /// Requests denied so far (shared with the store that holds this).
    pub fn denied(&self) -> Arc<AtomicU32> {
        self.denied.clone()
    }

    fn allows(&self, uri: &http::Uri) -> bool {
        let scheme = match uri.scheme_str() {
            Some("http") => Scheme::Http,
            Some("https") => Scheme::Https,
            _ => return false,
        };
        let Some(host) = uri.host() else { return false };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(scheme.default_port());
        self.allowed.iter().any(|o| o.allows(scheme, host, port))
    }
}

type SendResult =
    wasmtime_wasi_http::Result<(http::Response<wasmtime_wasi_http::WasiBody>, Box<dyn std::future::Future<Output = wasmtime_wasi_http::Result<()>> + Send>)>;

impl wasmtime_wasi_http::WasiHttpHooks for Outbound {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn std::future::Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> Box<dyn std::future::Future<Output = SendResult> + Send> {
        if !self.allows(request.uri()) {
            self.denied.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(target: "limes::outbound", uri = %crate::args::escape_log(&request.uri().to_string()), "outbound request denied (not in the manifest's allowed-outbound-hosts)");
            // The body the guest is writing is read and dropped first: a
            // guest (wstd's client, say) writes it before it asks for the
            // response, and a body closed under it would surface as a
            // reset connection instead of the denial.
            let mut body = request.into_body();
            return Box::new(async move {
                while let Some(Ok(_)) = body.frame().await {}
                Err(wasmtime_wasi_http::Error::HttpRequestDenied)
            });
        }
        // The guest may ask for shorter deadlines, never longer ones.
        let cap = |asked: Option<Duration>, most: Duration| Some(asked.map_or(most, |a| a.min(most)));
        let options = wasmtime_wasi_http::RequestOptions {
            connect_timeout: cap(options.and_then(|o| o.connect_timeout), OUTBOUND_CONNECT_TIMEOUT),
            first_byte_timeout: cap(options.and_then(|o| o.first_byte_timeout), OUTBOUND_FIRST_BYTE_TIMEOUT),
            between_bytes_timeout: cap(options.and_then(|o| o.between_bytes_timeout), OUTBOUND_BETWEEN_BYTES_TIMEOUT),
        };
        Box::new(async move {
            // The guest's body is read whole (bounded) before the request
            // goes out: a server that answers and closes as soon as it has
            // the head would otherwise close the body under a guest that is
            // still finishing it, which the guest sees as a reset
            // connection instead of the answer (seen with wstd's client).
            let (parts, body) = request.into_parts();
            let body = http_body_util::Limited::new(body, MAX_OUTBOUND_REQUEST_BYTES)
                .collect()
                .await
                .map_err(|_| wasmtime_wasi_http::Error::HttpRequestBodySize(Some(MAX_OUTBOUND_REQUEST_BYTES as u64)))?
                .to_bytes();
            let request = http::Request::from_parts(parts, Full::new(body).map_err(|never| match never {}).boxed_unsync());
            let (res, io) = wasmtime_wasi_http::default_send_request(request, Some(options)).await?;
            let res = res.map(|b| {
                http_body_util::Limited::new(b, MAX_OUTBOUND_RESPONSE_BYTES)
                    .map_err(|e| match e.downcast::<wasmtime_wasi_http::Error>() {
                        Ok(inner) => *inner,
                        Err(_) => wasmtime_wasi_http::Error::HttpResponseBodySize(Some(MAX_OUTBOUND_RESPONSE_BYTES as u64)),
                    })
                    .boxed_unsync()
            });
            Ok((res, Box::new(io) as Box<dyn std::future::Future<Output = _> + Send>))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudo_headers_become_the_request_line() {
        let req =
            limes_sdk::Request::new("hi").with_meta(METHOD, "PUT").with_meta(PATH, "/a/b?x=1").with_meta(AUTHORITY, "example.com:8080").with_meta("x-one", "1");
        let (r, scheme) = to_hyper(req).unwrap();
        assert_eq!(scheme, Scheme::Http);
        assert_eq!(r.method(), "PUT");
        assert_eq!(r.uri().to_string(), "http://example.com:8080/a/b?x=1");
        assert_eq!(r.headers()["x-one"], "1");
        let (r, _) = to_hyper(limes_sdk::Request::new("")).unwrap();
        assert_eq!((r.method().as_str(), r.uri().path()), ("GET", "/"));
    }

    #[test]
    fn only_listed_origins_go_out() {
        let o = Outbound::new(Arc::new(vec![Origin::parse("http://127.0.0.1:9000").unwrap()]));
        assert!(o.allows(&"http://127.0.0.1:9000/x".parse().unwrap()));
        assert!(!o.allows(&"http://127.0.0.1:9001/x".parse().unwrap()));
        assert!(!o.allows(&"https://127.0.0.1:9000/x".parse().unwrap()));
        assert!(!o.allows(&"http://localhost:9000/x".parse().unwrap()));
    }
}
