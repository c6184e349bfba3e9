//! Pools of pre-warmed worker processes (see [`crate::exec::worker`]) for
//! `limes serve`: a request takes an idle worker, its frame crosses a pipe,
//! and the answer comes back; a worker past the deadline is killed and a
//! replacement is started in the background, so a runaway call costs one
//! request and one process start, never the server.
//!
//! A pool serves one function, or (`WorkerSpec::shared`) any function of
//! the store: then each request names its function, and an idle worker that
//! has it loaded is preferred, so a busy function keeps hitting warm caches.

use crate::exec::worker::{decode_reply, encode_targeted, lru_use, Ready, Reply, WORKER_MAGIC};
use limes_sdk::frame;
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::Semaphore;

/// How to start a worker.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    /// How to start the `limes` executable.
    pub exe: WorkerExe,
    pub store: PathBuf,
    /// The function the workers serve; for a shared pool only a label.
    pub function: String,
    /// `Some(cache)`: shared workers (`limes worker --any`), each keeping
    /// up to `cache` loaded functions.
    pub shared: Option<usize>,
    pub dirs: Vec<(String, PathBuf)>,
    /// How long a worker may take to load and say ready.
    pub start_timeout: Duration,
    /// The keys (on its command line: public, and out of the store's reach)
    /// and trust directory the worker checks the function's signature with.
    pub anchors: crate::trust::Anchors,
}

/// A worker is started as `EXE [PREFIX...] --store STORE worker NAME`. The
/// prefix lets an embedder start the worker through something else (the
/// containerd shim runs it through the node's dynamic loader, which the
/// container's filesystem lacks).
#[derive(Debug, Clone)]
pub struct WorkerExe {
    pub exe: PathBuf,
    pub prefix: Vec<std::ffi::OsString>,
}

impl From<PathBuf> for WorkerExe {
    fn from(exe: PathBuf) -> WorkerExe {
        WorkerExe { exe, prefix: Vec::new() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("cannot start a worker for {function}: {message}")]
    Start { function: String, message: String },
    #[error("the worker for {function} could not load it: {message}")]
    Load { function: String, kind: crate::ErrorKind, message: String },
}

impl PoolError {
    pub fn kind(&self) -> crate::ErrorKind {
        match self {
            PoolError::Start { .. } => crate::ErrorKind::Other,
            // What the worker's load failed with (a tampered store:
            // verification).
            PoolError::Load { kind, .. } => *kind,
        }
    }
}

/// Why a call did not produce a reply.
#[derive(Debug)]
pub enum CallError {
    /// No worker became free within the queue timeout.
    Busy,
    /// The deadline passed; the worker was killed.
    Timeout,
    /// The worker died or broke the protocol; it was replaced.
    Crashed(String),
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
    /// Shared workers: what it has loaded, as far as this side knows
    /// (function and object, most recently used last; the worker evicts by
    /// the same rule, [`lru_use`]). Only a preference: a miss costs a load,
    /// not a failure.
    cached: VecDeque<(String, String)>,
}

/// A request for a shared pool: the function and the store object the
/// server serves.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub function: &'a str,
    pub object: &'a str,
}

pub struct Pool {
    spec: WorkerSpec,
    /// Idle workers, and a permit per idle worker to wait on.
    idle: Mutex<VecDeque<Worker>>,
    idle_permits: Semaphore,
    /// Workers replaced, by reason (`timeout`, `crash`).
    pub replaced: Mutex<BTreeMap<&'static str, u64>>,
    /// Workers alive: idle or answering (not those being replaced).
    pub live: std::sync::atomic::AtomicUsize,
    /// Requests that found no free worker within the queue timeout.
    pub queue_timeouts: std::sync::atomic::AtomicU64,
    /// What the first worker reported.
    pub ready: Ready,
}

async fn read_frame(r: &mut ChildStdout, magic: &[u8; 4]) -> std::io::Result<Vec<u8>> {
    let mut head = [0u8; 8];
    r.read_exact(&mut head).await?;
    let len = frame::header_len(&head, magic).map_err(|_| std::io::Error::other("bad frame magic from worker"))?;
    if len > frame::MAX_PAYLOAD {
        return Err(std::io::Error::other("oversized frame from worker"));
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload).await?;
    Ok(payload)
}

