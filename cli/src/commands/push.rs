use crate::ui::Ui;
use anyhow::Context;
use clap::Args;
use std::path::PathBuf;

/// Push a signed bundle to an OCI registry as an artifact.
///
/// Layout: artifactType application/vnd.limes.bundle.v1; one layer per
/// bundle file (manifest, signature, the component as application/wasm, one
/// per CPU tier, the microVM image), so devices fetch only what they run.
/// Layers the registry already has are not uploaded again. Credentials:
/// --username with LIMES_REGISTRY_PASSWORD, LIMES_REGISTRY_USERNAME/PASSWORD,
/// or Docker's config.json; else anonymous.
#[derive(Args)]
#[command(after_help = "Examples:\n  limes-pack push hello-0.1.0.limes registry.example.com/fns/hello:0.1.0")]
pub struct PushCommand {
    /// The signed bundle.
    bundle: PathBuf,
    /// OCI reference, e.g. `registry.example.com/functions/noop:0.1.0`.
    reference: String,
    /// Plain HTTP; allowed only for registries on loopback.
    #[arg(long)]
    insecure: bool,
    /// Registry user name (password from LIMES_REGISTRY_PASSWORD).
    #[arg(long)]
    username: Option<String>,
}

impl PushCommand {
    pub fn execute(self, ui: &Ui) -> anyhow::Result<()> {
        let creds = limes_oci::Credentials { username: self.username.clone(), password: std::env::var("LIMES_REGISTRY_PASSWORD").ok() };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let r = rt
            .block_on(limes_oci::push(&self.bundle, &self.reference, self.insecure, &creds))
            .with_context(|| format!("pushing {} to {}", self.bundle.display(), self.reference))?;
        ui.result(
            serde_json::json!({"ok": true, "reference": r.reference, "manifest_url": r.manifest_url,
                "uploaded": r.uploaded, "skipped": r.skipped}),
            || format!("pushed {} (uploaded {} layer(s), {} already present)\n", r.reference, r.uploaded.len(), r.skipped.len()),
        );
        Ok(())
    }
}
