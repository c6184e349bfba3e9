//! The device side of limes, along its pipeline: verify and store bundles ([`store`], [`pull`]),
//! keep them up to date unattended ([`sync`]), pick a CPU tier ([`select`]) and map it ([`load`],
//! [`runtime`]), run requests in executors that a runaway call ends ([`exec`]: workers, their
//! pool, the watchdog), serve over HTTP ([`serve`]), boot microVM images ([`microvm`]: boot, KVM
//! probe, VM pool); [`error`] lists the kinds of failure and [`classify`] tells them apart at the
//! edge; [`args`]: what both binaries' CLIs share.
//! Must not touch: Cranelift (only the `jit` feature), building or signing, unverified native code.

pub mod classify;
// The runtime, tier selection, failure kinds and shared arguments live in
// `limes-runtime` (the packer uses them without the server); here under
// their old names.
pub use limes_runtime::{args, error, once, runtime, select, wasi_http};
pub use limes_runtime::{ErrorKind, Invocation, LoadedFunction, RunError, Runtime, RuntimeOptions, JIT_ENABLED};

pub mod store;
pub use store::Store;
pub mod load;
pub mod trust;
pub use load::{load, LoadMode};

/// The target of the device build of `limes`: a static executable (no
/// dynamic loader, no glibc start-up; see `main.rs` for its allocator).
pub const DEVICE_TARGET: &str = "x86_64-unknown-linux-musl";

/// The static device build for aarch64 devices (Raspberry Pi, Jetson,
/// Graviton); cross-built with Debian's aarch64 gcc (`.cargo/config.toml`).
pub const DEVICE_TARGET_AARCH64: &str = "aarch64-unknown-linux-musl";
pub mod exec;
pub mod microvm;
pub mod pull;
pub mod serve;
pub mod sync;
