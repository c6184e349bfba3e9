//! Ahead-of-time compilation of a component for explicit CPU tiers of
//! x86_64 and aarch64.
//!
//! Every engine here is configured with an explicit target triple and the
//! tier's ISA flags, so nothing of the build host's CPU leaks into an
//! artifact: a CI runner with AVX-512 produces the same bytes as a laptop,
//! and an x86_64 runner cross-compiles the aarch64 tiers (Cranelift detects
//! no features of a foreign target: a tier's flags are all it gets).

use limes_bundle::profile::{EngineProfile, Tier, WASMTIME_VERSION};
use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum AotError {
    #[error("configuring Wasmtime for tier {tier}: {msg}")]
    Config { tier: String, msg: String },
    #[error("precompiling for tier {tier} failed: {msg}")]
    Compile { tier: String, msg: String },
    #[error("AOT cache at {path}")]
    Cache { path: PathBuf, source: std::io::Error },
}

/// One precompiled artifact.
#[derive(Debug, Clone)]
pub struct AotOutput {
    pub tier: Tier,
    pub path: PathBuf,
    pub size: u64,
    pub compat_hash: String,
    pub compile_time: Duration,
    pub cached: bool,
    /// The artifact's bytes: what goes into the bundle is exactly what was
    /// compiled or checked against the cache's recorded digest.
    pub bytes: Vec<u8>,
}

/// What the cache records beside each artifact.
#[derive(serde::Serialize, serde::Deserialize)]
struct CacheMeta {
    compat_hash: String,
    sha256: String,
}

/// A cached artifact, if it is whole and still has the digest recorded when
/// it was compiled (a tampered or damaged entry is recompiled, never signed).
fn cached(path: &Path, meta_path: &Path) -> Option<(Vec<u8>, String)> {
    let meta: CacheMeta = serde_json::from_slice(&std::fs::read(meta_path).ok()?).ok()?;
    let bytes = std::fs::read(path).ok()?;
    if limes_bundle::sha256_hex(&bytes) != meta.sha256 {
        tracing::warn!(path = %path.display(), "cached AOT artifact does not match its recorded digest; recompiling");
        return None;
    }
    Some((bytes, meta.compat_hash))
}

/// A `Hasher` that feeds SHA-256, so Wasmtime's compatibility hash becomes a
/// stable hex string.
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    fn finish(&self) -> u64 {
        let d = self.0.clone().finalize();
        u64::from_le_bytes(d[..8].try_into().unwrap())
    }
}

/// The engine that compiles for `tier`.
pub fn engine_for(tier: &Tier, profile: &EngineProfile) -> Result<wasmtime::Engine, AotError> {
    let cfg_err = |e: wasmtime::Error| AotError::Config { tier: tier.name.into(), msg: format!("{e:#}") };
    let mut config = wasmtime::Config::new();
    profile.apply(&mut config);
    config.cranelift_opt_level(wasmtime::OptLevel::Speed);
    config.target(tier.target()).map_err(cfg_err)?;
    for flag in tier.cranelift_flags {
        // SAFETY: the flag only changes which instructions the generated code
        // may use; the loader checks the host has them before loading.
        unsafe {
            config.cranelift_flag_enable(flag);
        }
    }
    wasmtime::Engine::new(&config).map_err(cfg_err)
}

fn compat_hash(engine: &wasmtime::Engine) -> String {
    let mut h = ShaHasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut h);
    hex::encode(h.0.finalize())
}

/// Content-addressed cache key of one artifact: everything that determines
/// its bytes.
fn cache_key(component_sha: &str, tier: &Tier, profile: &EngineProfile) -> String {
    let mut h = Sha256::new();
    for part in [component_sha, tier.name, &tier.cranelift_flags.join(","), &profile.digest(), WASMTIME_VERSION, tier.target()] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())
}

/// Precompile `component` for every tier (in parallel), reusing artifacts
/// from `cache_dir` when the same component was compiled before (unless
/// `reuse` is false; fresh results are stored either way).
pub fn precompile(component: &[u8], tiers: &[Tier], profile: &EngineProfile, cache_dir: &Path, reuse: bool) -> Result<Vec<AotOutput>, AotError> {
    let component_sha = limes_bundle::sha256_hex(component);
    std::fs::create_dir_all(cache_dir).map_err(|source| AotError::Cache { path: cache_dir.into(), source })?;
    let results: Vec<Result<AotOutput, AotError>> = std::thread::scope(|s| {
        let handles: Vec<_> = tiers
            .iter()
            .map(|tier| {
                let component_sha = &component_sha;
                s.spawn(move || {
                    let key = cache_key(component_sha, tier, profile);
                    let path = cache_dir.join(format!("{key}.cwasm"));
                    let meta_path = cache_dir.join(format!("{key}.meta.json"));
                    if let Some((bytes, compat_hash)) = reuse.then(|| cached(&path, &meta_path)).flatten() {
                        return Ok(AotOutput { tier: *tier, path, size: bytes.len() as u64, compat_hash, compile_time: Duration::ZERO, cached: true, bytes });
                    }
                    let start = Instant::now();
                    let engine = engine_for(tier, profile)?;
                    let bytes = engine.precompile_component(component).map_err(|e| AotError::Compile { tier: tier.name.into(), msg: format!("{e:#}") })?;
                    let compile_time = start.elapsed();
                    let hash = compat_hash(&engine);
                    let cache_err = |source| AotError::Cache { path: path.clone(), source };
                    // Write the hash first and the artifact last (each via
                    // temp + rename): an artifact present means both are whole.
                    let meta = CacheMeta { compat_hash: hash.clone(), sha256: limes_bundle::sha256_hex(&bytes) };
                    write_atomic(&meta_path, &serde_json::to_vec(&meta).expect("meta serializes")).map_err(cache_err)?;
                    write_atomic(&path, &bytes).map_err(cache_err)?;
                    Ok(AotOutput { tier: *tier, path, size: bytes.len() as u64, compat_hash: hash, compile_time, cached: false, bytes })
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("AOT thread panicked")).collect()
    });
    results.into_iter().collect()
}

/// Write `data` to `path` through a temporary file in the same directory.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new().prefix(".limes-tmp-").tempfile_in(dir)?;
    tmp.write_all(data)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}
