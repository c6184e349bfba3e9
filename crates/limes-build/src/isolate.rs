//! Keeping what a build runs away from what it signs.
//!
//! A build runs third-party code as this user: every dependency's
//! `build.rs` and proc macros, through cargo. Such code may leave a process
//! behind (double fork, `setsid`) to rewrite files later, or read another
//! process's memory and environment. So a signed build has two phases:
//!
//! 1. **cargo** (the component, the microVM image): limes-pack is the child
//!    subreaper of everything it starts, so an orphaned descendant is
//!    reparented to limes-pack instead of to init;
//! 2. **sign**: first every stray descendant is killed and reaped
//!    ([`end_strays`]), so nothing the build started is alive; then the
//!    process stops being dumpable ([`not_dumpable`]: no same-user ptrace,
//!    `/proc/PID/mem` or `/proc/PID/environ`), and only then is the secret key
//!    read. The native code that goes into the bundle is compiled in this
//!    phase, in memory, from the validated component, never taken from a
//!    cache the build could have written.
//!
//! What this cannot stop (docs/trust.md says so): code running
//! as root, and a process of this user started outside this build (a
//! shell, an editor) that the build's code asks to act for it.
//!
//! Must not touch: what is built (see `compile`, `aot`).

use std::io;

/// Make this process the subreaper of its descendants (Linux 3.4+).
pub fn become_subreaper() -> io::Result<()> {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag; no pointers.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Stop this process from being dumpable: processes of the same user can
/// then no longer ptrace it or read its memory or environment through
/// `/proc` (root still can). Lasts until exit.
pub fn not_dumpable() -> io::Result<()> {
    // SAFETY: PR_SET_DUMPABLE takes an integer flag; no pointers.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// This process's live children, read from `/proc` (a child that is a
/// zombie keeps its PID until reaped, so a PID read here is still ours).
fn children() -> Vec<libc::pid_t> {
    let me = std::process::id().to_string();
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<libc::pid_t>().ok()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|s| s.lines().find_map(|l| l.strip_prefix("PPid:").map(|p| p.trim() == me)))
                .unwrap_or(false)
        })
        .collect()
}

/// Kill and reap every process still descending from this one (call when
/// every child this process waits for has ended: after cargo). Killing one
/// reparents its own children to us, so this repeats until none is left.
/// Returns how many were ended.
pub fn end_strays() -> io::Result<usize> {
    let mut ended = 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let kids = children();
        if kids.is_empty() {
            return Ok(ended);
        }
        if std::time::Instant::now() > deadline {
            return Err(io::Error::other(format!("processes left by the build would not end: {kids:?}")));
        }
        for pid in kids {
            tracing::warn!(pid, "ending a process the build left running");
            // SAFETY: `pid` is our child (not yet reaped, so not reused);
            // kill and waitpid take plain integers.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
            ended += 1;
        }
    }
}
