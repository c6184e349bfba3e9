//! Picking the precompiled artifact that fits the host.

use limes_bundle::manifest::{AotArtifact, Manifest};
use limes_bundle::profile::{host_is_x86_64, Tier, TARGET_TRIPLE};

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
            skipped.push(Skipped { tier: a.tier.clone(), reason: "unknown tier".into() });
            continue;
        };
        if a.target != TARGET_TRIPLE || !host_is_x86_64() {
            skipped.push(Skipped { tier: a.tier.clone(), reason: format!("built for {}, host differs", a.target) });
            continue;
        }
        let missing = tier.missing_on_host();
        if !missing.is_empty() {
            skipped.push(Skipped { tier: a.tier.clone(), reason: format!("host CPU lacks {}", missing.join(", ")) });
            continue;
        }
        if best.is_none_or(|(_, r)| tier.rank > r) {
            best = Some((a, tier.rank));
        }
    }
    (best.map(|(a, _)| a), skipped)
}