async fn write_frame(w: &mut ChildStdin, magic: &[u8; 4], payload: &[u8]) -> std::io::Result<()> {
    w.write_all(&frame::header(magic, payload.len())).await?;
    w.write_all(payload).await?;
    w.flush().await
}

/// Start one worker and wait for its ready frame.
async fn spawn(spec: &WorkerSpec) -> Result<(Worker, Ready), PoolError> {
    let start_err = |m: String| PoolError::Start { function: spec.function.clone(), message: m };
    let mut cmd = Command::new(&spec.exe.exe);
    cmd.args(&spec.exe.prefix).arg("--store").arg(&spec.store).arg("worker");
    match spec.shared {
        Some(cache) => cmd.arg("--any").arg("--cache").arg(cache.to_string()),
        None => cmd.arg(&spec.function),
    };
    for k in spec.anchors.keys().keys() {
        cmd.arg("--trusted-key").arg(k.to_base64());
    }
    if !spec.anchors.dir().as_os_str().is_empty() {
        cmd.arg("--trust-dir").arg(spec.anchors.dir());
    }
    for (n, p) in &spec.dirs {
        cmd.arg("--dir").arg(format!("{n}={}", p.display()));
    }
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit()).kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| start_err(format!("{}: {e}", spec.exe.exe.display())))?;
    let stdin = child.stdin.take().expect("piped");
    let mut stdout = child.stdout.take().expect("piped");
    let first = tokio::time::timeout(spec.start_timeout, read_frame(&mut stdout, WORKER_MAGIC)).await;
    let payload = match first {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => return Err(start_err(format!("no ready frame ({e})"))),
        Err(_) => return Err(start_err(format!("not ready within {:?}", spec.start_timeout))),
    };
    let reply = decode_reply(&payload).map_err(start_err)?;
    if let Some(e) = reply.meta.error {
        return Err(PoolError::Load { function: spec.function.clone(), kind: e.kind, message: e.message });
    }
    let ready = reply.meta.ready.ok_or_else(|| start_err("first frame is not a ready frame".into()))?;
    Ok((Worker { child, stdin, stdout, cached: VecDeque::new() }, ready))
}

impl Pool {
    /// Start `size` workers (in parallel) and wait until all are ready.
    pub async fn start(spec: WorkerSpec, size: usize) -> Result<Arc<Pool>, PoolError> {
        let started = futures_join(&spec, size.max(1)).await;
        let mut idle = VecDeque::new();
        let mut ready = None;
        for r in started {
            let (w, rd) = r?;
            ready.get_or_insert(rd);
            idle.push_back(w);
        }
        let live = idle.len();
        Ok(Arc::new(Pool {
            spec,
            idle_permits: Semaphore::new(live),
            idle: Mutex::new(idle),
            replaced: Mutex::default(),
            live: live.into(),
            queue_timeouts: 0.into(),
            ready: ready.expect("at least one worker"),
        }))
    }

    /// Run one request on a free worker within `deadline`: at most
    /// `queue_timeout` waiting for one (then [`CallError::Busy`], counted).
    ///
    /// Once a worker is taken, the exchange runs in a task of its own: a
    /// client that goes away drops this future, but not the exchange, which
    /// ends with an answer (the worker goes back to the pool, its state
    /// known) or at the deadline (the worker is killed and replaced). A
    /// dropped exchange would take a worker out of the pool for good.
    ///
    /// A shared pool needs the `target` (the request is sent with it); a
    /// pool of one function ignores it.
    pub async fn call(self: &Arc<Self>, target: Option<Target<'_>>, request: Vec<u8>, deadline: Duration, queue_timeout: Duration) -> Result<Reply, CallError> {
        match tokio::time::timeout(queue_timeout, self.idle_permits.acquire()).await {
            Ok(Ok(permit)) => permit.forget(),
            Ok(Err(_)) => return Err(CallError::Crashed("the pool is closed".into())),
            Err(_) => {
                self.queue_timeouts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Err(CallError::Busy);
            }
        }
        let (key, request) = match (self.spec.shared, target) {
            (Some(_), Some(t)) => (Some((t.function.to_string(), t.object.to_string())), encode_targeted(t.function, t.object, &request)),
            _ => (None, request),
        };
        let w = {
            let mut idle = self.idle.lock().unwrap();
            // Warm first: the most recently returned worker that has it.
            let warm = key.as_ref().and_then(|k| idle.iter().rposition(|w| w.cached.contains(k)));
            let w = match warm {
                Some(i) => idle.remove(i),
                None => idle.pop_front(),
            };
            w.expect("a permit stands for an idle worker")
        };
        let pool = self.clone();
        tokio::spawn(async move { pool.exchange(w, key, &request, deadline).await })
            .await
            .unwrap_or_else(|e| Err(CallError::Crashed(format!("the exchange with the worker failed: {e}"))))
    }

