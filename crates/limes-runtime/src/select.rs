//! Picking the precompiled artifact that fits the host: its architecture
//! (x86_64 or aarch64) and the CPU features the kernel reports.

use limes_bundle::manifest::{AotArtifact, Manifest};
use limes_bundle::profile::{Arch, Tier};

/// Why a tier was passed over, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub tier: String,
    pub reason: String,
}

/// The best tier this host supports, and why the others were skipped.
pub fn best_tier(manifest: &Manifest) -> (Option<&AotArtifact>, Vec<Skipped>) {
    best_tier_of(manifest, |_| true)
}

/// [`best_tier`] among the artifacts for which `present` holds.
pub fn best_tier_of(manifest: &Manifest, present: impl Fn(&str) -> bool) -> (Option<&AotArtifact>, Vec<Skipped>) {
    let mut skipped = Vec::new();
    let mut best: Option<(&AotArtifact, u8)> = None;
    for a in manifest.aot.iter().filter(|a| present(&a.path)) {
        let Some(tier) = Tier::by_name(&a.tier) else {
            skipped.push(Skipped { tier: a.tier.clone(), reason: "a tier this loader does not know (from a newer limes-pack)".into() });
            continue;
        };
        if a.target != tier.target() {
            skipped.push(Skipped { tier: a.tier.clone(), reason: format!("built for {}, the tier is {}", a.target, tier.target()) });
            continue;
        }
        if let Err(misfit) = tier.fits_host() {
            skipped.push(Skipped { tier: a.tier.clone(), reason: misfit.to_string() });
            continue;
        }
        if best.is_none_or(|(_, r)| tier.rank > r) {
            best = Some((a, tier.rank));
        }
    }
    (best.map(|(a, _)| a), skipped)
}

/// The bundle's tiers grouped by architecture, for messages and `inspect`:
/// `x86_64: x86-64, x86-64-v2; aarch64: aarch64`.
pub fn tiers_by_arch(manifest: &Manifest) -> String {
    let groups = manifest.tiers_by_arch();
    if groups.is_empty() {
        return "none".into();
    }
    groups.iter().map(|(g, v)| format!("{g}: {}", v.iter().map(|a| a.tier.as_str()).collect::<Vec<_>>().join(", "))).collect::<Vec<_>>().join("; ")
}

/// Whether the bundle carries precompiled code this host's architecture
/// runs (`Err` names the host and what the bundle has). A bundle without any
/// tier, or a loader that compiles at load (JIT), passes.
pub fn check_host_arch(manifest: &Manifest) -> Result<(), String> {
    check_host_arch_with(manifest, crate::JIT_ENABLED)
}

/// [`check_host_arch`] for a loader with or without JIT.
fn check_host_arch_with(manifest: &Manifest, jit: bool) -> Result<(), String> {
    if manifest.aot.is_empty() || jit {
        return Ok(());
    }
    let host = Arch::host();
    if manifest.aot.iter().any(|a| Tier::by_name(&a.tier).is_some_and(|t| Some(t.arch) == host)) {
        return Ok(());
    }
    Err(format!(
        "{} {} has no precompiled code for this {} device; the bundle's tiers are {}",
        manifest.function.name,
        manifest.function.version,
        host.map(Arch::name).unwrap_or("unsupported"),
        tiers_by_arch(manifest)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use limes_bundle::manifest::aot_path;

    fn with_tiers(names: &[&str]) -> Manifest {
        let mut m = Manifest::sample();
        m.aot = names
            .iter()
            .map(|n| {
                let t = Tier::by_name(n).unwrap();
                AotArtifact {
                    tier: n.to_string(),
                    target: t.target().into(),
                    cpu_flags: t.cranelift_flags.iter().map(|s| s.to_string()).collect(),
                    path: aot_path(n),
                    compat_hash: String::new(),
                }
            })
            .collect();
        m
    }

    #[test]
    fn picks_a_tier_of_the_host_architecture_only() {
        let m = with_tiers(&["x86-64", "x86-64-v2", "aarch64"]);
        let (best, skipped) = best_tier(&m);
        let best = best.expect("the baseline of the host's architecture fits");
        let host = Arch::host().unwrap();
        assert_eq!(Tier::by_name(&best.tier).unwrap().arch, host);
        let foreign = if host == Arch::X86_64 { "aarch64" } else { "x86-64" };
        let s = skipped.iter().find(|s| s.tier == foreign).expect("the foreign tier is skipped");
        assert!(s.reason.contains(&format!("this host is {host}")), "{}", s.reason);
    }

    #[test]
    fn a_bundle_of_the_other_architecture_is_refused_by_name() {
        let host = Arch::host().unwrap();
        let foreign: &[&str] = if host == Arch::X86_64 { &["aarch64", "aarch64-lse"] } else { &["x86-64", "x86-64-v3"] };
        let m = with_tiers(foreign);
        assert!(best_tier(&m).0.is_none());
        let e = check_host_arch_with(&m, false).unwrap_err();
        assert!(e.contains(&format!("this {host} device")) && e.contains(&foreign.join(", ")), "{e}");
        assert!(check_host_arch_with(&m, true).is_ok(), "a JIT loader compiles the component");
        assert!(check_host_arch_with(&with_tiers(&["x86-64", "aarch64"]), false).is_ok());
        assert_eq!(tiers_by_arch(&with_tiers(&["x86-64", "x86-64-v2", "aarch64"])), "x86_64: x86-64, x86-64-v2; aarch64: aarch64");
    }

    #[test]
    fn an_artifact_whose_target_is_not_its_tiers_is_skipped() {
        let mut m = with_tiers(&["x86-64", "aarch64"]);
        for a in &mut m.aot {
            a.target = if a.tier == "aarch64" { "x86_64-unknown-linux-gnu".into() } else { "aarch64-unknown-linux-gnu".into() };
        }
        assert!(best_tier(&m).0.is_none());
    }
}
