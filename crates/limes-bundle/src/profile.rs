//! The engine profile: every Wasmtime setting that changes compiled code or
//! whether a precompiled artifact loads. The packer and the loader both build
//! their `wasmtime::Config` from [`EngineProfile::apply`], so they agree by
//! construction; the profile is recorded in the manifest and its digest is
//! checked by the loader before it touches an artifact.

use serde::{Deserialize, Serialize};

/// The profile compiled into this build of limes. Bump `name` whenever a
/// setting below changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineProfile {
    pub name: String,
    /// Virtual address space reserved per linear memory (bytes). With 4 GiB
    /// plus guards, 32-bit memories need no explicit bounds checks.
    pub memory_reservation: u64,
    pub memory_guard_size: u64,
    pub memory_reservation_for_growth: u64,
    /// Off: an epoch check at every loop header costs up to 2x in hot loops
    /// (its slow path is a call, so loop values spill to the stack). Wall-time
    /// limits are enforced by ending the executor instead: a watchdog ends
    /// `limes run`, and `limes serve` kills the worker process.
    pub epoch_interruption: bool,
    pub consume_fuel: bool,
    pub wasm_simd: bool,
    pub wasm_relaxed_simd: bool,
    pub wasm_multi_memory: bool,
    pub component_model: bool,
    /// Keep the wasm address map out of artifacts: smaller `.cwasm`, traps
    /// report function names only.
    pub generate_address_map: bool,
}

impl Default for EngineProfile {
    fn default() -> Self {
        EngineProfile {
            name: "limes-engine-v2".into(),
            memory_reservation: 4 << 30,
            memory_guard_size: 32 << 20,
            memory_reservation_for_growth: 0,
            epoch_interruption: false,
            consume_fuel: false,
            wasm_simd: true,
            wasm_relaxed_simd: false,
            wasm_multi_memory: false,
            component_model: true,
            generate_address_map: false,
        }
    }
}

impl EngineProfile {
    /// Apply every code-affecting setting to `config`. Runtime-only settings
    /// (allocator, limits) are the caller's business.
    pub fn apply(&self, config: &mut wasmtime::Config) {
        config
            .memory_reservation(self.memory_reservation)
            .memory_guard_size(self.memory_guard_size)
            .memory_reservation_for_growth(self.memory_reservation_for_growth)
            .epoch_interruption(self.epoch_interruption)
            .consume_fuel(self.consume_fuel)
            .wasm_simd(self.wasm_simd)
            .wasm_relaxed_simd(self.wasm_relaxed_simd)
            .wasm_multi_memory(self.wasm_multi_memory)
            .wasm_component_model(self.component_model)
            .generate_address_map(self.generate_address_map);
    }

    /// Digest of the canonical JSON form; recorded in the manifest.
    pub fn digest(&self) -> String {
        crate::sha256_hex(&serde_json::to_vec(self).expect("profile serializes"))
    }
}

/// The Wasmtime version this crate was built against. Artifacts compiled by a
/// different version never load, so it is part of every compatibility check.
pub const WASMTIME_VERSION: &str = "48.0.8";

/// The target triple every tier compiles for.
pub const TARGET_TRIPLE: &str = "x86_64-unknown-linux-gnu";

/// An x86_64 CPU tier: a named set of Cranelift ISA flags, and the host CPU
/// features that must be present to run code compiled with them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tier {
    pub name: &'static str,
    /// Cranelift x64 settings enabled for this tier.
    pub cranelift_flags: &'static [&'static str],
    /// Host features (names as `is_x86_feature_detected!` spells them).
    pub cpu_features: &'static [&'static str],
    /// Higher is preferred when the host supports it.
    pub rank: u8,
}

