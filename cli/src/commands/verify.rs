use crate::ui::Ui;
use clap::Args;
use limes_bundle::archive::{read_bundle, BundleLimits, Discard, SignaturePolicy};
use limes_bundle::TrustedKeys;
use std::path::PathBuf;

/// Verify a bundle: signature, every file's SHA-256 and size, the schema.
///
/// Exits 0 when the bundle is intact and signed by a trusted key, 3 when it
/// is not (the message names what broke), 1 on other errors.
#[derive(Args)]
#[command(after_help = "Examples:\n  limes-pack verify hello-0.1.0.limes --trust limes.pub")]
pub struct VerifyCommand {
    /// The bundle to verify.
    bundle: PathBuf,
    /// Trusted public key file, or a directory of `.pub` files (repeatable).
    /// `--trust` names public keys in both binaries (`--key` is the old
    /// spelling here); `--key` names the secret key that signs.
    #[arg(long = "trust", visible_alias = "key", short = 'k', required = true, value_name = "PUB")]
    key: Vec<PathBuf>,
}

impl VerifyCommand {
    pub fn execute(self, ui: &Ui) -> anyhow::Result<()> {
        let keys = TrustedKeys::load(&self.key)?;
        let v = read_bundle(&self.bundle, &BundleLimits::default(), SignaturePolicy::Require(&keys), &mut Discard)
            .map_err(|e| super::bundle_context(e, &self.bundle, "failed verification"))?;
        let m = &v.manifest;
        ui.result(
            serde_json::json!({
                "ok": true,
                "bundle": self.bundle,
                "function": m.function.name,
                "version": m.function.version,
                "signer": v.signer.map(|k| k.to_string()),
                "files": m.files.len(),
            }),
            || {
                format!(
                    "OK {} {} {}: signature by {} valid, {} files match their digests\n",
                    self.bundle.display(),
                    m.function.name,
                    m.function.version,
                    v.signer.map(|k| k.to_string()).unwrap_or_default(),
                    m.files.len()
                )
            },
        );
        Ok(())
    }
}
