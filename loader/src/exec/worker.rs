//! Worker processes: one function, pre-warmed, serving requests from a pipe.
//!
//! Compiled code carries no epoch checks (see the engine profile), so a call
//! cannot be interrupted from inside its process. `limes serve` therefore
//! runs each function in worker processes (`limes worker NAME`): the code is
//! mapped and an `InstancePre` is ready before the first request; each
//! request gets a fresh instance; a worker past its deadline is killed and
//! replaced, which ends exactly one request and nothing else.
//!
//! Protocol over the worker's stdin/stdout (integers little-endian):
//! the parent sends request frames (`LMQ1`, [`frame::encode_request`]); the
//! worker answers each with one `LMW1` frame whose payload is
//! `u32:meta_len meta_json response stdout stderr`, where `meta_json` gives
//! the lengths of the three byte strings after it and, when the call failed
//! in the runtime, the error's kind and message. Before the first request the
//! worker sends one `LMW1` frame with `{"ready": ...}` (or the load error).
//!
//! A shared worker (`limes worker --any`, [`run_any_worker`]) is not tied to
//! one function: each request frame names the function and the store object
//! the server serves ([`encode_targeted`]), and the worker loads it on first
//! use (signature and artifact checked as above) into a bounded cache of
//! loaded functions, least recently used first out. It is how `limes serve`
//! keeps a store of a thousand functions in a few processes.

use crate::load::LoadMode;
use crate::runtime::{InvokeOptions, RunError, Runtime, RuntimeOptions};
use crate::store::{Integrity, Store};
use limes_sdk::frame::{self, Frame};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::path::PathBuf;

/// Magic of worker-to-parent frames.
pub const WORKER_MAGIC: &[u8; 4] = b"LMW1";

