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
            name: "limes-engine-v3".into(),
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
pub const WASMTIME_VERSION: &str = "50.0.1";

/// A CPU architecture limes precompiles for. Tiers, artifacts and microVM
/// images name theirs; a loader runs only its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    pub const ALL: [Arch; 2] = [Arch::X86_64, Arch::Aarch64];

    /// The name used in messages and `inspect` (as Rust's `target_arch`).
    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    /// The target triple this architecture's tiers compile for (Linux: the
    /// loader's libc does not change generated code, so musl devices load
    /// these artifacts too).
    pub fn triple(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-unknown-linux-gnu",
            Arch::Aarch64 => "aarch64-unknown-linux-gnu",
        }
    }

    /// The architecture of a target triple (its first component).
    pub fn of_triple(triple: &str) -> Option<Arch> {
        match triple.split('-').next()? {
            "x86_64" => Some(Arch::X86_64),
            "aarch64" => Some(Arch::Aarch64),
            _ => None,
        }
    }

    /// The OCI platform architecture (`GOARCH` spelling), for registries.
    pub fn oci_name(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Aarch64 => "arm64",
        }
    }

    /// The architecture of the running Linux host, if limes runs code there.
    pub fn host() -> Option<Arch> {
        if !cfg!(target_os = "linux") {
            None
        } else if cfg!(target_arch = "x86_64") {
            Some(Arch::X86_64)
        } else if cfg!(target_arch = "aarch64") {
            Some(Arch::Aarch64)
        } else {
            None
        }
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A CPU tier: an architecture, a named set of Cranelift ISA flags, and the
/// host CPU features that must be present to run code compiled with them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tier {
    pub name: &'static str,
    pub arch: Arch,
    /// Cranelift ISA settings enabled for this tier.
    pub cranelift_flags: &'static [&'static str],
    /// Host features (names as `is_x86_feature_detected!` /
    /// `is_aarch64_feature_detected!` spell them).
    pub cpu_features: &'static [&'static str],
    /// Higher is preferred when the host supports it (compared within one
    /// architecture).
    pub rank: u8,
}

const V2_FLAGS: &[&str] = &["has_sse3", "has_ssse3", "has_cmpxchg16b", "has_sse41", "has_sse42", "has_popcnt"];
const V2_CPU: &[&str] = &["sse3", "ssse3", "cmpxchg16b", "sse4.1", "sse4.2", "popcnt"];
const V3_FLAGS: &[&str] =
    &["has_sse3", "has_ssse3", "has_cmpxchg16b", "has_sse41", "has_sse42", "has_popcnt", "has_avx", "has_avx2", "has_bmi1", "has_bmi2", "has_fma", "has_lzcnt"];
const V3_CPU: &[&str] = &["sse3", "ssse3", "cmpxchg16b", "sse4.1", "sse4.2", "popcnt", "avx", "avx2", "bmi1", "bmi2", "fma", "lzcnt"];

/// Every tier limes knows, lowest first within each architecture.
///
/// aarch64: Cranelift's AArch64 backend (0.135) has five ISA features:
/// `has_lse`, `has_pauth`, `has_fp16`, `has_dotprod`, `has_i8mm`. Only LSE
/// changes code a limes function runs: single-instruction atomics (`ldadd`,
/// `cas`, `swp`) instead of load/store-exclusive loops. `has_pauth` matters
/// only with return-address signing (a hardening choice, off here),
/// `has_fp16` only for the f16 proposal, and `has_dotprod`/`has_i8mm` only
/// for relaxed-SIMD dot products; the profile enables neither proposal. So:
/// a baseline every ARMv8.0-A Linux device runs (Cortex-A53/A72: Raspberry
/// Pi 3 and 4, Jetson Nano), and one LSE tier for ARMv8.1-A and later
/// (Cortex-A55/A76/A78, Neoverse N1/V1: Raspberry Pi 5, Jetson Orin,
/// Graviton 2-4). The loader reads LSE from the kernel's HWCAP, as Wasmtime
/// does when it checks the artifact.
pub const TIERS: &[Tier] = &[
    Tier { name: "x86-64", arch: Arch::X86_64, cranelift_flags: &[], cpu_features: &[], rank: 1 },
    Tier { name: "x86-64-v2", arch: Arch::X86_64, cranelift_flags: V2_FLAGS, cpu_features: V2_CPU, rank: 2 },
    Tier { name: "x86-64-v3", arch: Arch::X86_64, cranelift_flags: V3_FLAGS, cpu_features: V3_CPU, rank: 3 },
    Tier { name: "aarch64", arch: Arch::Aarch64, cranelift_flags: &[], cpu_features: &[], rank: 1 },
    Tier { name: "aarch64-lse", arch: Arch::Aarch64, cranelift_flags: &["has_lse"], cpu_features: &["lse"], rank: 2 },
];

