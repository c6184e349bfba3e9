//! What the agent remembers per function, in the store's `sync/<name>.json`
//! (written atomically): the tag digest it last handled, the last poll and
//! its result, the last update, versions marked bad, the last rollback, and
//! a post-switch watch in progress. `limes status` reads it.
//!
//! Nothing here is trusted to load code: a rewritten state can at most make
//! the agent poll again, skip a version, or return to a kept version that
//! was verified when it was installed and is verified again when loaded.

use crate::store::{Store, StoreError};
use serde::{Deserialize, Serialize};

/// Versions remembered as bad (the oldest are forgotten).
const MAX_BAD: usize = 16;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SyncState {
    pub name: String,
    pub reference: String,
    /// The OCI manifest digest of the tag last handled: the same digest
    /// again costs one small request.
    #[serde(default)]
    pub seen_digest: Option<String>,
    /// Unix seconds of the last poll, and what it found.
    #[serde(default)]
    pub last_sync: Option<u64>,
    #[serde(default)]
    pub last_result: Option<String>,
    #[serde(default)]
    pub last_ok: bool,
    #[serde(default)]
    pub last_update: Option<Update>,
    /// Manifest digests that failed (a health check, or the post-switch
    /// watch): not tried again until the tag names another digest.
    #[serde(default)]
    pub bad: Vec<BadVersion>,
    #[serde(default)]
    pub last_rollback: Option<Rollback>,
    /// Rollbacks so far (automatic and by hand).
    #[serde(default)]
    pub rollbacks: u64,
    #[serde(default)]
    pub watching: Option<Watch>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Update {
    pub from: Option<String>,
    pub to: String,
    pub manifest_sha256: String,
    pub at: u64,
    /// Bytes received from the registry for this update (OCI manifest,
    /// signed manifest, signature and the files fetched).
    pub bytes: u64,
    pub downloaded: Vec<String>,
    pub reused: Vec<String>,
    pub health_check_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BadVersion {
    pub manifest_sha256: String,
    pub version: String,
    pub reason: String,
    pub at: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rollback {
    pub from: String,
    pub to: String,
    pub reason: String,
    pub at: u64,
}

/// A switched-to version under watch: `limes serve`'s counts for `object`
/// (from its state file; they start at zero when serve loads the object,
/// so they are the requests since the switch).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Watch {
    pub object: String,
    pub version: String,
    pub since: u64,
}

pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl SyncState {
    fn rel(name: &str) -> String {
        format!("sync/{name}.json")
    }

    /// The state of `name` (default when none or unreadable: state is a
    /// cache of what the agent did, and a bad one costs a poll).
    pub fn load(store: &Store, name: &str) -> SyncState {
        let read = store.read_file(&Self::rel(name), 1 << 20).ok().flatten();
        read.and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_else(|| SyncState { name: name.into(), ..Default::default() })
    }

    /// Every function's state.
    pub fn all(store: &Store) -> Vec<SyncState> {
        let mut out: Vec<SyncState> = std::fs::read_dir(store.root().join("sync"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_suffix(".json")).filter(|n| crate::store::is_valid_name(n)).map(String::from))
            .map(|n| Self::load(store, &n))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    pub fn save(&self, store: &Store) -> Result<(), StoreError> {
        store.write_file(&Self::rel(&self.name), &serde_json::to_vec_pretty(self).expect("state serializes"))
    }

    pub fn is_bad(&self, manifest_sha256: &str) -> Option<&BadVersion> {
        self.bad.iter().find(|b| b.manifest_sha256 == manifest_sha256)
    }

    pub fn mark_bad(&mut self, manifest_sha256: &str, version: &str, reason: &str) {
        self.bad.retain(|b| b.manifest_sha256 != manifest_sha256);
        self.bad.push(BadVersion { manifest_sha256: manifest_sha256.into(), version: version.into(), reason: reason.into(), at: now() });
        let excess = self.bad.len().saturating_sub(MAX_BAD);
        self.bad.drain(..excess);
    }

    /// Remember a rollback from `from` to `to` and mark `from` bad.
    pub fn rolled_back(&mut self, from: &crate::store::Installed, to: &str, reason: &str) {
        self.mark_bad(&from.manifest_digest(), &from.version, reason);
        self.last_rollback = Some(Rollback { from: from.version.clone(), to: to.into(), reason: reason.into(), at: now() });
        self.rollbacks += 1;
        self.watching = None;
    }

    pub fn record(&mut self, ok: bool, result: impl Into<String>) {
        self.last_sync = Some(now());
        self.last_ok = ok;
        self.last_result = Some(result.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_versions_are_bounded_and_unique() {
        let mut s = SyncState::default();
        for i in 0..40 {
            s.mark_bad(&format!("{}", i % 20), "1", "x");
        }
        assert_eq!(s.bad.len(), MAX_BAD);
        assert!(s.is_bad("19").is_some() && s.is_bad("0").is_none());
    }
}