const V2_FLAGS: &[&str] = &["has_sse3", "has_ssse3", "has_cmpxchg16b", "has_sse41", "has_sse42", "has_popcnt"];
const V2_CPU: &[&str] = &["sse3", "ssse3", "cmpxchg16b", "sse4.1", "sse4.2", "popcnt"];
const V3_FLAGS: &[&str] =
    &["has_sse3", "has_ssse3", "has_cmpxchg16b", "has_sse41", "has_sse42", "has_popcnt", "has_avx", "has_avx2", "has_bmi1", "has_bmi2", "has_fma", "has_lzcnt"];
const V3_CPU: &[&str] = &["sse3", "ssse3", "cmpxchg16b", "sse4.1", "sse4.2", "popcnt", "avx", "avx2", "bmi1", "bmi2", "fma", "lzcnt"];

/// Every tier limes knows, lowest first.
pub const TIERS: &[Tier] = &[
    Tier { name: "x86-64", cranelift_flags: &[], cpu_features: &[], rank: 1 },
    Tier { name: "x86-64-v2", cranelift_flags: V2_FLAGS, cpu_features: V2_CPU, rank: 2 },
    Tier { name: "x86-64-v3", cranelift_flags: V3_FLAGS, cpu_features: V3_CPU, rank: 3 },
];

/// Tiers built when neither the command line nor the crate metadata says.
pub const DEFAULT_TIERS: &[&str] = &["x86-64", "x86-64-v2", "x86-64-v3"];

impl Tier {
    pub fn by_name(name: &str) -> Option<Tier> {
        TIERS.iter().copied().find(|t| t.name == name)
    }

    pub fn names() -> Vec<&'static str> {
        TIERS.iter().map(|t| t.name).collect()
    }

    /// Features of this tier missing on the running host (empty: it fits).
    pub fn missing_on_host(&self) -> Vec<&'static str> {
        self.cpu_features.iter().copied().filter(|f| !host_has(f)).collect()
    }
}

#[cfg(target_arch = "x86_64")]
fn host_has(feature: &str) -> bool {
    match feature {
        "sse3" => std::arch::is_x86_feature_detected!("sse3"),
        "ssse3" => std::arch::is_x86_feature_detected!("ssse3"),
        "cmpxchg16b" => std::arch::is_x86_feature_detected!("cmpxchg16b"),
        "sse4.1" => std::arch::is_x86_feature_detected!("sse4.1"),
        "sse4.2" => std::arch::is_x86_feature_detected!("sse4.2"),
        "popcnt" => std::arch::is_x86_feature_detected!("popcnt"),
        "avx" => std::arch::is_x86_feature_detected!("avx"),
        "avx2" => std::arch::is_x86_feature_detected!("avx2"),
        "bmi1" => std::arch::is_x86_feature_detected!("bmi1"),
        "bmi2" => std::arch::is_x86_feature_detected!("bmi2"),
        "fma" => std::arch::is_x86_feature_detected!("fma"),
        "lzcnt" => std::arch::is_x86_feature_detected!("lzcnt"),
        _ => false,
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn host_has(_feature: &str) -> bool {
    false
}

/// Whether this host can run x86_64 code at all.
pub fn host_is_x86_64() -> bool {
    cfg!(all(target_arch = "x86_64", target_os = "linux"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_are_nested() {
        for w in TIERS.windows(2) {
            for f in w[0].cranelift_flags {
                assert!(w[1].cranelift_flags.contains(f), "{} lacks {f}", w[1].name);
            }
            assert!(w[0].rank < w[1].rank);
            assert_eq!(w[1].cranelift_flags.len(), w[1].cpu_features.len());
        }
        for d in DEFAULT_TIERS {
            assert!(Tier::by_name(d).is_some());
        }
    }

    #[test]
    fn baseline_fits_every_x86_64_host() {
        if host_is_x86_64() {
            assert!(Tier::by_name("x86-64").unwrap().missing_on_host().is_empty());
        }
    }

    #[test]
    fn profile_digest_is_stable() {
        let p = EngineProfile::default();
        assert_eq!(p.digest(), EngineProfile::default().digest());
        let mut q = p.clone();
        q.epoch_interruption = true;
        assert_ne!(p.digest(), q.digest());
    }
}
