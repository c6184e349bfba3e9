//! Unattended updates (`limes sync`): an agent that follows registry tags,
//! installs a new version beside the current one, switches to it only after
//! it answered its health check, and rolls back by itself when the switched
//! version fails its health check or, afterwards, too many requests.
//!
//! One poll of a function ([`Agent::poll`]):
//! 1. fetch the tag's OCI manifest (a small request); the digest handled
//!    last time again: nothing to do;
//! 2. fetch the signed manifest and its signature and verify them (nothing
//!    else is fetched for a manifest no trusted key signed); the installed
//!    version, or one marked bad: nothing to do;
//! 3. fetch what this device runs (the component and its one tier, reusing
//!    what the store holds), resuming interrupted downloads;
//! 4. publish it as the function's candidate ([`Store::promote`] needs it);
//! 5. run its health check in a child process; pass: switch (one rename),
//!    fail: discard it and mark its manifest digest bad;
//! 6. watch the switched version through `limes serve`'s counts for a
//!    window ([`config::RollbackRules`]); too many failures: roll back.
//!
//! Every step that changes the store is one of the store's crash-safe
//! operations, so killing the agent at any point leaves the old or the new
//! version current. The agent never serves: `limes serve` follows the
//! store and picks the switch up within its poll (250 ms).
//!
//! Must not touch: loading or running functions in this process (a
//! candidate runs in a child), the trust anchors beyond adopting the key
//! that signed a version it switched to.

pub mod config;
pub mod health;
pub mod state;

