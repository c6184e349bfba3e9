//! `serve-state.json`: what a running `limes serve` serves, per function.
//! The server writes it when it changed; `limes list` shows it and
//! `limes sync` watches a switched version's failures through it. Nothing
//! in it is trusted to load code.

use super::{Store, StoreError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The file's name in the store.
pub const SERVE_STATE: &str = "serve-state.json";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServeState {
    /// The server's process (a state whose process is gone is stale), and
    /// when it started (clock ticks after boot), so that another process
    /// given the same PID later is not taken for it.
    pub pid: u32,
    #[serde(default)]
    pub started: u64,
    pub functions: BTreeMap<String, ServedFunction>,
}

/// What runs a function's requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServedBy {
    /// Worker processes.
    Wasm,
    /// The server's own process (benchmarks).
    WasmInProcess,
    /// Pre-booted microVMs.
    Microvm,
    /// Both, chosen per request (`--auto`).
    Auto,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServedFunction {
    pub backend: ServedBy,
    /// For `auto`: the backend requests go to, and the medians behind it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing_to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50_us: Option<AutoMedians>,
    /// The store object served.
    pub object: String,
    /// Requests since it was loaded, and those that failed on the
    /// function's side (5xx other than 503 busy).
    pub requests: u64,
    pub failures: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoMedians {
    pub wasm: Option<u64>,
    pub microvm: Option<u64>,
}

impl ServeState {
    /// The state of a server that still runs (None: no state, an unreadable
    /// one, or its server is gone).
    pub fn read(store: &Store) -> Option<ServeState> {
        let bytes = store.read_file(SERVE_STATE, 1 << 20).ok()??;
        let s: ServeState = serde_json::from_slice(&bytes).ok()?;
        let alive = i32::try_from(s.pid).is_ok_and(super::process_alive) && process_start(s.pid) == Some(s.started);
        alive.then_some(s)
    }

    /// A state for this process.
    pub fn for_this_process() -> ServeState {
        let pid = std::process::id();
        ServeState { pid, started: process_start(pid).unwrap_or_default(), functions: Default::default() }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("state serializes")
    }

    pub fn write(&self, store: &Store) -> Result<(), StoreError> {
        store.write_file(SERVE_STATE, &self.to_json())
    }
}

/// When process `pid` started, in clock ticks after boot (field 22 of
/// `/proc/PID/stat`; the command name before it may hold spaces and
/// parentheses, so fields are counted after its last `)`).
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_live_process_has_a_start_time_and_a_gone_one_none() {
        let me = super::process_start(std::process::id()).expect("this process has a start time");
        assert!(me > 0);
        assert_eq!(super::process_start(std::process::id()), Some(me), "stable");
        assert_eq!(super::process_start(u32::MAX - 1), None);
    }
}
