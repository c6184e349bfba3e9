//! One request, run once in this process: how `limes run`, `limes-pack run`
//! and the containerd shim's `run` all do it, so they agree on deadlines,
//! guest output and exit codes by construction.

use crate::error::EXIT_FUNCTION_ERROR;
use crate::runtime::{Invocation, InvokeOptions, LoadedFunction, RunError, Runtime};
use crate::watchdog::{Expiry, Watchdog};
use std::io::Write;

/// Invoke `f` once with `req`. Compiled code has no epoch checks, so the
/// deadline ends the process (exit 5) from the watchdog's signal handler.
/// What it prints and removes then is decided now: `on_timeout` turns the
/// timeout error into an [`Expiry`] ([`timeout_expiry`], and a staged tree
/// to remove). The function's own stdout and stderr are copied to this
/// process's stderr: stdout is the answer's.
pub fn invoke(
    rt: &Runtime,
    f: &LoadedFunction,
    req: limes_sdk::Request,
    opts: &InvokeOptions,
    on_timeout: impl FnOnce(&RunError) -> Expiry,
) -> Result<Invocation, RunError> {
    let timeout = f.timeout_error(opts);
    let _watchdog = Watchdog::arm(f.deadline(opts), timeout.kind().exit_code(), on_timeout(&timeout))
        .map_err(|source| RunError::Watchdog { function: f.spec.name.clone(), source })?;
    let inv = rt.invoke(f, req, opts)?;
    let _ = std::io::stderr().write_all(&inv.stdout);
    let _ = std::io::stderr().write_all(&inv.stderr);
    Ok(inv)
}

/// What a run past its deadline prints: what any failed command prints
/// ([`crate::args::report_error`]; a JSON line too with `--json`).
pub fn timeout_expiry(json: bool, timeout: &RunError) -> Expiry {
    let (stdout, stderr) = crate::args::error_lines(json, timeout.kind().name(), &timeout.to_string());
    Expiry::new(stdout, stderr)
}

/// The exit code of an answer: 4 when the function answered with an error
/// (a `wasi:http` function: a 5xx status), else 0.
pub fn exit_code(inv: &Invocation) -> u8 {
    let failed = inv.http.as_ref().is_some_and(|h| h.status >= 500) || inv.result.is_err();
    if failed {
        EXIT_FUNCTION_ERROR
    } else {
        0
    }
}