use crate::pull::{PullError, PullOptions, Remote};
use crate::store::{Store, StoreError};
use config::{DeviceConfig, Follow};
use health::{Checker, HealthError};
use limes_bundle::TrustedKeys;
use state::{now, SyncState, Update, Watch};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// What a poll, a watch or a rollback did (printed by `limes sync`).
#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    UpToDate {
        name: String,
        version: String,
    },
    Updated {
        name: String,
        from: Option<String>,
        to: String,
        bytes: u64,
        downloaded: Vec<String>,
        reused: Vec<String>,
        health_check_ms: u64,
    },
    /// A new version was not switched to (health check, refused by policy).
    Rejected {
        name: String,
        version: String,
        reason: String,
    },
    /// The tag names a version marked bad before.
    SkippedBad {
        name: String,
        version: String,
    },
    RolledBack {
        name: String,
        from: String,
        to: String,
        reason: String,
    },
    /// The post-switch window passed without too many failures.
    Healthy {
        name: String,
        version: String,
        requests: u64,
        failures: u64,
    },
    /// A poll failed (registry down, network); the device keeps what it runs.
    Failed {
        reference: String,
        error: String,
        kind: crate::ErrorKind,
        retry_in_ms: u64,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Pull(#[from] PullError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Health(#[from] HealthError),
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Bundle(#[from] limes_bundle::BundleError),
    #[error("the update of {reference} did not finish within {} s (pull_timeout_s); nothing was switched", .limit.as_secs())]
    Deadline { reference: String, limit: Duration },
}

impl SyncError {
    pub fn kind(&self) -> crate::ErrorKind {
        match self {
            SyncError::Pull(e) => e.kind(),
            SyncError::Store(e) => e.kind(),
            SyncError::Health(e) => e.kind(),
            SyncError::Bundle(e) => crate::error::bundle_kind(e),
            SyncError::Config(_) => crate::ErrorKind::Usage,
            SyncError::Deadline { .. } => crate::ErrorKind::Other,
        }
    }
}

/// The agent of one device.
pub struct Agent {
    store: Store,
    cfg: DeviceConfig,
    keys: TrustedKeys,
    checker: Checker,
    /// Function name per followed reference (known after its first poll).
    names: HashMap<String, String>,
    rng: u64,
}

impl Agent {
    /// An agent for `store`, whose loads trust `trust_dir` (where keys of
    /// versions it switches to are adopted, as `limes install` does).
    pub fn new(store: Store, cfg: DeviceConfig, trust_dir: std::path::PathBuf, exe: std::path::PathBuf) -> Result<Agent, SyncError> {
        cfg.check().map_err(|detail| config::ConfigError::Invalid { path: "(flags)".into(), detail })?;
        let keys = TrustedKeys::load(&cfg.trust)?;
        let checker = Checker { exe, store: store.root().to_path_buf(), trust_dir, trust: cfg.trust.clone() };
        let names = SyncState::all(&store).into_iter().map(|s| (s.reference, s.name)).collect();
        let rng = (std::process::id() as u64) << 32 ^ now() ^ 0x9e37_79b9_7f4a_7c15;
        // A candidate left by a killed agent was never switched to: drop it
        // (its check runs again on the next poll).
        for c in store.candidates()? {
            store.discard_candidate(&c.name)?;
        }
        Ok(Agent { store, cfg, keys, checker, names, rng })
    }

    fn pull_options(&self, follow: &Follow) -> PullOptions {
        let timeouts = limes_oci::Timeouts { total: Duration::from_secs_f64(self.cfg.pull_timeout_s), ..Default::default() };
        PullOptions {
            insecure: self.cfg.insecure,
            credentials: limes_oci::Credentials {
                username: std::env::var("LIMES_REGISTRY_USERNAME").ok(),
                password: std::env::var("LIMES_REGISTRY_PASSWORD").ok(),
            },
            with_microvm: follow.with_microvm,
            all_tiers: false,
            policy: crate::store::InstallPolicy { allow_downgrade: self.cfg.allow_downgrade, keep: self.cfg.keep, ..Default::default() },
            timeouts,
        }
    }

    /// A wait in [base/2, base]: spread over the fleet, never later than base.
    fn jitter(&mut self, base: Duration) -> Duration {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        base.mul_f64(0.5 + (self.rng % 1000) as f64 / 2000.0)
    }

    /// Poll every function once (`limes sync --once`); no watch.
    pub async fn poll_all(&mut self, report: &mut impl FnMut(&Event)) -> bool {
        let mut all_ok = true;
        for follow in self.cfg.functions.clone() {
            match self.poll(&follow).await {
                Ok(e) => report(&e),
                Err(e) => {
                    all_ok = false;
                    report(&Event::Failed { reference: follow.reference.clone(), error: error_chain(&e), kind: e.kind(), retry_in_ms: 0 })
                }
            }
        }
        all_ok
    }

    /// Follow every function until `shutdown`: poll each when due (backing
    /// off after failures), and tick the post-switch watches every second.
    pub async fn run(&mut self, report: &mut impl FnMut(&Event), shutdown: impl std::future::Future<Output = ()>) {
        let mut next: Vec<Instant> = vec![Instant::now(); self.cfg.functions.len()];
        let mut failures = vec![0u32; self.cfg.functions.len()];
        tokio::pin!(shutdown);
        loop {
            for (i, follow) in self.cfg.functions.clone().iter().enumerate() {
                if Instant::now() < next[i] {
                    continue;
                }
                let base = match self.poll(follow).await {
                    Ok(e) => {
                        failures[i] = 0;
                        report(&e);
                        self.cfg.interval()
                    }
                    Err(e) => {
                        failures[i] = failures[i].saturating_add(1);
                        let backoff = self.cfg.interval().saturating_mul(1 << failures[i].min(16)).min(self.cfg.max_backoff());
                        let wait = self.jitter(backoff);
                        report(&Event::Failed {
                            reference: follow.reference.clone(),
                            error: error_chain(&e),
                            kind: e.kind(),
                            retry_in_ms: wait.as_millis() as u64,
                        });
                        next[i] = Instant::now() + wait;
                        continue;
                    }
                };
                next[i] = Instant::now() + self.jitter(base);
            }
            for e in self.watch_tick() {
                report(&e);
            }
            let until = next.iter().min().copied().unwrap_or_else(Instant::now).min(Instant::now() + Duration::from_secs(1));
            tokio::select! {
                _ = tokio::time::sleep_until(until.into()) => {}
                _ = &mut shutdown => return,
            }
        }
    }

    /// One poll of one function (see the module documentation).
    pub async fn poll(&mut self, follow: &Follow) -> Result<Event, SyncError> {
        let limit = Duration::from_secs_f64(self.cfg.pull_timeout_s);
        match tokio::time::timeout(limit, self.poll_within(follow)).await {
            Ok(r) => r,
            Err(_) => Err(SyncError::Deadline { reference: follow.reference.clone(), limit }),
        }
    }

    async fn poll_within(&mut self, follow: &Follow) -> Result<Event, SyncError> {
        let opts = self.pull_options(follow);
        let known = self.names.get(&follow.reference).cloned();
        let remote = match Remote::open(&follow.reference, &opts).await {
            Ok(r) => r,
            Err(e) => {
                if let Some(name) = &known {
                    let mut st = SyncState::load(&self.store, name);
                    st.record(false, format!("error: {}", error_chain(&e)));
                    st.save(&self.store)?;
                }
                return Err(e.into());
            }
        };
        // The digest handled last time, and its version still current.
        if let Some(name) = &known {
            let mut st = SyncState::load(&self.store, name);
            if st.seen_digest.as_deref() == Some(remote.digest.as_str()) {
                if let Ok(cur) = self.store.get(name) {
                    st.record(true, "up to date");
                    st.save(&self.store)?;
                    return Ok(Event::UpToDate { name: name.clone(), version: cur.record.version });
                }
            }
        }
        let signed = remote.signed_manifest(&self.keys).await?;
        let name = signed.manifest.function.name.clone();
        let version = signed.manifest.function.version.clone();
        self.names.insert(follow.reference.clone(), name.clone());
        let mut st = SyncState::load(&self.store, &name);
        st.name = name.clone();
        st.reference = follow.reference.clone();
        let current = self.store.get(&name).ok().map(|f| f.record);
        if current.as_ref().is_some_and(|c| c.manifest_digest() == signed.sha256) {
            self.settle(&mut st, &remote.digest, true, "up to date".into())?;
            return Ok(Event::UpToDate { name, version });
        }
        if st.is_bad(&signed.sha256).is_some() {
            self.settle(&mut st, &remote.digest, true, format!("{version} is marked bad; waiting for the tag to move"))?;
            return Ok(Event::SkippedBad { name, version });
        }

        let resume = self.store.root().join("tmp").join("downloads");
        std::fs::create_dir_all(&resume).map_err(|source| StoreError::Io { path: resume.clone(), source })?;
        let parts = remote.files(&self.store, &signed, &opts, Some(&resume)).await?;
        let cand = match self.store.publish_parts(&signed.bytes, &signed.signature, &parts.files, &self.keys, opts.policy, true) {
            Ok(c) => c,
            // Refused by policy (an older version, another publisher): the
            // same answer every time, so it is marked and not fetched again.
            Err(
                e
                @ (StoreError::Downgrade { .. } | StoreError::SignerChanged { .. } | StoreError::SameVersionDiffers { .. } | StoreError::NoCodeForHost { .. }),
            ) => return self.reject(st, &remote.digest, &signed.sha256, version, "refused", e.to_string()),
            Err(e) => return Err(e.into()),
        };
        let (store, checker, keep, staged) = (self.store.clone(), self.checker.clone(), self.cfg.keep, cand.clone());
        let switched = match tokio::task::spawn_blocking(move || switch_if_healthy(&store, &checker, &staged, keep)).await {
            Ok(r) => r,
            Err(j) => {
                // The check did not finish: the candidate goes, as after a failed one.
                self.store.discard_candidate(&name)?;
                Err(HealthError::Spawn { name: name.clone(), exe: "(task)".into(), source: std::io::Error::other(j.to_string()) }.into())
            }
        };
        let (promoted, took) = match switched {
            Ok(v) => v,
            Err(SyncError::Health(e @ HealthError::Failed { .. })) => {
                return self.reject(st, &remote.digest, &signed.sha256, version, "rejected", e.to_string())
            }
            Err(e) => return Err(e),
        };
        crate::trust::Anchors::load(&[], self.checker.trust_dir.clone(), self.store.root())?.adopt_signer(&self.keys, &promoted, false)?;
        let from = current.map(|c| c.version);
        let bytes = remote.received();
        st.last_update = Some(Update {
            from: from.clone(),
            to: version.clone(),
            manifest_sha256: signed.sha256.clone(),
            at: now(),
            bytes,
            downloaded: parts.downloaded.clone(),
            reused: parts.reused.clone(),
            health_check_ms: took.as_millis() as u64,
        });
        st.watching = Some(Watch { object: promoted.record.object.clone(), version: version.clone(), since: now() });
        self.settle(&mut st, &remote.digest, true, format!("updated to {version}"))?;
        Ok(Event::Updated { name, from, to: version, bytes, downloaded: parts.downloaded, reused: parts.reused, health_check_ms: took.as_millis() as u64 })
    }

    /// Remember that the tag's `digest` was handled, with the poll's result.
    fn settle(&self, st: &mut SyncState, digest: &str, ok: bool, result: String) -> Result<(), SyncError> {
        st.seen_digest = Some(digest.to_string());
        st.record(ok, result);
        st.save(&self.store)?;
        Ok(())
    }

    /// Refuse `version` until the tag moves: its manifest digest is marked bad.
    fn reject(&self, mut st: SyncState, digest: &str, sha256: &str, version: String, what: &str, reason: String) -> Result<Event, SyncError> {
        st.mark_bad(sha256, &version, &reason);
        self.settle(&mut st, digest, false, format!("{what} {version}: {reason}"))?;
        Ok(Event::Rejected { name: st.name, version, reason })
    }

    /// Compare each watched version's failures (as `limes serve` counts
    /// them) with the rules; roll back a version over the threshold, end
    /// the watch of one whose window passed.
    pub fn watch_tick(&mut self) -> Vec<Event> {
        let rules = self.cfg.rollback;
        // Read only while a watch runs.
        let mut served = None;
        let mut events = Vec::new();
        for name in self.names.values().cloned().collect::<Vec<_>>() {
            let mut st = SyncState::load(&self.store, &name);
            let Some(w) = st.watching.clone() else { continue };
            // Serve counts per loaded object, from zero when it loaded it:
            // for the watched object, these are the requests since the switch.
            let (requests, failures) = served
                .get_or_insert_with(|| served_counts(&self.store))
                .get(&name)
                .filter(|(object, _, _)| *object == w.object)
                .map(|(_, r, f)| (*r, *f))
                .unwrap_or((0, 0));
            if requests >= rules.min_requests && failures as f64 > rules.max_failure_ratio * requests as f64 {
                let reason = format!("{failures} of {requests} requests failed after the switch (limit {:.0}%)", rules.max_failure_ratio * 100.0);
                match self.store.rollback(&name) {
                    Ok((left, back)) => {
                        st.rolled_back(&left, &back.version, &reason);
                        st.record(false, format!("rolled back from {} to {}: {reason}", left.version, back.version));
                        events.push(Event::RolledBack { name: name.clone(), from: left.version, to: back.version, reason });
                    }
                    Err(e) => {
                        tracing::error!(function = %name, error = %e, "cannot roll back");
                        st.record(false, format!("cannot roll back: {e}"));
                    }
                }
                st.watching = None;
            } else if now().saturating_sub(w.since) as f64 >= rules.window_s {
                events.push(Event::Healthy { name: name.clone(), version: w.version.clone(), requests, failures });
                st.watching = None;
            } else {
                // Still watching: nothing to write.
                continue;
            }
            if let Err(e) = st.save(&self.store) {
                tracing::warn!(function = %name, error = %e, "cannot save the sync state");
            }
        }
        events
    }
}

/// Send a staged candidate its health check (in a child process) and switch
/// its function to it when it passes; drop it otherwise. What `limes sync`
/// and `limes install --health-check` both do; returns the function now
/// current and how long the check took.
pub fn switch_if_healthy(
    store: &Store,
    checker: &Checker,
    cand: &crate::store::InstalledFunction,
    keep: usize,
) -> Result<(crate::store::InstalledFunction, Duration), SyncError> {
    let name = &cand.record.name;
    match checker.check_candidate(cand) {
        Ok(took) => Ok((store.promote(name, &cand.record.object, keep)?, took)),
        Err(e) => {
            store.discard_candidate(name)?;
            Err(e.into())
        }
    }
}

/// Per function: the object a running `limes serve` serves, and its
/// request and failure counts (nothing when no live server wrote them).
fn served_counts(store: &Store) -> HashMap<String, (String, u64, u64)> {
    let Some(state) = crate::store::ServeState::read(store) else { return HashMap::new() };
    state.functions.into_iter().map(|(n, f)| (n, (f.object, f.requests, f.failures))).collect()
}

/// An error and its causes on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s += &format!(": {t}");
        }
        cur = c.source();
    }
    s
}
