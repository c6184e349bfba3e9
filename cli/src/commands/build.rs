use super::{deferred_secret_key, CargoFlags, CrateArgs};
use crate::ui::Ui;
use anyhow::Context;
use clap::Args;
use std::path::PathBuf;

/// Build a function crate (or a prebuilt component) into a bundle.
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
    after_help = "Examples:\n  limes-pack build hello --sign limes.key\n  limes-pack build --manifest-path fns/Cargo.toml -p hello --tier x86-64-v3,aarch64-lse\n  limes-pack build --component app.wasm --name app --version 1.0.0 --allow-outbound https://api.example.com\n  LIMES_SIGN=env:LIMES_KEY limes-pack build --locked --json"
)]
pub struct BuildCommand {
    #[command(flatten)]
    krate: CrateArgs,
    #[command(flatten)]
    prebuilt: PrebuiltArgs,
    #[command(flatten)]
    cargo: CargoFlags,
    /// CPU tiers to precompile (repeat or comma-separate): x86-64,
    /// x86-64-v2, x86-64-v3 for x86_64 devices, aarch64 and aarch64-lse
    /// (ARMv8.1+ atomics) for ARM64 devices [default: metadata `tiers`,
    /// else all; a device downloads and maps only its own].
    #[arg(long, value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(limes_bundle::profile::Tier::names()))]
    tier: Vec<String>,
    /// Directory for the component and the bundle.
    #[arg(long, value_name = "DIR")]
    out_dir: Option<PathBuf>,
    /// Sign with this minisign secret key: a file, or `env:VAR` for a
    /// variable holding the key text.
    /// (`--key` signs in `build` and `sign` alike; `--sign` is the old spelling.)
    #[arg(long = "key", visible_alias = "sign", value_name = "KEY", env = "LIMES_SIGN")]
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

/// A component built elsewhere (componentize-js, TinyGo, wasm-tools, ...):
/// validated, precompiled, bundled and signed like a crate's, with what a
/// crate's `[package.metadata.limes]` would say given here.
#[derive(Args)]
#[command(next_help_heading = "Prebuilt component")]
struct PrebuiltArgs {
    /// Ship this WebAssembly component instead of building a crate: it must
    /// export limes:function/handler or wasi:http/incoming-handler@0.2 and
    /// import only what limes provides. Needs --name and --version.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["path", "manifest_path", "package"], requires_all = ["name", "version"])]
    component: Option<PathBuf>,
    /// The function's name (with --component).
    #[arg(long, value_name = "NAME", requires = "component")]
    name: Option<String>,
    /// The function's version (with --component).
    #[arg(long = "version", id = "version", value_name = "VERSION", requires = "component")]
    version: Option<String>,
    /// An origin the function may call through wasi:http/outgoing-handler,
    /// `scheme://host[:port]` (repeat; with --component; a crate declares
    /// `allowed-outbound-hosts` in its metadata).
    #[arg(long = "allow-outbound", value_name = "ORIGIN", requires = "component")]
    allow_outbound: Vec<String>,
    /// Memory limit of one instance, MiB (with --component).
    #[arg(long, value_name = "MIB", requires = "component")]
    memory_limit_mib: Option<u64>,
    /// Wall-time limit of one call, ms (with --component).
    #[arg(long, value_name = "MS", requires = "component")]
    timeout_ms: Option<u64>,
    /// Largest request body, MiB (with --component).
    #[arg(long, value_name = "MIB", requires = "component")]
    max_input_mib: Option<u64>,
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
        let out = match &self.prebuilt.component {
            None => limes_build::build(&opts, ui)?,
            Some(component) => {
                let p = &self.prebuilt;
                let meta = limes_build::project::LimesMetadata {
                    tiers: (!self.tier.is_empty()).then(|| self.tier.clone()),
                    memory_limit_mib: p.memory_limit_mib,
                    timeout_ms: p.timeout_ms,
                    max_input_mib: p.max_input_mib,
                    allowed_outbound_hosts: p.allow_outbound.clone(),
                    ..Default::default()
                };
                // Output beside the caller's other builds: ./target/limes.
                let target = std::env::current_dir().context("the current directory")?.join("target");
                let (name, version) = (p.name.as_deref().unwrap_or_default(), p.version.as_deref().unwrap_or_default());
                let project = limes_build::Project::prebuilt(component, name, version, meta, &target)?;
                limes_build::pipeline::build_project(project, &opts, ui)?
            }
        };
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
