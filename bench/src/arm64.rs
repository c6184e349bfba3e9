//! ARM64 devices, measured from this x86_64 machine: what the aarch64 tiers
//! add to a build, and Wasm AOT on the static aarch64 loader against the
//! same pack's native aarch64 build, both run under qemu-user in turn.
//!
//! Under emulation both sides slow down alike, so only their ratio means
//! something; the absolute times say nothing about a real device.

use crate::{time, ProcessRequest, Row, Stats};
use anyhow::Result;
use limes_bundle::profile::{Arch, EngineProfile, TIERS};
use serde::Serialize;
use std::path::Path;
use std::time::Duration;

/// Row names of the emulated whole-process measurements.
pub(crate) const RUN_AARCH64: &str = "aarch64: limes run (qemu-user)";
pub(crate) const NATIVE_AARCH64: &str = "aarch64: native process (qemu-user)";

/// Precompile time and size of every tier of one pack, one tier at a time
/// (the build compiles them in parallel; here each has the machine alone).
#[derive(Debug, Clone, Serialize)]
pub struct TierCostRow {
    pub pack: String,
    /// `(tier, architecture, p50 ms over the runs, bytes)`.
    pub tiers: Vec<(String, String, f64, u64)>,
}

impl TierCostRow {
    /// Total precompile ms and bytes of one architecture's tiers.
    pub fn total(&self, arch: Arch) -> (f64, u64) {
        self.tiers.iter().filter(|t| t.1 == arch.name()).fold((0.0, 0), |(ms, b), t| (ms + t.2, b + t.3))
    }
}

/// Precompile `wasm` for every tier, `runs` times each, taking turns.
pub fn tier_costs(pack: &str, wasm: &[u8], profile: &EngineProfile, runs: usize) -> Result<TierCostRow> {
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); TIERS.len()];
    let mut sizes = vec![0u64; TIERS.len()];
    for _ in 0..runs.max(1) {
        for (i, tier) in TIERS.iter().enumerate() {
            let engine = limes_build::aot::engine_for(tier, profile)?;
            let (t, bytes) = time(|| engine.precompile_component(wasm));
            sizes[i] = bytes.map_err(|e| anyhow::anyhow!("{pack}: precompiling {}: {e:#}", tier.name))?.len() as u64;
            samples[i].push(t);
        }
    }
    let tiers = TIERS
        .iter()
        .zip(samples.iter().zip(&sizes))
        .map(|(t, (s, &size))| Ok((t.name.to_string(), t.arch.name().to_string(), Stats::of(s, t.name)?.p50_us / 1e3, size)))
        .collect::<Result<Vec<_>>>()?;
    Ok(TierCostRow { pack: pack.into(), tiers })
}

/// `limes run` on the aarch64 loader and the native aarch64 executable, in
/// turn, `runs` times each; both started by the kernel through qemu-user
/// (binfmt_misc). The store is the benchmark's: its installs hold every
/// tier, and the aarch64 loader maps its own.
pub fn emulated_rows(loader: &Path, native: &Path, store: &Path, workload: &str, request: &ProcessRequest<'_>, runs: usize) -> Result<Vec<Row>> {
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..runs.max(1) {
        theirs.push(request.native(native)?);
        ours.push(request.limes_run(loader, store)?);
    }
    Ok(vec![
        Row { workload: workload.into(), method: RUN_AARCH64.into(), phase: "total".into(), stats: Stats::of(&ours, RUN_AARCH64)? },
        Row { workload: workload.into(), method: NATIVE_AARCH64.into(), phase: "total".into(), stats: Stats::of(&theirs, NATIVE_AARCH64)? },
    ])
}

/// Whether this machine runs aarch64 executables (qemu-user registered
/// with binfmt_misc, as scripts/setup.sh does).
pub fn can_run_aarch64() -> bool {
    std::fs::read_to_string("/proc/sys/fs/binfmt_misc/qemu-aarch64").is_ok_and(|s| s.starts_with("enabled"))
}

/// `limes-bench --only-arm64`: build and install the three packs, then
/// measure the tier costs and the emulated rows only (the figures of
/// #25's aims, without the rest of the benchmark).
pub fn only(
    store: &limes::Store,
    keys: &limes_bundle::TrustedKeys,
    key: &limes_bundle::keys::SecretKey,
    work: &Path,
    quick: bool,
) -> Result<(Vec<TierCostRow>, Vec<Row>)> {
    anyhow::ensure!(can_run_aarch64(), "qemu-user is not registered for aarch64 executables (binfmt_misc): run scripts/setup.sh");
    let profile = EngineProfile::default();
    let loader = crate::device_loader_for(limes::DEVICE_TARGET_AARCH64)?;
    let natives = crate::native_builds(Some(limes::DEVICE_TARGET_AARCH64))?;
    let jpeg = std::fs::read(crate::repo().join("packs/image/testdata/input-1024x768.jpg"))?;
    let (mut costs, mut rows) = (Vec::new(), Vec::new());
    for (pack, workload, body) in [("noop", "noop", b"hello".to_vec()), ("mandelbrot", "mandelbrot", Vec::new()), ("image", "image (body)", jpeg)] {
        eprintln!("arm64: {pack}");
        let opts = limes_build::BuildOptions { microvm: false, ..crate::signed_build_options(crate::repo().join("packs").join(pack), work.join("out"), key) };
        let out = limes_build::build(&opts, &limes_build::pipeline::NoProgress)?;
        let f = store.install(&out.bundle, keys, Default::default())?;
        let name = &f.manifest.function.name;
        costs.push(tier_costs(name, &std::fs::read(&out.component)?, &profile, if quick { 1 } else { 5 })?);
        let req = limes_sdk::Request::new(body);
        let request = ProcessRequest::new(name, &req, &[], work.join(format!("{pack}.body")))?;
        rows.extend(emulated_rows(&loader, &natives[pack], store.root(), workload, &request, emulated_runs(quick, pack))?);
    }
    Ok((costs, rows))
}

/// How many emulated runs of each side a workload gets (the no-op's are
/// short, so it takes more).
pub fn emulated_runs(quick: bool, pack: &str) -> usize {
    if quick {
        1
    } else if pack == "noop" {
        30
    } else {
        10
    }
}
