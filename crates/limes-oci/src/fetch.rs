//! Reading a bundle artifact from a registry with every response bounded.
//!
//! A registry is untrusted until the signature has been checked, and even
//! then it only serves bytes: so every response is read through a counter
//! that stops one byte past what the descriptor (or a fixed bound, for the
//! OCI manifest and token answers) allows, every request has connect and
//! read deadlines, a size violation is never retried, and a redirect to
//! plain HTTP is followed only to loopback.

use crate::{is_loopback, Credentials, OciError, ARTIFACT_TYPE, TITLE};
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use sha2::{Digest, Sha256};
use std::os::unix::fs::OpenOptionsExt;
use std::time::Duration;

/// Largest OCI manifest accepted (a bundle's has a handful of layers).
pub const MAX_OCI_MANIFEST: u64 = 1 << 20;
/// Largest token-service answer accepted.
const MAX_TOKEN_ANSWER: u64 = 64 << 10;
/// Largest error body kept for a message.
const MAX_ERROR_BODY: u64 = 4 << 10;

/// How long a registry may take.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    /// Longest silence while a response is awaited or read.
    pub read: Duration,
    /// Slowest accepted transfer of a response body, in bytes per second on
    /// average after [`RATE_GRACE`]: a registry that drips a byte a second
    /// never falls silent, so silence alone does not end it.
    pub min_rate: u64,
    /// The whole pull (every request, retries included), and so each request.
    pub total: Duration,
}

/// How long a response body may take before [`Timeouts::min_rate`] applies.
pub const RATE_GRACE: Duration = Duration::from_secs(5);

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts { connect: Duration::from_secs(10), read: Duration::from_secs(30), min_rate: 1024, total: Duration::from_secs(300) }
    }
}

/// A read-only connection to one repository.
pub struct Puller {
    http: reqwest::Client,
    base: String,
    registry: String,
    repository: String,
    reference: String,
    credentials: Option<(String, String)>,
    authorization: tokio::sync::Mutex<Option<String>>,
    min_rate: u64,
    /// Response body bytes received so far (what a device pays for).
    received: std::sync::atomic::AtomicU64,
}

/// A response body read whole, or why it was not.
enum Body {
    Ok(Vec<u8>),
    TooLarge,
    /// Slower than the minimum rate after the grace period.
    TooSlow,
}

