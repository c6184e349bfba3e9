//! The health check of a candidate version: the request its signed manifest
//! declares (`health` in `[package.metadata.limes]`), sent to the candidate
//! in a child `limes run --candidate` before any traffic reaches it, so a
//! version that traps, hangs or crashes ends that child, never the agent.
//!
//! Without a declaration, the check is that the version loads, instantiates
//! and answers an empty request without a fault (a function's own error
//! answer to an empty body counts as healthy: it ran).

use crate::store::InstalledFunction;
use crate::ErrorKind;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How the agent reaches the candidate: this `limes` executable and the
/// store and trust it runs with.
#[derive(Debug, Clone)]
pub struct Checker {
    pub exe: PathBuf,
    pub store: PathBuf,
    pub trust_dir: PathBuf,
    /// Keys given explicitly (the device configuration's), passed on.
    pub trust: Vec<PathBuf>,
}

/// Time a child may take beyond the function's own limit: process start,
/// verification and mapping (seconds under emulation).
const CHILD_GRACE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("cannot start the health check of {name} ({exe})")]
    Spawn { name: String, exe: PathBuf, source: std::io::Error },
    #[error("{name} {version} failed its health check: {detail}")]
    Failed { name: String, version: String, kind: ErrorKind, detail: String },
}

impl HealthError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            HealthError::Spawn { .. } => ErrorKind::Other,
            HealthError::Failed { kind, .. } => *kind,
        }
    }
}

impl Checker {
    /// Send the candidate of `f`'s name its health request and compare the
    /// answer; returns how long the check took.
    pub fn check_candidate(&self, f: &InstalledFunction) -> Result<Duration, HealthError> {
        let name = f.record.name.clone();
        let started = Instant::now();
        let health = f.manifest.health.clone().unwrap_or_default();
        let mut cmd = Command::new(&self.exe);
        cmd.arg("--store").arg(&self.store).arg("--trust-dir").arg(&self.trust_dir).args(["--json", "--quiet", "run", &name, "--candidate", "--input", "-"]);
        for k in &self.trust {
            cmd.arg("--trust").arg(k);
        }
        if let Some(p) = &health.path {
            cmd.args(["--path", p]);
        }
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|source| HealthError::Spawn { name: name.clone(), exe: self.exe.clone(), source })?;
        let failed = |kind: ErrorKind, detail: String| HealthError::Failed { name: name.clone(), version: f.record.version.clone(), kind, detail };
        if let Some(mut stdin) = child.stdin.take() {
            // A child that exits before reading is judged by its answer.
            let _ = stdin.write_all(health.input.as_bytes());
        }
        let limit = Duration::from_millis(f.manifest.limits.timeout_ms) + CHILD_GRACE;
        let out = wait_bounded(child, limit).ok_or_else(|| failed(ErrorKind::Timeout, format!("no answer within {} ms", limit.as_millis())))?;
        let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last_line = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string();
        let kind = answer.get("kind").and_then(|k| serde_json::from_value::<ErrorKind>(k.clone()).ok());
        match out.status.code() {
            Some(0) => {}
            // The function's own error answer.
            Some(4) if health.expect.is_none() && health.status.is_none() && f.manifest.health.is_none() => return Ok(started.elapsed()),
            Some(4) => return Err(failed(ErrorKind::Usage, format!("it answered with an error: {}", crate::args::escape_log(&last_line)))),
            code => {
                let kind = kind.unwrap_or(if code == Some(5) { ErrorKind::Trap } else { ErrorKind::Load });
                let detail = if last_line.is_empty() { format!("the check ended with {}", out.status) } else { crate::args::escape_log(&last_line) };
                return Err(failed(kind, format!("{}: {detail}", kind.name())));
            }
        }
        let status = answer.get("status").and_then(|s| s.as_u64());
        match (health.status, status) {
            (Some(want), Some(got)) if u64::from(want) != got => return Err(failed(ErrorKind::Usage, format!("status {got}, expected {want}"))),
            (None, Some(got)) if !(200..300).contains(&got) && f.manifest.health.is_some() => {
                return Err(failed(ErrorKind::Usage, format!("status {got}, expected a 2xx")));
            }
            _ => {}
        }
        if let Some(want) = &health.expect {
            use base64::Engine as _;
            let body =
                answer.get("body_base64").and_then(|b| b.as_str()).and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok()).unwrap_or_default();
            if body != want.as_bytes() {
                let shown: String = String::from_utf8_lossy(&body).chars().take(80).collect();
                return Err(failed(ErrorKind::Usage, format!("answered {:?}, expected {:?}", crate::args::escape_log(&shown), crate::args::escape_log(want))));
            }
        }
        Ok(started.elapsed())
    }
}

/// Wait for `child` at most `limit`; a child still running then is killed
/// (None).
fn wait_bounded(mut child: std::process::Child, limit: Duration) -> Option<std::process::Output> {
    use std::io::Read;
    let deadline = Instant::now() + limit;
    // Drain the pipes on threads so a chatty child cannot block on them.
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let so = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(o) = out.as_mut() {
            let _ = o.take(1 << 20).read_to_end(&mut v);
        }
        v
    });
    let se = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(e) = err.as_mut() {
            let _ = e.take(64 << 10).read_to_end(&mut v);
        }
        v
    });
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    };
    Some(std::process::Output { status, stdout: so.join().unwrap_or_default(), stderr: se.join().unwrap_or_default() })
}
