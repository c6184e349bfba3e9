//! What kind of failure an error is: the one list behind `limes`' exit
//! codes, JSON `kind`s, `limes serve`'s HTTP statuses, the worker protocol
//! and the containerd shim's exit codes.
//!
//! This module is a leaf: it imports no other module of this crate. Each
//! error type says its own kind (`kind()`, an exhaustive match, so a new
//! variant cannot fall through); an `anyhow::Error` leaving a program is
//! classified where it leaves a program (`limes::classify`).

use serde::{Deserialize, Serialize};

/// A failure, as a caller acts on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// Bytes failed verification (signature, digest, store integrity).
    Verification,
    Timeout,
    MemoryLimit,
    /// The function trapped or panicked (or failed to instantiate).
    Trap,
    TooLarge,
    /// The invocation asked for something the function does not declare.
    Usage,
    /// No artifact could be loaded on this host.
    Load,
    NotInstalled,
    /// Every executor of the function is busy (serve).
    Busy,
    /// The worker process serving the request ended (serve).
    WorkerCrashed,
    /// Anything else: I/O, network, configuration, a hypervisor that failed.
    #[serde(rename = "error")]
    Other,
}

pub const EXIT_ERROR: u8 = 1;
pub const EXIT_VERIFY: u8 = 3;
pub const EXIT_FUNCTION_ERROR: u8 = 4;
pub const EXIT_FAULT: u8 = 5;

impl ErrorKind {
    /// Every kind, for tests and documentation.
    pub const ALL: [ErrorKind; 11] = [
        ErrorKind::Verification,
        ErrorKind::Timeout,
        ErrorKind::MemoryLimit,
        ErrorKind::Trap,
        ErrorKind::TooLarge,
        ErrorKind::Usage,
        ErrorKind::Load,
        ErrorKind::NotInstalled,
        ErrorKind::Busy,
        ErrorKind::WorkerCrashed,
        ErrorKind::Other,
    ];

    /// The `kind` field of a JSON error (the serde name).
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
            ErrorKind::Busy => "busy",
            ErrorKind::WorkerCrashed => "worker-crashed",
            ErrorKind::Other => "error",
        }
    }

    /// The process exit code: 3 verification, 5 a fault of the function
    /// (trap, timeout, memory limit, its executor dying), else 1. (4, the
    /// function's own error answer, is not an error of ours.)
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorKind::Verification => EXIT_VERIFY,
            ErrorKind::Timeout | ErrorKind::MemoryLimit | ErrorKind::Trap | ErrorKind::WorkerCrashed => EXIT_FAULT,
            ErrorKind::TooLarge | ErrorKind::Usage | ErrorKind::Load | ErrorKind::NotInstalled | ErrorKind::Busy | ErrorKind::Other => EXIT_ERROR,
        }
    }

    /// The HTTP status `limes serve` answers with.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorKind::Timeout => 504,
            ErrorKind::TooLarge => 413,
            ErrorKind::Usage => 400,
            ErrorKind::NotInstalled => 404,
            ErrorKind::Busy => 503,
            ErrorKind::Verification | ErrorKind::MemoryLimit | ErrorKind::Trap | ErrorKind::Load | ErrorKind::WorkerCrashed | ErrorKind::Other => 500,
        }
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

    #[test]
    fn names_are_the_serde_names_and_unique() {
        let mut seen = std::collections::HashSet::new();
        for k in ErrorKind::ALL {
            assert_eq!(serde_json::to_value(k).unwrap(), k.name(), "{k:?}");
            assert_eq!(serde_json::from_value::<ErrorKind>(k.name().into()).unwrap(), k);
            assert!(seen.insert(k.name()));
            assert!((400..600).contains(&k.http_status()));
        }
    }
}
