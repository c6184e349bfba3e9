//! The device configuration `limes sync` reads: what the device runs, whom
//! it trusts, how often it asks, and when it rolls back.
//!
//! ```toml
//! trust = ["publisher.pub"]            # relative to this file
//! poll_interval_s = 30
//! [[function]]
//! reference = "registry.example.com/fns/hello:stable"
//! [rollback]
//! window_s = 120
//! min_requests = 20
//! max_failure_ratio = 0.1
//! ```

use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Largest configuration file read.
const MAX_CONFIG: u64 = 1 << 20;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// Trusted public keys, or directories of `.pub` files.
    pub trust: Vec<PathBuf>,
    /// Seconds between two polls of a reference; each wait is drawn from
    /// [interval/2, interval] so that a fleet does not ask all at once.
    #[serde(default = "default_interval")]
    pub poll_interval_s: f64,
    /// Longest wait after failed polls (the wait doubles per failure).
    #[serde(default = "default_max_backoff")]
    pub max_backoff_s: f64,
    /// Plain HTTP registries (loopback only).
    #[serde(default)]
    pub insecure: bool,
    /// Replaced versions kept for a rollback.
    #[serde(default = "default_keep")]
    pub keep: usize,
    /// Follow a tag that moves to an older version (refused by default:
    /// an old signed manifest replayed by a registry is a downgrade attack).
    #[serde(default)]
    pub allow_downgrade: bool,
    /// The whole update of one function (every request) must finish within
    /// this many seconds.
    #[serde(default = "default_pull_timeout")]
    pub pull_timeout_s: f64,
    #[serde(rename = "function", default)]
    pub functions: Vec<Follow>,
    #[serde(default)]
    pub rollback: RollbackRules,
}

/// One function the device runs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Follow {
    /// `registry/repository:tag` (or `@sha256:...`, which never moves).
    pub reference: String,
    /// Also fetch the microVM image (the function is served from microVMs).
    #[serde(default)]
    pub with_microvm: bool,
}

/// When a version that passed its health check is rolled back anyway: its
/// failure ratio (5xx other than 503 busy, as `limes serve` counts them)
/// over at least `min_requests` within `window_s` after the switch.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackRules {
    #[serde(default = "default_window")]
    pub window_s: f64,
    #[serde(default = "default_min_requests")]
    pub min_requests: u64,
    #[serde(default = "default_max_failure_ratio")]
    pub max_failure_ratio: f64,
}

impl Default for RollbackRules {
    fn default() -> Self {
        RollbackRules { window_s: default_window(), min_requests: default_min_requests(), max_failure_ratio: default_max_failure_ratio() }
    }
}

fn default_interval() -> f64 {
    30.0
}
fn default_max_backoff() -> f64 {
    300.0
}
fn default_keep() -> usize {
    crate::store::KEEP_PREVIOUS
}
fn default_pull_timeout() -> f64 {
    300.0
}
fn default_window() -> f64 {
    120.0
}
fn default_min_requests() -> u64 {
    20
}
fn default_max_failure_ratio() -> f64 {
    0.1
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the device configuration {path}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the device configuration {path} is larger than {MAX_CONFIG} bytes")]
    TooLarge { path: PathBuf },
    #[error("the device configuration {path} is invalid: {detail}")]
    Invalid { path: PathBuf, detail: String },
}

impl DeviceConfig {
    /// Read and check `path`; relative key paths are taken from its directory.
    pub fn load(path: &Path) -> Result<DeviceConfig, ConfigError> {
        use std::io::Read;
        let f = std::fs::File::open(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let mut text = String::new();
        f.take(MAX_CONFIG + 1).read_to_string(&mut text).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        if text.len() as u64 > MAX_CONFIG {
            return Err(ConfigError::TooLarge { path: path.into() });
        }
        let invalid = |detail: String| ConfigError::Invalid { path: path.into(), detail };
        let mut cfg: DeviceConfig = toml::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for k in &mut cfg.trust {
            if k.is_relative() {
                *k = base.join(&*k);
            }
        }
        cfg.check().map_err(invalid)?;
        Ok(cfg)
    }

    /// The rules every configuration, from a file or from flags, obeys.
    pub fn check(&self) -> Result<(), String> {
        if self.trust.is_empty() {
            return Err("`trust` names no key: a device follows only signed functions".into());
        }
        if self.functions.is_empty() {
            return Err("no [[function]] to follow".into());
        }
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if !positive(self.poll_interval_s) || !positive(self.max_backoff_s) || !positive(self.pull_timeout_s) || !positive(self.rollback.window_s) {
            return Err("poll_interval_s, max_backoff_s, pull_timeout_s and rollback.window_s must be positive numbers of seconds".into());
        }
        if !(0.0..=1.0).contains(&self.rollback.max_failure_ratio) {
            return Err("rollback.max_failure_ratio must lie in [0, 1]".into());
        }
        for f in &self.functions {
            if !limes_oci::looks_like_reference(&f.reference) {
                return Err(format!("{:?} is not a registry reference (registry/repository:tag)", f.reference));
            }
        }
        Ok(())
    }

    pub fn interval(&self) -> Duration {
        Duration::from_secs_f64(self.poll_interval_s)
    }

    pub fn max_backoff(&self) -> Duration {
        Duration::from_secs_f64(self.max_backoff_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<DeviceConfig, String> {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("device.toml");
        std::fs::write(&p, text).unwrap();
        DeviceConfig::load(&p).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_relative_keys() {
        let c = parse("trust = [\"k.pub\"]\n[[function]]\nreference = \"127.0.0.1:5000/fns/noop:stable\"\n").unwrap();
        assert_eq!((c.poll_interval_s, c.keep, c.rollback.min_requests), (30.0, 2, 20));
        assert!(c.trust[0].is_absolute() && c.trust[0].ends_with("k.pub"));
        assert!(!c.allow_downgrade);
    }

    #[test]
    fn bad_configurations_say_what_is_wrong() {
        assert!(parse("trust = []\n[[function]]\nreference = \"r.io/a:b\"\n").unwrap_err().contains("no key"));
        assert!(parse("trust = [\"k\"]\n").unwrap_err().contains("no [[function]]"));
        assert!(parse("trust = [\"k\"]\npoll_interval_s = 0\n[[function]]\nreference = \"r.io/a:b\"\n").unwrap_err().contains("positive"));
        assert!(parse("trust = [\"k\"]\ntypo = 1\n[[function]]\nreference = \"r.io/a:b\"\n").unwrap_err().contains("unknown field"));
        assert!(parse("trust = [\"k\"]\n[[function]]\nreference = \"not a ref\"\n").unwrap_err().contains("not a registry reference"));
    }
}