impl Puller {
    pub fn new(reference: &str, insecure: bool, creds: &Credentials, timeouts: Timeouts) -> Result<Puller, OciError> {
        let parsed: oci_client::Reference = reference.parse().map_err(|e: oci_client::ParseError| OciError::Reference(reference.into(), e.to_string()))?;
        let registry = parsed.resolve_registry().to_string();
        if insecure && !is_loopback(&registry) {
            return Err(OciError::InsecureRemote(registry));
        }
        let https_origin = !insecure;
        let policy = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= 5 {
                return attempt.error("too many redirects");
            }
            let url = attempt.url().clone();
            let host = url.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_string();
            let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
            if url.scheme() != "https" && !loopback {
                return attempt.error(format!("refusing a redirect to plain HTTP off loopback ({})", crate::host_only(&url)));
            }
            if https_origin && url.scheme() != "https" {
                return attempt.error("refusing a redirect from HTTPS to plain HTTP");
            }
            attempt.follow()
        });
        crate::tls::install_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(timeouts.connect)
            .read_timeout(timeouts.read)
            .timeout(timeouts.total)
            .redirect(policy)
            .user_agent(concat!("limes/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| OciError::Registry { registry: registry.clone(), message: e.to_string() })?;
        let auth = crate::registry_auth(&registry, creds);
        let credentials = match auth {
            oci_client::secrets::RegistryAuth::Basic(u, p) => Some((u, p)),
            _ => None,
        };
        let host = if registry == "docker.io" { "registry-1.docker.io".to_string() } else { registry.clone() };
        Ok(Puller {
            http,
            base: format!("{}://{host}", if insecure { "http" } else { "https" }),
            registry,
            repository: parsed.repository().to_string(),
            reference: parsed.digest().or(parsed.tag()).unwrap_or("latest").to_string(),
            credentials,
            authorization: tokio::sync::Mutex::new(None),
            min_rate: timeouts.min_rate,
            received: Default::default(),
        })
    }

    fn err(&self, message: impl std::fmt::Display) -> OciError {
        OciError::Registry { registry: self.registry.clone(), message: message.to_string() }
    }

    /// Response body bytes received from the registry by this puller.
    pub fn received(&self) -> u64 {
        self.received.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// GET `url`, authenticating on a 401 challenge, and read at most
    /// `limit` bytes of the answer.
    async fn get(&self, url: &str, accept: Option<&str>, limit: u64) -> Result<Body, OciError> {
        let resp = self.send(url, accept, None).await?;
        if resp.content_length().is_some_and(|n| n > limit) {
            return Ok(Body::TooLarge);
        }
        let body = read_capped(resp, limit, self.min_rate).await.map_err(|e| self.transport(e))?;
        if let Body::Ok(b) = &body {
            self.received.fetch_add(b.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        match body {
            Body::TooSlow => Err(self.err(format!("{} sent slower than {} bytes/s", crate::host_only_str(url), self.min_rate))),
            b => Ok(b),
        }
    }

    /// Send a GET (from byte `from` on, when given), authenticating on a
    /// 401 challenge; a status other than success is an error.
    async fn send(&self, url: &str, accept: Option<&str>, from: Option<u64>) -> Result<reqwest::Response, OciError> {
        for attempt in 0..2 {
            let mut req = self.http.get(url);
            if let Some(a) = accept {
                req = req.header(reqwest::header::ACCEPT, a);
            }
            if let Some(n) = from {
                req = req.header(reqwest::header::RANGE, format!("bytes={n}-"));
            }
            if let Some(h) = self.authorization.lock().await.clone() {
                req = req.header(reqwest::header::AUTHORIZATION, h);
            }
            let resp = req.send().await.map_err(|e| self.transport(e))?;
            let status = resp.status();
            if status == reqwest::StatusCode::UNAUTHORIZED && attempt == 0 {
                let challenge = resp.headers().get(reqwest::header::WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).map(String::from);
                self.authenticate(challenge.as_deref()).await?;
                continue;
            }
            if !status.is_success() {
                let body = match read_capped(resp, MAX_ERROR_BODY, self.min_rate).await {
                    Ok(Body::Ok(b)) => String::from_utf8_lossy(&b).to_string(),
                    _ => String::new(),
                };
                let message = format!("{} answered {status}: {}", crate::host_only_str(url), error_text(&body));
                return Err(if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
                    OciError::Auth { registry: self.registry.clone(), message }
                } else {
                    self.err(message)
                });
            }
            return Ok(resp);
        }
        Err(OciError::Auth { registry: self.registry.clone(), message: "the registry refused the credentials".into() })
    }

    fn transport(&self, e: reqwest::Error) -> OciError {
        if e.is_timeout() {
            self.err(format!("no answer within the deadline ({e})"))
        } else if e.is_redirect() {
            self.err(format!("redirect refused: {}", std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_else(|| e.to_string())))
        } else if e.is_connect() {
            self.err(format!("cannot reach the registry ({e}){}", self.plain_http_hint()))
        } else {
            self.err(format!("{e}{}", self.plain_http_hint()))
        }
    }

    /// A local registry (docker-registry on loopback) usually speaks plain
    /// HTTP, which an HTTPS connection meets as a TLS failure.
    fn plain_http_hint(&self) -> &'static str {
        if self.base.starts_with("https://") && crate::is_loopback(&self.registry) {
            "; a registry on this machine usually speaks plain HTTP: pass --insecure"
        } else {
            ""
        }
    }

    /// Answer a 401 challenge: basic credentials, or a bearer token from the
    /// realm the registry names (with basic credentials when we have them).
    async fn authenticate(&self, challenge: Option<&str>) -> Result<(), OciError> {
        let denied = |m: &str| OciError::Auth { registry: self.registry.clone(), message: m.to_string() };
        let challenge = challenge.ok_or_else(|| denied("401 without a WWW-Authenticate challenge"))?;
        let (scheme, params) = challenge.split_once(' ').unwrap_or((challenge, ""));
        let basic = self.credentials.as_ref().map(|(u, p)| {
            use base64::Engine as _;
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}")))
        });
        if scheme.eq_ignore_ascii_case("basic") {
            *self.authorization.lock().await = Some(basic.ok_or_else(|| denied("the registry requires credentials (see --username)"))?);
            return Ok(());
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(denied(&format!("unsupported authentication scheme {}", limes_bundle::untrusted(scheme))));
        }
        let param = |k: &str| -> Option<String> {
            params.split(',').filter_map(|kv| kv.trim().split_once('=')).find(|(n, _)| n.eq_ignore_ascii_case(k)).map(|(_, v)| v.trim_matches('"').to_string())
        };
        let realm = param("realm").ok_or_else(|| denied("bearer challenge without a realm"))?;
        let mut url = reqwest::Url::parse(&realm).map_err(|_| denied("bearer realm is not a URL"))?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = param("service") {
                q.append_pair("service", &s);
            }
            q.append_pair("scope", &param("scope").unwrap_or_else(|| format!("repository:{}:pull", self.repository)));
        }
        let mut req = self.http.get(url);
        if let Some(b) = &basic {
            req = req.header(reqwest::header::AUTHORIZATION, b);
        }
        let resp = req.send().await.map_err(|e| self.transport(e))?;
        if !resp.status().is_success() {
            return Err(denied(&format!("the token service answered {}", resp.status())));
        }
        let Body::Ok(bytes) = read_capped(resp, MAX_TOKEN_ANSWER, self.min_rate).await.map_err(|e| self.transport(e))? else {
            return Err(denied("the token service answered more than 64 KiB, or too slowly"));
        };
        let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|_| denied("the token service answered no JSON"))?;
        let token = v.get("token").or_else(|| v.get("access_token")).and_then(|t| t.as_str()).ok_or_else(|| denied("no token in the answer"))?;
        *self.authorization.lock().await = Some(format!("Bearer {token}"));
        Ok(())
    }

    /// The artifact's OCI manifest (bounded; must be a limes bundle) and its
    /// digest. A reference by digest must match what was served.
    pub async fn manifest(&self) -> Result<(OciImageManifest, String), OciError> {
        let url = format!("{}/v2/{}/manifests/{}", self.base, self.repository, self.reference);
        let Body::Ok(bytes) = self.get(&url, Some("application/vnd.oci.image.manifest.v1+json"), MAX_OCI_MANIFEST).await? else {
            // (`get` reports a slow answer itself.)
            return Err(OciError::TooLarge { what: "the OCI manifest".into(), limit: MAX_OCI_MANIFEST });
        };
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        if self.reference.starts_with("sha256:") && self.reference != digest {
            return Err(OciError::Digest { what: "OCI manifest".into(), expected: self.reference.clone(), actual: digest });
        }
        let m: OciImageManifest = serde_json::from_slice(&bytes).map_err(|e| self.err(format!("OCI manifest is not an image manifest: {e}")))?;
        if m.artifact_type.as_deref() != Some(ARTIFACT_TYPE) {
            return Err(OciError::NotLimes(
                format!("{}/{}:{}", self.registry, self.repository, self.reference),
                m.artifact_type.map(|t| limes_bundle::untrusted(&t)),
            ));
        }
        Ok((m, digest))
    }

    /// Fetch one blob into `out`: at most `min(descriptor size, limit)`
    /// bytes are read, then its SHA-256 must be the descriptor's. Transport
    /// failures are retried (from scratch, so nothing partial is kept); a
    /// size or digest violation is not.
    pub async fn fetch(&self, layer: &OciDescriptor, limit: u64, out: &mut Vec<u8>) -> Result<(), OciError> {
        let what = check_descriptor(layer, limit)?;
        let url = format!("{}/v2/{}/blobs/{}", self.base, self.repository, layer.digest);
        let size = layer.size as u64;
        let mut last = None;
        for attempt in 0..3 {
            match self.get(&url, None, size).await {
                Ok(Body::Ok(bytes)) => {
                    let actual = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
                    if actual != layer.digest || bytes.len() as u64 != size {
                        return Err(OciError::Digest { what, expected: layer.digest.clone(), actual });
                    }
                    *out = bytes;
                    return Ok(());
                }
                Ok(Body::TooLarge | Body::TooSlow) => return Err(OciError::TooLarge { what, limit: size }),
                Err(e @ OciError::Registry { .. }) => {
                    tracing::warn!(attempt, blob = %what, error = %e, "blob download failed");
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("three attempts failed"))
    }
}

/// A registry's error body as a short, escaped line: the OCI error list
/// (`code: message`), else a prefix of the text.
fn error_text(body: &str) -> String {
    let parsed: Option<Vec<String>> = serde_json::from_str::<serde_json::Value>(body).ok().and_then(|v| {
        v.get("errors")?.as_array().map(|errs| {
            errs.iter()
                .take(3)
                .map(|e| {
                    let field = |k: &str| e.get(k).and_then(|x| x.as_str()).unwrap_or("");
                    format!("{}: {}", limes_bundle::untrusted(field("code")), limes_bundle::untrusted(field("message")))
                })
                .collect()
        })
    });
    match parsed {
        Some(v) if !v.is_empty() => v.join("; "),
        _ => limes_bundle::untrusted(body.trim()),
    }
}

/// Whether `bytes` received since `started` fall below `min_rate` bytes/s,
/// counted after [`RATE_GRACE`].
fn too_slow(started: std::time::Instant, bytes: u64, min_rate: u64) -> bool {
    let late = started.elapsed().saturating_sub(RATE_GRACE);
    (bytes as f64) < min_rate as f64 * late.as_secs_f64()
}

/// Read a response body, at most `limit` bytes: one byte more is
/// [`Body::TooLarge`] and the connection is dropped; so is a body that
/// arrives slower than `min_rate` bytes/s after [`RATE_GRACE`].
async fn read_capped(mut resp: reqwest::Response, limit: u64, min_rate: u64) -> Result<Body, reqwest::Error> {
    let started = std::time::Instant::now();
    let mut out = Vec::with_capacity(limit.min(1 << 20) as usize);
    while let Some(chunk) = resp.chunk().await? {
        if out.len() as u64 + chunk.len() as u64 > limit {
            return Ok(Body::TooLarge);
        }
        out.extend_from_slice(&chunk);
        if too_slow(started, out.len() as u64, min_rate) {
            return Ok(Body::TooSlow);
        }
    }
    Ok(Body::Ok(out))
}

/// A layer descriptor's name for messages, once its size fits `limit` and
/// its digest is a well-formed SHA-256.
fn check_descriptor(layer: &OciDescriptor, limit: u64) -> Result<String, OciError> {
    let what = layer.annotations.as_ref().and_then(|a| a.get(TITLE)).map(|t| limes_bundle::untrusted(t)).unwrap_or_else(|| layer.digest.clone());
    if layer.size < 0 || layer.size as u64 > limit {
        return Err(OciError::TooLarge { what, limit });
    }
    if !layer.digest.starts_with("sha256:") || layer.digest.len() != 71 || !layer.digest[7..].bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(OciError::Digest { what, expected: "a sha256 digest".into(), actual: limes_bundle::untrusted(&layer.digest) });
    }
    Ok(what)
}

