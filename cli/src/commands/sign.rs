use super::load_secret_key;
use crate::ui::Ui;
use anyhow::Context;
use clap::Args;
use std::path::PathBuf;

/// Sign (or re-sign) an existing bundle.
///
/// The bundle is verified first (digests, sizes, schema); the signature
/// covers the manifest, which lists every file's SHA-256. The bundle is
/// rewritten atomically.
#[derive(Args)]
#[command(after_help = "Examples:\n  limes-pack sign hello-0.1.0.limes --key limes.key\n  limes-pack sign hello-0.1.0.limes --key env:LIMES_KEY")]
pub struct SignCommand {
    /// The bundle to sign.
    bundle: PathBuf,
    /// minisign secret key: a file, or `env:VAR`.
    #[arg(long, short, env = "LIMES_SIGN", value_name = "KEY")]
    key: String,
    /// Write the signed bundle here instead of in place.
    #[arg(long, short, value_name = "PATH")]
    out: Option<PathBuf>,
}

impl SignCommand {
    pub fn execute(self, ui: &Ui) -> anyhow::Result<()> {
        let key = load_secret_key(&self.key).context("loading the signing key")?;
        let out = self.out.clone().unwrap_or_else(|| self.bundle.clone());
        let m = limes_build::pipeline::sign_bundle(&self.bundle, &out, &key).with_context(|| format!("signing {}", self.bundle.display()))?;
        ui.result(serde_json::json!({"ok": true, "bundle": out, "function": m.function.name, "key_id": key.id().to_string()}), || {
            format!("signed {} with key {}\n", out.display(), key.id())
        });
        Ok(())
    }
}
