use super::Ctx;
use anyhow::Context;
use clap::Args;
use limes::pull::{pull, PullOptions};
use limes::Store;
use limes_bundle::TrustedKeys;
use std::path::PathBuf;
use std::process::ExitCode;

/// Install a function from an OCI registry (`registry/repo:tag` or `@sha256:…`).
///
/// Fetches the manifest and signature, verifies them against the trusted
/// keys, then fetches only the component and the best CPU tier for this
/// host (and the microVM image with --with-microvm), checking every blob
/// against the signed digests. Files the store already holds are reused.
/// Credentials: --username with LIMES_REGISTRY_PASSWORD, or
/// LIMES_REGISTRY_USERNAME/PASSWORD, or Docker's config.json; else anonymous.
#[derive(Args)]
#[command(
    after_help = "Examples:\n  limes pull registry.example.com/fns/hello:0.1.0 --trust limes.pub\n  limes pull 127.0.0.1:5000/fns/hello:0.1.0 --insecure --trust limes.pub --with-microvm"
)]
pub struct PullCommand {
    /// OCI reference.
    reference: String,
    /// Trusted public key, or a directory of `.pub` files (repeatable).
    #[arg(long, required = true, value_name = "KEY|DIR")]
    trust: Vec<PathBuf>,
    #[command(flatten)]
    registry: RegistryArgs,
    /// Fetch every CPU tier, not only the best for this host.
    #[arg(long)]
    all_tiers: bool,
    #[command(flatten)]
    policy: super::install::PolicyArgs,
}

/// Registry options shared by `pull` and `install REF`.
#[derive(Args, Clone, Debug)]
pub struct RegistryArgs {
    /// Plain HTTP; allowed only for registries on loopback.
    #[arg(long)]
    insecure: bool,
    /// Registry user name (password from LIMES_REGISTRY_PASSWORD).
    #[arg(long)]
    username: Option<String>,
    /// Also fetch the microVM image.
    #[arg(long)]
    with_microvm: bool,
    /// Longest silence from the registry (connecting, or while a response is
    /// awaited or read) before the pull fails, in ms.
    #[arg(long, default_value_t = 30_000, value_name = "MS")]
    registry_timeout_ms: u64,
    /// The whole pull (every request and retry) must finish within this, in ms.
    #[arg(long, default_value_t = limes_oci::Timeouts::default().total.as_millis() as u64, value_name = "MS")]
    pull_timeout_ms: u64,
    /// Slowest accepted download, in bytes per second on average after its
    /// first 5 s: a registry that drips its answer is cut off.
    #[arg(long, default_value_t = limes_oci::Timeouts::default().min_rate, value_name = "BYTES_PER_S")]
    min_transfer_rate: u64,
}

impl PullCommand {
    pub fn from_install(reference: String, trust: Vec<PathBuf>, registry: RegistryArgs, policy: super::install::PolicyArgs) -> Self {
        PullCommand { reference, trust, registry, all_tiers: false, policy }
    }

    pub fn execute(self, ctx: &Ctx) -> anyhow::Result<ExitCode> {
        let keys = TrustedKeys::load(&self.trust)?;
        let store = Store::open(&ctx.store)?;
        let opts = PullOptions {
            insecure: self.registry.insecure,
            credentials: limes_oci::Credentials { username: self.registry.username.clone(), password: std::env::var("LIMES_REGISTRY_PASSWORD").ok() },
            with_microvm: self.registry.with_microvm,
            all_tiers: self.all_tiers,
            policy: self.policy.policy(),
            timeouts: limes_oci::Timeouts {
                connect: std::time::Duration::from_millis(self.registry.registry_timeout_ms.min(10_000)),
                read: std::time::Duration::from_millis(self.registry.registry_timeout_ms),
                min_rate: self.registry.min_transfer_rate,
                total: std::time::Duration::from_millis(self.registry.pull_timeout_ms),
            },
        };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let r = rt.block_on(pull(&store, &self.reference, &keys, &opts)).with_context(|| format!("pulling {}", self.reference))?;
        let f = &r.function;
        super::adopt(ctx, &store, &keys, f, self.policy.rotate_key)?;
        if ctx.json {
            println!(
                "{}",
                serde_json::json!({"ok": true, "name": f.record.name, "version": f.record.version, "oci_digest": r.oci_digest,
                    "downloaded": r.downloaded, "reused": r.reused, "signer": f.record.signer})
            );
        } else {
            println!(
                "installed {} {} from {} (downloaded: {}; reused: {})",
                f.record.name,
                f.record.version,
                self.reference,
                if r.downloaded.is_empty() { "nothing".into() } else { r.downloaded.join(", ") },
                if r.reused.is_empty() { "nothing".into() } else { r.reused.join(", ") }
            );
        }
        Ok(ExitCode::SUCCESS)
    }
}
