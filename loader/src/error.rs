//! What kind of failure an error is: the one rule behind `limes`' exit codes
//! and JSON `kind`s, and the containerd shim's exit codes. Each error type
//! of this crate says its own kind (`kind()`, an exhaustive match);
//! transparent wrappers delegate to what they wrap.

/// A failure, as a caller acts on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bytes failed verification (signature, digest, store integrity).
    Verification,
    Timeout,
    MemoryLimit,
    /// The function trapped or panicked.
    Trap,
    TooLarge,
    /// The invocation asked for something the function does not declare.
    Usage,
    /// No artifact could be loaded on this host.
    Load,
    NotInstalled,
    /// Anything else: I/O, network, configuration.
    Other,
}

pub const EXIT_ERROR: u8 = 1;
pub const EXIT_VERIFY: u8 = 3;
pub const EXIT_FUNCTION_ERROR: u8 = 4;
pub const EXIT_FAULT: u8 = 5;

impl ErrorKind {
    /// The `kind` field of a JSON error.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Verification => "verification",
            ErrorKind::Timeout => "timeout",
            ErrorKind::MemoryLimit => "memory-limit",
            ErrorKind::Trap => "trap",
            ErrorKind::TooLarge => "too-large",
            ErrorKind::Usage => "usage",
            ErrorKind::Load => "load",
            ErrorKind::NotInstalled => "not-installed",
            ErrorKind::Other => "error",
        }
    }

    /// The process exit code: 3 verification, 5 a fault of the function
    /// (trap, timeout, memory limit), else 1. (4, the function's own error
    /// answer, is not an error of ours.)
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorKind::Verification => EXIT_VERIFY,
            ErrorKind::Timeout | ErrorKind::MemoryLimit | ErrorKind::Trap => EXIT_FAULT,
            ErrorKind::TooLarge | ErrorKind::Usage | ErrorKind::Load | ErrorKind::NotInstalled | ErrorKind::Other => EXIT_ERROR,
        }
    }

    /// The kind of the outermost typed error in `e`'s chain (context layers
    /// are skipped; typed wrappers answer for what they wrap).
    pub fn of(e: &anyhow::Error) -> ErrorKind {
        use crate::{launch::LoadError, microvm::VmError, pool::PoolError, pull::PullError, serve::ServeError, store::StoreError, RunError};
        type Probe = fn(&(dyn std::error::Error + 'static)) -> Option<ErrorKind>;
        const TYPED: [Probe; 8] = [
            |c| c.downcast_ref::<RunError>().map(RunError::kind),
            |c| c.downcast_ref::<StoreError>().map(StoreError::kind),
            |c| c.downcast_ref::<LoadError>().map(LoadError::kind),
            |c| c.downcast_ref::<VmError>().map(VmError::kind),
            |c| c.downcast_ref::<PullError>().map(PullError::kind),
            |c| c.downcast_ref::<ServeError>().map(ServeError::kind),
            |c| c.downcast_ref::<PoolError>().map(PoolError::kind),
            |c| c.downcast_ref::<limes_bundle::BundleError>().map(bundle_kind),
        ];
        e.chain().find_map(|c| TYPED.iter().find_map(|probe| probe(c))).unwrap_or(ErrorKind::Other)
    }
}

/// `limes-bundle` knows only whether its error is a verification failure.
pub fn bundle_kind(e: &limes_bundle::BundleError) -> ErrorKind {
    if e.is_verification() {
        ErrorKind::Verification
    } else {
        ErrorKind::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{launch::LoadError, serve::ServeError, store::StoreError, RunError};

    #[test]
    fn wrappers_and_context_answer_for_what_they_wrap() {
        let timeout = RunError::Timeout { function: "f".into(), ms: 5 };
        let e = anyhow::Error::from(ServeError::Load(LoadError::Run(timeout))).context("serving f");
        assert_eq!((ErrorKind::of(&e), ErrorKind::of(&e).exit_code()), (ErrorKind::Timeout, EXIT_FAULT));
        let tampered = limes_bundle::BundleError::DigestMismatch { path: "a".into(), expected: "0".into(), actual: "1".into() };
        let e = anyhow::Error::from(StoreError::Bundle(tampered)).context("installing");
        assert_eq!(ErrorKind::of(&e).exit_code(), EXIT_VERIFY);
        let e = anyhow::Error::from(StoreError::NotInstalled { name: "x".into(), suggestion: None });
        assert_eq!(ErrorKind::of(&e).name(), "not-installed");
        assert_eq!(ErrorKind::of(&anyhow::anyhow!("untyped")), ErrorKind::Other);
    }
}
