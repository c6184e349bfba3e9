//! Where an `anyhow::Error` leaves a program (the `limes` binary, the
//! containerd shim), its kind: that of the outermost typed error in its
//! chain (context layers are skipped; typed wrappers answer for what they
//! wrap). An error of no known type is [`ErrorKind::Other`].

use crate::error::{bundle_kind, ErrorKind};
use crate::sync::{health::HealthError, SyncError};
use crate::{exec::pool::PoolError, load::LoadError, microvm::VmError, pull::PullError, serve::ServeError, store::StoreError, RunError};

/// The kind of `e` (see the module documentation).
pub fn kind_of(e: &anyhow::Error) -> ErrorKind {
    type Probe = fn(&(dyn std::error::Error + 'static)) -> Option<ErrorKind>;
    const TYPED: [Probe; 10] = [
        |c| c.downcast_ref::<RunError>().map(RunError::kind),
        |c| c.downcast_ref::<StoreError>().map(StoreError::kind),
        |c| c.downcast_ref::<LoadError>().map(LoadError::kind),
        |c| c.downcast_ref::<VmError>().map(VmError::kind),
        |c| c.downcast_ref::<PullError>().map(PullError::kind),
        |c| c.downcast_ref::<ServeError>().map(ServeError::kind),
        |c| c.downcast_ref::<PoolError>().map(PoolError::kind),
        |c| c.downcast_ref::<SyncError>().map(SyncError::kind),
        |c| c.downcast_ref::<HealthError>().map(HealthError::kind),
        |c| c.downcast_ref::<limes_bundle::BundleError>().map(bundle_kind),
    ];
    e.chain().find_map(|c| TYPED.iter().find_map(|probe| probe(c))).unwrap_or(ErrorKind::Other)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{EXIT_FAULT, EXIT_VERIFY};

    #[test]
    fn wrappers_and_context_answer_for_what_they_wrap() {
        let timeout = RunError::Timeout { function: "f".into(), ms: 5 };
        let e = anyhow::Error::from(ServeError::Load(LoadError::Run(timeout))).context("serving f");
        assert_eq!((kind_of(&e), kind_of(&e).exit_code()), (ErrorKind::Timeout, EXIT_FAULT));
        let tampered = limes_bundle::BundleError::DigestMismatch { path: "a".into(), expected: "0".into(), actual: "1".into() };
        let e = anyhow::Error::from(StoreError::Bundle(tampered)).context("installing");
        assert_eq!(kind_of(&e).exit_code(), EXIT_VERIFY);
        let e = anyhow::Error::from(StoreError::NotInstalled { name: "x".into(), suggestion: None });
        assert_eq!(kind_of(&e).name(), "not-installed");
        assert_eq!(kind_of(&anyhow::anyhow!("untyped")), ErrorKind::Other);
    }

    /// The kinds that used to disagree between executors (#28): each error
    /// has one kind wherever it is reported (CLI, in-process serve, worker
    /// protocol, microVM pool), and it survives the worker pipe as itself.
    #[test]
    fn one_kind_per_error_wherever_it_is_reported() {
        let f = || "f".to_string();
        let table: Vec<(anyhow::Error, ErrorKind)> = vec![
            (anyhow::Error::from(RunError::Instantiate { function: f(), message: "m".into() }), ErrorKind::Trap),
            (anyhow::Error::from(RunError::Trap { function: f(), message: "m".into() }), ErrorKind::Trap),
            (anyhow::Error::from(RunError::Timeout { function: f(), ms: 1 }), ErrorKind::Timeout),
            (anyhow::Error::from(RunError::MemoryLimit { function: f(), limit: 1 }), ErrorKind::MemoryLimit),
            (anyhow::Error::from(RunError::InputTooLarge { function: f(), size: 2, limit: 1 }), ErrorKind::TooLarge),
            (anyhow::Error::from(RunError::UndeclaredDir { function: f(), name: "d".into(), declared: String::new() }), ErrorKind::Usage),
            (anyhow::Error::from(RunError::NoUsableTier { function: f(), reasons: String::new() }), ErrorKind::Load),
            (anyhow::Error::from(VmError::Flood(1)), ErrorKind::Trap),
            (anyhow::Error::from(VmError::Run(RunError::Timeout { function: f(), ms: 1 })), ErrorKind::Timeout),
            // A hypervisor that failed is not the function's trap.
            (anyhow::Error::from(VmError::NoHypervisor), ErrorKind::Other),
            (anyhow::Error::from(VmError::Ended { detail: String::new() }), ErrorKind::Other),
            (anyhow::Error::from(PoolError::Load { function: f(), kind: ErrorKind::Verification, message: "m".into() }), ErrorKind::Verification),
            (anyhow::Error::from(PoolError::Start { function: f(), message: "m".into() }), ErrorKind::Other),
            (anyhow::Error::from(StoreError::Tampered { path: "p".into(), detail: "d".into() }), ErrorKind::Verification),
        ];
        for (e, want) in table {
            assert_eq!(kind_of(&e), want, "{e}");
        }
        // Through the worker pipe: the kind, not a string that may drift.
        let w = crate::exec::worker::ReplyMeta {
            error: Some(crate::exec::worker::WorkerError { kind: ErrorKind::WorkerCrashed, message: "m".into() }),
            ..Default::default()
        };
        let back: crate::exec::worker::ReplyMeta = serde_json::from_slice(&serde_json::to_vec(&w).unwrap()).unwrap();
        assert_eq!(back.error.unwrap().kind, ErrorKind::WorkerCrashed);
        assert_eq!(RunError::Instantiate { function: f(), message: "m".into() }.kind().http_status(), 500);
        assert_eq!(ErrorKind::Timeout.http_status(), 504);
    }
}