impl Puller {
    /// [`Puller::fetch`] through a partial file `part` that survives an
    /// interrupted download: what it already holds is not fetched again
    /// (an HTTP range request asks for the rest), so a device on a link that
    /// drops pays for each byte once. The file is only a cache: the whole
    /// blob is hashed against the descriptor before it is returned, and a
    /// file that does not hash is removed. Returns the blob and how many of
    /// its bytes came over the network in this call.
    pub async fn fetch_resumable(&self, layer: &OciDescriptor, limit: u64, part: &std::path::Path) -> Result<(Vec<u8>, u64), OciError> {
        use std::io::Write;
        let what = check_descriptor(layer, limit)?;
        let size = layer.size as u64;
        let url = format!("{}/v2/{}/blobs/{}", self.base, self.repository, layer.digest);
        let io = |e: std::io::Error| self.err(format!("partial download {}: {e}", part.display()));
        let mut transferred = 0u64;
        let mut last = None;
        for attempt in 0..3 {
            let mut have = std::fs::symlink_metadata(part).map(|m| if m.is_file() { m.len() } else { u64::MAX }).unwrap_or(0);
            if have > size {
                // Not ours, or not this blob: start over.
                let _ = std::fs::remove_file(part);
                have = 0;
            }
            if have < size {
                let resp = match self.send(&url, None, (have > 0).then_some(have)).await {
                    Ok(r) => r,
                    Err(e @ OciError::Registry { .. }) => {
                        tracing::warn!(attempt, blob = %what, error = %e, "blob download failed");
                        last = Some(e);
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                // 206: the rest from `have`; 200: the registry ignored the
                // range, so the whole blob comes again.
                let resumed = resp.status() == reqwest::StatusCode::PARTIAL_CONTENT;
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .write(true)
                    .append(resumed)
                    .truncate(!resumed)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(part)
                    .map_err(io)?;
                let mut written = if resumed { have } else { 0 };
                let started = std::time::Instant::now();
                let mut resp = resp;
                let outcome = loop {
                    match resp.chunk().await {
                        Ok(Some(chunk)) => {
                            if written + chunk.len() as u64 > size {
                                break Some(OciError::TooLarge { what: what.clone(), limit: size });
                            }
                            f.write_all(&chunk).map_err(io)?;
                            written += chunk.len() as u64;
                            transferred += chunk.len() as u64;
                            self.received.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
                            if too_slow(started, written - if resumed { have } else { 0 }, self.min_rate) {
                                break Some(self.err(format!("{} sent slower than {} bytes/s", crate::host_only_str(&url), self.min_rate)));
                            }
                        }
                        Ok(None) => break None,
                        Err(e) => break Some(self.transport(e)),
                    }
                };
                f.sync_data().map_err(io)?;
                match outcome {
                    Some(OciError::TooLarge { .. }) => {
                        let _ = std::fs::remove_file(part);
                        return Err(OciError::TooLarge { what, limit: size });
                    }
                    Some(e) => {
                        tracing::warn!(attempt, blob = %what, kept = written, error = %e, "blob download interrupted; resuming");
                        last = Some(e);
                        continue;
                    }
                    None if written < size => {
                        last = Some(self.err(format!("{} ended the blob after {written} of {size} bytes", crate::host_only_str(&url))));
                        continue;
                    }
                    None => {}
                }
            }
            let bytes = std::fs::read(part).map_err(io)?;
            let actual = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
            let _ = std::fs::remove_file(part);
            if actual != layer.digest || bytes.len() as u64 != size {
                return Err(OciError::Digest { what, expected: layer.digest.clone(), actual });
            }
            return Ok((bytes, transferred));
        }
        Err(last.unwrap_or_else(|| self.err("the download did not finish")))
    }
}