    /// Back to the idle workers (warm for `key`, in a shared pool).
    fn put_back(&self, mut w: Worker, key: Option<(String, String)>) {
        if let (Some(k), Some(cache)) = (key, self.spec.shared) {
            let function = k.0.clone();
            lru_use(&mut w.cached, k, |c| c.0 == function, cache);
        }
        self.idle.lock().unwrap().push_back(w);
        self.idle_permits.add_permits(1);
    }

    async fn exchange(self: &Arc<Self>, mut w: Worker, key: Option<(String, String)>, request: &[u8], deadline: Duration) -> Result<Reply, CallError> {
        if let Err(e) = write_frame(&mut w.stdin, frame::REQUEST_MAGIC, request).await {
            self.replace(w, "crash");
            return Err(CallError::Crashed(format!("writing to the worker: {e}")));
        }
        match tokio::time::timeout(deadline, read_frame(&mut w.stdout, WORKER_MAGIC)).await {
            Err(_) => {
                self.replace(w, "timeout");
                Err(CallError::Timeout)
            }
            Ok(Err(e)) => {
                let status = w.child.try_wait().ok().flatten();
                self.replace(w, "crash");
                Err(CallError::Crashed(match status {
                    Some(s) => format!("the worker exited ({s})"),
                    None => format!("reading from the worker: {e}"),
                }))
            }
            Ok(Ok(payload)) => match decode_reply(&payload) {
                Ok(reply) => {
                    self.put_back(w, key);
                    Ok(reply)
                }
                Err(e) => {
                    self.replace(w, "crash");
                    Err(CallError::Crashed(e))
                }
            },
        }
    }

    /// Kill `w` and start a replacement in the background.
    fn replace(self: &Arc<Self>, mut w: Worker, reason: &'static str) {
        let _ = w.child.start_kill();
        self.live.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        *self.replaced.lock().unwrap().entry(reason).or_default() += 1;
        tracing::warn!(function = %self.spec.function, reason, "replacing a worker");
        let pool = Arc::downgrade(self);
        let spec = self.spec.clone();
        tokio::spawn(async move {
            let _ = w.child.wait().await;
            for attempt in 0..REPLACEMENT_ATTEMPTS {
                match spawn(&spec).await {
                    Ok((fresh, _)) => {
                        if let Some(p) = pool.upgrade() {
                            p.live.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            p.put_back(fresh, None);
                        }
                        return;
                    }
                    Err(e) => {
                        tracing::error!(function = %spec.function, attempt, error = %e, "a replacement worker did not start");
                        tokio::time::sleep(replacement_backoff(attempt)).await;
                    }
                }
            }
        });
    }
}

/// How often a replacement (worker or VM) is started again after failing,
/// and how long to wait before each new attempt: 0.2 s, doubling.
pub(crate) const REPLACEMENT_ATTEMPTS: u32 = 5;

pub(crate) fn replacement_backoff(attempt: u32) -> Duration {
    Duration::from_millis(200 << attempt)
}

/// Start `n` workers concurrently.
async fn futures_join(spec: &WorkerSpec, n: usize) -> Vec<Result<(Worker, Ready), PoolError>> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let spec = spec.clone();
        set.spawn(async move { spawn(&spec).await });
    }
    let mut out = Vec::with_capacity(n);
    while let Some(r) = set.join_next().await {
        out.push(r.unwrap_or_else(|e| Err(PoolError::Start { function: spec.function.clone(), message: e.to_string() })));
    }
    out
}