/// What a worker says about one call, before the bytes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReplyMeta {
    /// Set on the first frame: the worker loaded its function.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<Ready>,
    /// The runtime failed the call (or the load): kind and message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<WorkerError>,
    #[serde(default)]
    pub response_len: u32,
    #[serde(default)]
    pub stdout_len: u32,
    #[serde(default)]
    pub stderr_len: u32,
    /// A `wasi:http` function's status and headers (`response` is then its
    /// raw body, not an encoded limes response).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<crate::wasi_http::HttpHead>,
    /// Outbound requests denied during the call.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub outbound_denied: u32,
    /// A shared worker loaded the function for this call (it was not in its
    /// cache): how long the load took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loaded_us: Option<u64>,
    #[serde(default)]
    pub instantiate_us: u64,
    #[serde(default)]
    pub call_us: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ready {
    pub tier: Option<String>,
    pub load_us: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerError {
    /// The failure's kind, as every error of this crate names it.
    pub kind: crate::ErrorKind,
    pub message: String,
}

impl WorkerError {
    fn of(e: &RunError) -> WorkerError {
        WorkerError { kind: e.kind(), message: e.to_string() }
    }

    /// A failed load (lookup, signature, artifact, mapping), classified by type.
    fn of_load(e: &anyhow::Error) -> WorkerError {
        WorkerError { kind: crate::classify::kind_of(e), message: format!("{e:#}") }
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// One decoded reply.
#[derive(Debug)]
pub struct Reply {
    pub meta: ReplyMeta,
    /// [`frame::encode_response`] of the function's answer (empty on error).
    pub response: Vec<u8>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Encode a reply payload.
pub fn encode_reply(meta: &ReplyMeta, response: &[u8], stdout: &[u8], stderr: &[u8]) -> Vec<u8> {
    let mut meta = meta.clone();
    meta.response_len = response.len() as u32;
    meta.stdout_len = stdout.len() as u32;
    meta.stderr_len = stderr.len() as u32;
    let json = serde_json::to_vec(&meta).expect("meta serializes");
    let mut out = Vec::with_capacity(4 + json.len() + response.len() + stdout.len() + stderr.len());
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(response);
    out.extend_from_slice(stdout);
    out.extend_from_slice(stderr);
    out
}

/// Decode a reply payload.
pub fn decode_reply(p: &[u8]) -> Result<Reply, String> {
    let bad = |w: &str| format!("malformed worker reply: {w}");
    let n = u32::from_le_bytes(p.get(..4).ok_or_else(|| bad("short"))?.try_into().unwrap()) as usize;
    let json = p.get(4..4 + n).ok_or_else(|| bad("short meta"))?;
    let meta: ReplyMeta = serde_json::from_slice(json).map_err(|e| bad(&e.to_string()))?;
    let rest = &p[4 + n..];
    let (r, s, e) = (meta.response_len as usize, meta.stdout_len as usize, meta.stderr_len as usize);
    if rest.len() != r + s + e {
        return Err(bad("lengths do not add up"));
    }
    Ok(Reply { response: rest[..r].to_vec(), stdout: rest[r..r + s].to_vec(), stderr: rest[r + s..].to_vec(), meta })
}

/// What a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub function: String,
    pub dirs: Vec<(String, PathBuf)>,
    /// What the function's signature is checked against before its code is
    /// mapped (the server's anchors, passed on the command line).
    pub anchors: crate::trust::Anchors,
}

/// The worker's main loop: load the function (re-hashing its artifact), say
/// ready, then answer request frames from `input` on `output` until the
/// parent closes the pipe or sends the shutdown frame.
pub fn run_worker(store: &Store, opts: &WorkerOptions, input: &mut impl Read, output: &mut impl Write) -> anyhow::Result<()> {
    let loaded = (|| -> anyhow::Result<_> {
        let t = std::time::Instant::now();
        let rt = Runtime::new(&RuntimeOptions { pooling: true, max_instances: 1, ..Default::default() })?;
        let f = store.load(&opts.function, &opts.anchors)?;
        let loaded = crate::load::load(&rt, &f, LoadMode::Auto, Integrity::Rehash)?;
        Ok((rt, loaded, t.elapsed()))
    })();
    let (rt, loaded, load_time) = match loaded {
        Ok(l) => l,
        Err(e) => {
            let meta = ReplyMeta { error: Some(WorkerError::of_load(&e)), ..Default::default() };
            frame::write_frame(output, WORKER_MAGIC, &encode_reply(&meta, &[], &[], &[]))?;
            return Err(e);
        }
    };
    let ready = ReplyMeta { ready: Some(Ready { tier: loaded.tier.clone(), load_us: load_time.as_micros() as u64 }), ..Default::default() };
    frame::write_frame(output, WORKER_MAGIC, &encode_reply(&ready, &[], &[], &[]))?;
    let invoke = InvokeOptions { dirs: opts.dirs.clone(), ..Default::default() };
    loop {
        let req = match frame::read_frame(input, frame::REQUEST_MAGIC)? {
            Frame::Payload(p) => frame::decode_request(&p).map_err(|e| anyhow::anyhow!("{e}"))?,
            Frame::Shutdown | Frame::Eof => return Ok(()),
        };
        frame::write_frame(output, WORKER_MAGIC, &call(&rt, &loaded, req, &invoke, None))?;
    }
}

/// Run one request and encode the reply (`loaded_us`: the call had to load
/// the function first).
fn call(rt: &Runtime, f: &crate::runtime::LoadedFunction, req: limes_sdk::Request, invoke: &InvokeOptions, loaded_us: Option<u64>) -> Vec<u8> {
    match rt.invoke(f, req, invoke) {
        Ok(inv) => {
            let meta = ReplyMeta {
                instantiate_us: inv.instantiate_time.as_micros() as u64,
                call_us: inv.call_time.as_micros() as u64,
                outbound_denied: inv.outbound_denied,
                http: inv.http.clone(),
                loaded_us,
                ..Default::default()
            };
            let response = match (&inv.http, &inv.result) {
                (Some(_), Ok(r)) => r.body.clone(),
                _ => frame::encode_response(&inv.result),
            };
            encode_reply(&meta, &response, &inv.stdout, &inv.stderr)
        }
        Err(e) => encode_reply(&ReplyMeta { error: Some(WorkerError::of(&e)), loaded_us, ..Default::default() }, &[], &[], &[]),
    }
}

/// A request for a shared worker: `u32:name_len name u32:object_len object`
/// then the [`frame::encode_request`] payload.
pub fn encode_targeted(function: &str, object: &str, request: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + function.len() + object.len() + request.len());
    for s in [function, object] {
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    out.extend_from_slice(request);
    out
}

/// The function, object and request of an [`encode_targeted`] payload.
pub fn decode_targeted(p: &[u8]) -> Result<(&str, &str, &[u8]), String> {
    let mut rest = p;
    let mut take = || -> Result<&str, String> {
        let n = u32::from_le_bytes(rest.get(..4).ok_or("short targeted request")?.try_into().unwrap()) as usize;
        let s = rest.get(4..4 + n).ok_or("short targeted request")?;
        rest = &rest[4 + n..];
        std::str::from_utf8(s).map_err(|_| "a name that is not UTF-8".to_string())
    };
    let (function, object) = (take()?, take()?);
    Ok((function, object, rest))
}

/// Mark `entry` most recently used in `lru` (kept last): any other entry
/// for the same function goes (`same_function`), then the least recently
/// used beyond `cap`. The one eviction rule of a shared worker's cache,
/// which the server's picture of that cache ([`crate::exec::pool`])
/// follows by using it too.
pub(crate) fn lru_use<T>(lru: &mut std::collections::VecDeque<T>, entry: T, same_function: impl Fn(&T) -> bool, cap: usize) {
    lru.retain(|e| !same_function(e));
    lru.push_back(entry);
    while lru.len() > cap.max(1) {
        lru.pop_front();
    }
}

/// What a shared worker runs.
#[derive(Debug, Clone)]
pub struct AnyWorkerOptions {
    pub dirs: Vec<(String, PathBuf)>,
    pub anchors: crate::trust::Anchors,
    /// Loaded functions kept (least recently used out first).
    pub cache: usize,
}

/// A shared worker's main loop: say ready, then answer targeted request
/// frames, loading each function on first use. A function that does not
/// load (removed, tampered, unsigned) fails its own requests, not the
/// worker.
pub fn run_any_worker(store: &Store, opts: &AnyWorkerOptions, input: &mut impl Read, output: &mut impl Write) -> anyhow::Result<()> {
    let t = std::time::Instant::now();
    let rt = match Runtime::new(&RuntimeOptions { pooling: true, max_instances: 1, ..Default::default() }) {
        Ok(rt) => rt,
        Err(e) => {
            let meta = ReplyMeta { error: Some(WorkerError::of(&e)), ..Default::default() };
            frame::write_frame(output, WORKER_MAGIC, &encode_reply(&meta, &[], &[], &[]))?;
            return Err(e.into());
        }
    };
    let ready = ReplyMeta { ready: Some(Ready { tier: None, load_us: t.elapsed().as_micros() as u64 }), ..Default::default() };
    frame::write_frame(output, WORKER_MAGIC, &encode_reply(&ready, &[], &[], &[]))?;
    let invoke = InvokeOptions { dirs: opts.dirs.clone(), ..Default::default() };
    // Most recently used last: (function, object, loaded).
    let mut cache: std::collections::VecDeque<(String, String, crate::runtime::LoadedFunction)> = Default::default();
    loop {
        let payload = match frame::read_frame(input, frame::REQUEST_MAGIC)? {
            Frame::Payload(p) => p,
            Frame::Shutdown | Frame::Eof => return Ok(()),
        };
        let (function, object, req) = decode_targeted(&payload).map_err(|e| anyhow::anyhow!("{e}"))?;
        let req = frame::decode_request(req).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut loaded_us = None;
        let hit = cache.iter().position(|(f, o, _)| f == function && o == object);
        let entry = match hit {
            Some(i) => cache.remove(i).expect("found"),
            None => {
                let t = std::time::Instant::now();
                let loaded = (|| -> anyhow::Result<_> {
                    let f = store.load(function, &opts.anchors)?;
                    // The store moved on since the server looked: serve what
                    // it holds now (the server follows within a poll).
                    let object = f.record.object.clone();
                    Ok((object, crate::load::load(&rt, &f, LoadMode::Auto, Integrity::Rehash)?))
                })();
                match loaded {
                    Ok((object, l)) => {
                        loaded_us = Some(t.elapsed().as_micros() as u64);
                        (function.to_string(), object, l)
                    }
                    Err(e) => {
                        let meta = ReplyMeta { error: Some(WorkerError::of_load(&e)), ..Default::default() };
                        frame::write_frame(output, WORKER_MAGIC, &encode_reply(&meta, &[], &[], &[]))?;
                        continue;
                    }
                }
            }
        };
        let reply = call(&rt, &entry.2, req, &invoke, loaded_us);
        lru_use(&mut cache, entry, |(f, _, _)| f == function, opts.cache);
        frame::write_frame(output, WORKER_MAGIC, &reply)?;
    }
}
