//! The thin limes loader: the device side of limes.
//!
//! Owns: the runtime engine built from the shared engine profile with the
//! pooling allocator ([`runtime`]), choosing the CPU tier a host can run
//! ([`select`]), the local content-addressed store of verified bundles
//! ([`store`]), and invoking functions with WASI, memory and time limits.
//!
//! Must not touch: Cranelift in the default build (the `jit` feature adds it
//! for load-time compilation as a fallback), building or signing bundles, or
//! any byte of native code that has not been verified against a trusted
//! signature first.

pub mod runtime;
pub mod select;


pub use runtime::{Invocation, LoadedFunction, RunError, Runtime, RuntimeOptions};

pub mod store;
pub use store::Store;
pub mod launch;
pub use launch::{load, LoadMode};

/// Whether this build can compile components at load time.
pub const JIT_ENABLED: bool = cfg!(feature = "jit");
pub mod kvm;
pub mod pool;
pub mod serve;
pub mod worker;
pub mod microvm;
pub mod pull;
