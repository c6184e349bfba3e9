use super::{deferred_secret_key, CargoFlags, CrateArgs};
use crate::ui::Ui;
use anyhow::Context;
use clap::Args;
use std::path::PathBuf;

/// Build a function crate into a bundle.
///
/// Compiles the crate for wasm32-wasip2, checks that the component exports
/// the limes world and imports only WASI 0.2, precompiles it with Wasmtime
/// for each CPU tier, and writes `NAME-VERSION.limes` (tar + zstd, manifest
/// with SHA-256 of every file, optionally signed). Output goes to
/// `target/limes/` of the crate's workspace unless --out-dir is given.
/// Builds are reproducible (SOURCE_DATE_EPOCH is honoured, default 0) and
/// cached: a build with no change rewrites nothing.
#[derive(Args)]
#[command(
    after_help = "Examples:\n  limes-pack build hello --sign limes.key\n  limes-pack build --manifest-path fns/Cargo.toml -p hello --tier x86-64-v3\n  LIMES_SIGN=env:LIMES_KEY limes-pack build --locked --json"
)]
pub struct BuildCommand {
    #[command(flatten)]
    krate: CrateArgs,
    #[command(flatten)]
    cargo: CargoFlags,
    /// CPU tiers to precompile (repeat or comma-separate): x86-64,
    /// x86-64-v2, x86-64-v3 [default: metadata `tiers`, else all].
    #[arg(long, value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(limes_bundle::profile::Tier::names()))]
    tier: Vec<String>,
    /// Directory for the component and the bundle.
    #[arg(long, value_name = "DIR")]
    out_dir: Option<PathBuf>,
    /// Sign with this minisign secret key: a file, or `env:VAR` for a
    /// variable holding the key text.
    #[arg(long, value_name = "KEY", env = "LIMES_SIGN")]
    sign: Option<String>,
    /// Recompile every tier instead of reusing the content-addressed AOT cache.
    #[arg(long)]
    no_cache: bool,
    /// Skip the microVM image.
    #[arg(long)]
    no_microvm: bool,
    /// Which microVM image to build: `hermit`, the function linked into a
    /// Hermit unikernel with limes' boot loader (needs the pinned nightly,
    /// see docs/hermit.md); or `linux`, a static x86_64-unknown-linux-musl
    /// build as /init of an initramfs for a Linux kernel. Both come with a
    /// Firecracker config. [default: hermit; linux with --kernel]
    #[arg(long, value_enum, conflicts_with = "no_microvm")]
    image: Option<ImageArg>,
    /// Embed this Linux kernel (ELF vmlinux or bzImage) in the bundle
    /// (`--image linux`); by default the kernel is a device-side setting.
    #[arg(long, value_name = "PATH", conflicts_with = "no_microvm")]
    kernel: Option<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ImageArg {
    Hermit,
    Linux,
}

impl From<ImageArg> for limes_bundle::manifest::ImageKind {
    fn from(a: ImageArg) -> Self {
        match a {
            ImageArg::Hermit => Self::Hermit,
            ImageArg::Linux => Self::Linux,
        }
    }
}

impl BuildCommand {
    pub fn execute(self, ui: &Ui) -> anyhow::Result<()> {
        let signing_key = self.sign.as_deref().map(deferred_secret_key).transpose().context("loading the signing key")?;
        let opts = limes_build::BuildOptions {
            path: self.krate.location(),
            package: self.krate.package.clone(),
            cargo: self.cargo.options(ui.quiet || ui.json),
            tiers: self.tier.clone(),
            out_dir: self.out_dir.clone(),
            // This process runs one build: a signed one is isolated from what
            // it ran before the key is read.
            isolate: signing_key.is_some(),
            signing_key,
            source_date_epoch: None,
            no_cache: self.no_cache,
            microvm: !self.no_microvm,
            kernel: self.kernel.clone(),
            // An embedded kernel is a Linux image's.
            image: match (self.image, &self.kernel) {
                (Some(i), _) => i.into(),
                (None, Some(_)) => limes_bundle::manifest::ImageKind::Linux,
                (None, None) => limes_bundle::manifest::ImageKind::Hermit,
            },
        };
        let out = limes_build::build(&opts, ui)?;
        let m = &out.manifest;
        let json = serde_json::json!({
            "ok": true,
            "function": m.function.name,
            "version": m.function.version,
            "bundle": out.bundle,
            "bundle_size": out.bundle_size,
            "bundle_unchanged": out.bundle_unchanged,
            "component": out.component,
            "world": m.world,
            "microvm": m.microvm,
            "tiers": out.aot.iter().map(|a| serde_json::json!({
                "tier": a.tier.name, "size": a.size, "cached": a.cached,
                "compile_us": a.compile_time.as_micros() as u64,
            })).collect::<Vec<_>>(),
            "signed_by": out.signed_by.map(|k| k.to_string()),
            "timings": {
                "cargo_us": out.timings.cargo.as_micros() as u64,
                "validate_us": out.timings.validate.as_micros() as u64,
                "microvm_us": out.timings.microvm.as_micros() as u64,
                "aot_us": out.timings.aot.as_micros() as u64,
                "bundle_us": out.timings.bundle.as_micros() as u64,
                "total_us": out.timings.total.as_micros() as u64,
            },
        });
        ui.result(json, || {
            let mut s = format!(
                "built {} {} ({:?} world, export {})\n  imports: {}\n",
                m.function.name,
                m.function.version,
                m.world.kind,
                m.world.export,
                if m.world.imports.is_empty() { "none".into() } else { m.world.imports.join(", ") }
            );
            for a in &out.aot {
                s += &format!(
                    "  tier {:<10} {:>9} bytes  {}\n",
                    a.tier.name,
                    a.size,
                    if a.cached { "(cached)".to_string() } else { format!("{:.0} ms", a.compile_time.as_secs_f64() * 1e3) }
                );
            }
            if let Some(vm) = &m.microvm {
                let size = m.file(&vm.initrd).map(|f| f.size).unwrap_or(0);
                let what = match vm.kind {
                    limes_bundle::manifest::ImageKind::Hermit => "Hermit unikernel",
                    limes_bundle::manifest::ImageKind::Linux => "Linux initrd",
                };
                s += &format!(
                    "  microvm   {what} {} bytes, {} vCPU, {} MiB{}\n",
                    size,
                    vm.vcpus,
                    vm.memory_mib,
                    if vm.kind == limes_bundle::manifest::ImageKind::Linux && vm.kernel.is_some() { ", kernel embedded" } else { "" }
                );
            }
            s += &format!("  component {}\n", out.component.display());
            s += &format!(
                "  bundle    {} ({} bytes{}{})\n",
                out.bundle.display(),
                out.bundle_size,
                match out.signed_by {
                    Some(k) => format!(", signed by {k}"),
                    None => ", unsigned".into(),
                },
                if out.bundle_unchanged { ", unchanged" } else { "" }
            );
            s
        });
        Ok(())
    }
}
