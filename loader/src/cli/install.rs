use super::Ctx;
use anyhow::Context;
use clap::Args;
use limes::Store;
use limes_bundle::TrustedKeys;
use std::path::PathBuf;
use std::process::ExitCode;

/// Verify a signed bundle and install it into the store.
///
/// The signature must come from a trusted key (matched by key id), every
/// file must match its SHA-256 and size; only then are the files published
/// (read-only) in the store, atomically. Installing an older version than
/// the installed one is refused unless --allow-downgrade. An argument that
/// is not a file but an OCI reference installs from the registry (see
/// `limes pull`, whose options apply).
#[derive(Args)]
#[command(
    after_help = "Examples:\n  limes install hello-0.1.0.limes --trust limes.pub\n  limes install hello-0.2.0.limes --trust /etc/limes/keys/\n  limes install registry.example.com/fns/hello:0.1.0 --trust limes.pub\n  limes install hello-0.1.0.limes --trust new.pub --rotate-key"
)]
pub struct InstallCommand {
    /// The bundle file, or an OCI reference.
    bundle: PathBuf,
    /// With an OCI reference: how to reach the registry.
    #[command(flatten)]
    registry: super::pull::RegistryArgs,
    /// Trusted public key, or a directory of `.pub` files (repeatable).
    #[arg(long, required = true, value_name = "KEY|DIR")]
    trust: Vec<PathBuf>,
    #[command(flatten)]
    policy: PolicyArgs,
    /// Install beside the current version, send it the health request its
    /// manifest declares (in a child process), and switch to it only if it
    /// answers as declared; otherwise the current version stays (exit 1).
    #[arg(long)]
    health_check: bool,
}

/// What an install may override (shared by `install` and `pull`).
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct PolicyArgs {
    /// Allow replacing a function with an older version.
    #[arg(long)]
    allow_downgrade: bool,
    /// Replace an installed build of the same version that has other content.
    #[arg(long)]
    force: bool,
    /// Accept a signer other than the key pinned for this function name
    /// (the key that first installed it): a planned key rotation.
    #[arg(long)]
    pub rotate_key: bool,
    /// Replaced versions to keep for `limes rollback` (and `limes sync`).
    #[arg(long, default_value_t = limes::store::KEEP_PREVIOUS, value_name = "N")]
    keep: usize,
}

impl PolicyArgs {
    pub fn policy(&self) -> limes::store::InstallPolicy {
        limes::store::InstallPolicy { allow_downgrade: self.allow_downgrade, force: self.force, rotate_key: self.rotate_key, keep: self.keep }
    }
}

impl InstallCommand {
    pub fn execute(self, ctx: &Ctx) -> anyhow::Result<ExitCode> {
        let text = self.bundle.to_string_lossy();
        if limes_oci::looks_like_reference(&text) {
            return super::pull::PullCommand::from_install(text.to_string(), self.trust, self.registry, self.policy).execute(ctx);
        }
        let keys = TrustedKeys::load(&self.trust)?;
        let store = Store::open(&ctx.store)?;
        let f = if self.health_check {
            if limes_oci::looks_like_reference(&text) {
                anyhow::bail!("--health-check installs bundle files; `limes sync` checks what it pulls");
            }
            let cand = store.install_candidate(&self.bundle, &keys, self.policy.policy()).with_context(|| format!("installing {}", self.bundle.display()))?;
            let checker = limes::sync::health::Checker {
                exe: std::env::current_exe()?,
                store: ctx.store.clone(),
                trust_dir: ctx.trust_dir.clone(),
                trust: self.trust.clone(),
            };
            match limes::sync::switch_if_healthy(&store, &checker, &cand, self.policy.policy().keep) {
                Ok((f, _)) => f,
                Err(e @ limes::sync::SyncError::Health(_)) => {
                    return Err(anyhow::Error::from(e).context(format!("not switching to {}; the installed version stays", self.bundle.display())))
                }
                Err(e) => return Err(e.into()),
            }
        } else {
            store.install(&self.bundle, &keys, self.policy.policy()).with_context(|| format!("installing {}", self.bundle.display()))?
        };
        super::adopt(ctx, &store, &keys, &f, self.policy.rotate_key)?;
        if ctx.json {
            println!(
                "{}",
                serde_json::json!({"ok": true, "name": f.record.name, "version": f.record.version,
                    "object": f.record.object, "signer": f.record.signer})
            );
        } else if !ctx.quiet {
            println!("installed {} {} (signed by {})", f.record.name, f.record.version, f.record.signer);
        }
        Ok(ExitCode::SUCCESS)
    }
}
