use crate::ui::Ui;
use anyhow::{bail, Context};
use clap::Args;
use limes_bundle::keys::SecretKey;
use std::io::Write;
use std::path::PathBuf;

/// Generate an Ed25519 signing key pair in minisign format.
///
/// Writes `NAME.key` (secret, mode 0600, unencrypted so CI can use it from a
/// secret) and `NAME.pub` (give this to devices: `limes install --trust`).
/// Both files work with the `minisign` tool.
#[derive(Args)]
#[command(after_help = "Examples:\n  limes-pack keygen\n  limes-pack keygen --dir keys/ --name ci")]
pub struct KeygenCommand {
    /// Directory to write the key files to.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Base name of the key files.
    #[arg(long, default_value = "limes")]
    name: String,
    /// Overwrite existing key files.
    #[arg(long)]
    force: bool,
}

impl KeygenCommand {
    pub fn execute(self, ui: &Ui) -> anyhow::Result<()> {
        let sk_path = self.dir.join(format!("{}.key", self.name));
        let pk_path = self.dir.join(format!("{}.pub", self.name));
        for p in [&sk_path, &pk_path] {
            if p.exists() && !self.force {
                bail!("{} exists; pass --force to overwrite it", p.display());
            }
        }
        std::fs::create_dir_all(&self.dir).with_context(|| format!("creating {}", self.dir.display()))?;
        let sk = SecretKey::generate()?;
        write_private(&sk_path, sk.to_text().as_bytes())?;
        std::fs::write(&pk_path, sk.public().to_text()).with_context(|| format!("writing {}", pk_path.display()))?;
        ui.result(serde_json::json!({"ok": true, "key_id": sk.id().to_string(), "secret_key": sk_path, "public_key": pk_path}), || {
            format!("key {}\n  secret {}\n  public {}\n", sk.id(), sk_path.display(), pk_path.display())
        });
        Ok(())
    }
}

pub(super) fn write_private(path: &std::path::Path, data: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(data)?;
    f.sync_all()?;
    Ok(())
}
