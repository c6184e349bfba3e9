//! Calling a function's executors (worker processes, pre-booted microVMs)
//! and what a request resolved to.

use super::*;

/// What a function answered.
pub(super) enum Answer {
    /// A limes function's result.
    Limes(Result<limes_sdk::Response, limes_sdk::Error>),
    /// A `wasi:http` function's status, headers and body.
    Http(crate::wasi_http::HttpHead, Vec<u8>),
}

/// What a request resolved to: the function's answer, or a failure (its
/// kind decides the HTTP status, and the message goes to the log).
pub(super) type Outcome = Result<Answer, (ErrorKind, String)>;

pub(super) async fn call_workers(
    app: &AppState,
    pool: &Arc<Pool>,
    target: Option<Target<'_>>,
    req: &limes_sdk::Request,
    deadline: Duration,
    queue: Duration,
    name: &str,
) -> Outcome {
    let payload = limes_sdk::frame::encode_request(req);
    match pool.call(target, payload, deadline, queue).await {
        Err(CallError::Busy) => Err((ErrorKind::Busy, "all workers are busy; retry later".into())),
        Err(CallError::Timeout) => Err((ErrorKind::Timeout, RunError::Timeout { function: name.to_string(), ms: deadline.as_millis() as u64 }.to_string())),
        Err(CallError::Crashed(why)) => Err((ErrorKind::WorkerCrashed, format!("{name}: the worker crashed ({why}); it was replaced"))),
        Ok(reply) => {
            if let Some(us) = reply.meta.loaded_us {
                tracing::debug!(function = %name, load_us = us, "a shared worker loaded the function");
            }
            log_guest_output(name, &reply.stdout, &reply.stderr);
            count_denied(app, name, reply.meta.outbound_denied);
            if let (None, Some(head)) = (&reply.meta.error, reply.meta.http) {
                return Ok(Answer::Http(head, reply.response));
            }
            match reply.meta.error {
                Some(e) => Err((e.kind, e.message)),
                None => limes_sdk::frame::decode_response(&reply.response)
                    .map(Answer::Limes)
                    .map_err(|e| (ErrorKind::Other, format!("bad answer from the worker: {e}"))),
            }
        }
    }
}

pub(super) async fn call_vm(pool: &Arc<crate::microvm::pool::VmPool>, req: limes_sdk::Request, deadline: Duration, queue: Duration, name: &str) -> Outcome {
    let pool = pool.clone();
    match tokio::task::spawn_blocking(move || pool.call(&req, deadline, queue)).await {
        Err(join) => Err((ErrorKind::Other, format!("microVM task failed: {join}"))),
        Ok(Err(crate::microvm::pool::VmCallError::Busy)) => Err((ErrorKind::Busy, "no pre-booted microVM is free; retry later".into())),
        // The VM's own kind: a timeout or memory limit of the function, a
        // flooding guest a trap, a hypervisor that failed an error of ours.
        Ok(Err(crate::microvm::pool::VmCallError::Vm(e))) => Err((e.kind(), format!("{name}: {e}"))),
        Ok(Ok(o)) => {
            tracing::debug!(function = %name, exec_us = o.exec_time.as_micros() as u64, "microVM answered");
            super::http::log_guest_streams(name, &[("console", &o.output)]);
            Ok(Answer::Limes(o.result))
        }
    }
}
