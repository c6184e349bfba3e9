//! One request, run once in this process: how `limes run`, `limes-pack run`
//! and the containerd shim's `run` all do it, so they agree on deadlines,
//! guest output and exit codes by construction.

use crate::error::{EXIT_FAULT, EXIT_FUNCTION_ERROR};
use crate::runtime::{Invocation, InvokeOptions, LoadedFunction, RunError, Runtime};
use crate::watchdog::Watchdog;
use std::io::Write;

/// Invoke `f` once with `req`. Compiled code has no epoch checks, so the
/// deadline ends the process (exit 5) from a watchdog thread, after
/// `on_timeout` was given the timeout error (to print it, as a JSON line
/// too, and to clean up). The function's own stdout and stderr are copied
/// to this process's stderr: stdout is the answer's.
pub fn invoke(
    rt: &Runtime,
    f: &LoadedFunction,
    req: limes_sdk::Request,
    opts: &InvokeOptions,
    on_timeout: impl FnOnce(&RunError) + Send + 'static,
) -> Result<Invocation, RunError> {
    let timeout = f.timeout_error(opts);
    let _watchdog = Watchdog::arm(f.deadline(opts), EXIT_FAULT, move || on_timeout(&timeout));
    let inv = rt.invoke(f, req, opts)?;
    let _ = std::io::stderr().write_all(&inv.stdout);
    let _ = std::io::stderr().write_all(&inv.stderr);
    Ok(inv)
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
