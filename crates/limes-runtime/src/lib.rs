//! The limes function runtime: what runs a function once it is verified,
//! shared by the device loader (`limes`), the packer's `limes-pack run` and
//! the containerd shim, so that `limes-pack` needs none of the server.
//!
//! [`runtime`]: the Wasmtime engine (one profile), mapping precompiled
//! tiers, instances per request, limits; [`wasi_http`]: `wasi:http` requests
//! and answers and the outbound allow-list; [`select`]: which CPU tier fits
//! this host; [`linker`]: which host interfaces a linker defines; [`watchdog`]: ending a one-shot run at its deadline; [`tree`]: removing a tree without following links; [`once`]:
//! one request, run once, as every binary runs it; [`error`]: the kinds of
//! failure (exit codes, HTTP statuses, JSON kinds); [`args`]: the argument
//! types and output both CLIs share.
//!
//! Must not touch: the store, verification of bundles (the caller maps only
//! verified bytes; see `limes::store`), serving, building or signing.

pub mod args;
pub mod error;
pub mod linker;
pub mod once;
pub mod runtime;
pub mod select;
pub mod tree;
pub mod wasi_http;
pub mod watchdog;

pub use error::ErrorKind;
pub use runtime::{Interfaces, Invocation, LoadedFunction, RunError, Runtime, RuntimeOptions};

/// Whether this build can compile components at load time.
pub const JIT_ENABLED: bool = cfg!(feature = "jit");
