//! From an installed function to a [`LoadedFunction`]: check the engine
//! profile, pick the tier, map it, or fall back to JIT when allowed.

use crate::runtime::{FunctionSpec, LoadedFunction, RunError, Runtime};
use crate::select;
use crate::store::{InstalledFunction, Integrity};
use limes_bundle::profile::{EngineProfile, WASMTIME_VERSION};

/// How to load.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LoadMode {
    /// Best precompiled tier; JIT only if none is usable and JIT is built in.
    #[default]
    Auto,
    /// Always compile the bundled component at load (needs the `jit` feature).
    Jit,
}

/// Why the precompiled artifacts cannot be used on this host, if so.
fn aot_blocker(f: &InstalledFunction) -> Option<String> {
    let m = &f.manifest;
    if m.engine.wasmtime != WASMTIME_VERSION {
        return Some(format!("artifacts are for Wasmtime {}, this loader has {WASMTIME_VERSION}", m.engine.wasmtime));
    }
    if m.engine.profile_digest != EngineProfile::default().digest() {
        return Some(format!("artifacts use engine profile {}, this loader uses {}", m.engine.profile.name, EngineProfile::default().name));
    }
    None
}

/// Load `f`, checking the bytes of the artifact by `integrity` first: native
/// code is mapped only from bytes that match the signed manifest.
pub fn load(rt: &Runtime, f: &InstalledFunction, mode: LoadMode, integrity: Integrity) -> Result<LoadedFunction, LoadError> {
    let spec = FunctionSpec::from_manifest(&f.manifest);
    let mut reasons = Vec::new();
    if mode == LoadMode::Auto {
        match aot_blocker(f) {
            Some(r) => reasons.push(r),
            None => {
                let (best, skipped) = select::best_tier_of(&f.manifest, |p| f.has(p));
                reasons.extend(skipped.into_iter().map(|s| format!("{}: {}", s.tier, s.reason)));
                if let Some(a) = best {
                    let unchanged = if integrity == Integrity::Stamp { f.open_if_unchanged(&a.path)? } else { None };
                    let mapped = if let Some(file) = unchanged {
                        // SAFETY: the descriptor is the inode that was hashed
                        // against the signed manifest at install, unchanged
                        // since, in a store only this user can write (checked
                        // on open); the caller checked the manifest's signature.
                        unsafe { rt.load_precompiled(spec.clone(), &file, &a.tier) }
                    } else {
                        let bytes = f.read_verified(&a.path)?;
                        // SAFETY: these bytes were just hashed against the
                        // signed manifest; the same buffer is deserialized.
                        unsafe { rt.load_precompiled_bytes(spec.clone(), &bytes, &a.tier) }
                    };
                    match mapped {
                        Ok(l) => return Ok(l),
                        Err(e) => reasons.push(e.to_string()),
                    }
                } else if !f.manifest.aot.iter().any(|a| f.has(&a.path)) {
                    reasons.push("no precompiled tier is installed".into());
                }
            }
        }
    } else {
        reasons.push("JIT requested".into());
    }
    Ok(jit_fallback(rt, f, spec, reasons)?)
}

/// Why a function could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

impl LoadError {
    pub fn kind(&self) -> crate::ErrorKind {
        match self {
            LoadError::Run(r) => r.kind(),
            LoadError::Store(s) => s.kind(),
        }
    }
}

#[cfg(feature = "jit")]
fn jit_fallback(rt: &Runtime, f: &InstalledFunction, spec: FunctionSpec, reasons: Vec<String>) -> Result<LoadedFunction, RunError> {
    tracing::info!(function = %spec.name, reasons = %reasons.join("; "), "compiling at load (JIT)");
    let wasm = f.read_verified(&f.manifest.component).map_err(|e| RunError::Load { function: spec.name.clone(), reason: format!("component: {e}") })?;
    rt.load_jit(spec, &wasm)
}

#[cfg(not(feature = "jit"))]
fn jit_fallback(_rt: &Runtime, _f: &InstalledFunction, spec: FunctionSpec, reasons: Vec<String>) -> Result<LoadedFunction, RunError> {
    Err(RunError::NoUsableTier { function: spec.name, reasons: reasons.join("; ") })
}