/// Tiers built when neither the command line nor the crate metadata says:
/// every tier of both architectures (a device downloads only its own).
pub const DEFAULT_TIERS: &[&str] = &["x86-64", "x86-64-v2", "x86-64-v3", "aarch64", "aarch64-lse"];

/// Why a tier cannot run on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Misfit {
    /// Compiled for another architecture (or the host is not Linux on a
    /// known one: `host` is `None`).
    Arch { tier: Arch, host: Option<Arch> },
    /// The host CPU lacks these features.
    Features(Vec<&'static str>),
}

impl std::fmt::Display for Misfit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Misfit::Arch { tier, host: Some(h) } => write!(f, "built for {tier}, this host is {h}"),
            Misfit::Arch { tier, host: None } => write!(f, "built for {tier}, this host runs no limes tier"),
            Misfit::Features(missing) => write!(f, "host CPU lacks {}", missing.join(", ")),
        }
    }
}

impl Tier {
    pub fn by_name(name: &str) -> Option<Tier> {
        TIERS.iter().copied().find(|t| t.name == name)
    }

    pub fn names() -> Vec<&'static str> {
        TIERS.iter().map(|t| t.name).collect()
    }

    /// The target triple this tier compiles for.
    pub fn target(&self) -> &'static str {
        self.arch.triple()
    }

    /// Whether code of this tier runs on this host, and if not, why.
    pub fn fits_host(&self) -> Result<(), Misfit> {
        let host = Arch::host();
        if host != Some(self.arch) {
            return Err(Misfit::Arch { tier: self.arch, host });
        }
        let missing: Vec<_> = self.cpu_features.iter().copied().filter(|f| !host_has(f)).collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(Misfit::Features(missing))
        }
    }

    /// The best tier of [`TIERS`] this host runs (the one `limes-pack run`
    /// compiles for).
    pub fn best_for_host() -> Option<Tier> {
        TIERS.iter().copied().filter(|t| t.fits_host().is_ok()).max_by_key(|t| t.rank)
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

/// As Wasmtime reads them on aarch64 Linux: the kernel's HWCAP bits
/// (`getauxval(AT_HWCAP)`), which is what `is_aarch64_feature_detected!`
/// consults; Wasmtime checks `has_lse` against the same "lse" when it loads
/// an artifact.
#[cfg(target_arch = "aarch64")]
fn host_has(feature: &str) -> bool {
    match feature {
        "lse" => std::arch::is_aarch64_feature_detected!("lse"),
        _ => false,
    }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn host_has(_feature: &str) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_are_nested() {
        for w in TIERS.windows(2).filter(|w| w[0].arch == w[1].arch) {
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
    fn baseline_fits_every_host_of_its_arch() {
        for t in TIERS.iter().filter(|t| t.rank == 1) {
            assert!(t.cranelift_flags.is_empty() && t.cpu_features.is_empty(), "{} is not a baseline", t.name);
            assert_eq!(t.fits_host().is_ok(), Arch::host() == Some(t.arch), "{}", t.name);
        }
        assert_eq!(Tier::best_for_host().map(|t| t.arch), Arch::host());
    }

    #[test]
    fn every_arch_has_one_baseline_and_default_tiers_cover_it() {
        for a in Arch::ALL {
            assert_eq!(TIERS.iter().filter(|t| t.arch == a && t.rank == 1).count(), 1, "{a}");
            assert!(DEFAULT_TIERS.iter().any(|d| Tier::by_name(d).unwrap().arch == a), "{a}");
            assert_eq!(Arch::of_triple(a.triple()), Some(a));
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
