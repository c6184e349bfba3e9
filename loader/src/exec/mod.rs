//! Running a function's requests in worker processes: the worker protocol
//! ([`worker`]), the pool of pre-warmed workers `limes serve` keeps per
//! function ([`pool`]), and the watchdog that ends a one-shot run past its
//! deadline ([`watchdog`]). A runaway request ends only its own executor.
//! Must not touch: loading (see [`crate::load`]) or the store's files.

pub mod pool;
pub mod worker;

pub use limes_runtime::watchdog;
