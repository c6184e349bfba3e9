use crate::ui::Ui;
use anyhow::Context;
use clap::Args;
use std::path::PathBuf;

/// Create a new function crate from a template.
///
/// The crate is its own workspace and builds out of the box:
/// `limes-pack new hello && limes-pack build hello`.
#[derive(Args)]
#[command(after_help = "Examples:\n  limes-pack new hello\n  limes-pack new render --template mandelbrot")]
pub struct NewCommand {
    /// Name of the crate (and of its directory).
    name: String,
    /// Template to start from: blank, noop, mandelbrot or image.
    #[arg(long, short, default_value = "blank")]
    template: String,
    /// Directory to create the crate in.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// `limes-sdk` dependency as a TOML value (e.g. `"0.1"` or
    /// `{ path = "../limes/crates/limes-sdk" }`); default: the SDK this
    /// limes-pack carries, written once to $LIMES_PACK_HOME (else
    /// ~/.local/share/limes-pack)/sdk/.
    #[arg(long, env = "LIMES_SDK", value_name = "TOML")]
    sdk: Option<String>,
}

impl NewCommand {
    pub fn execute(self, ui: &Ui) -> anyhow::Result<()> {
        let sdk = match self.sdk.clone() {
            Some(s) => s,
            None => limes_build::templates::default_sdk_dependency()?,
        };
        let dir = limes_build::templates::generate(&self.dir, &self.name, &self.template, &sdk).with_context(|| format!("creating crate {}", self.name))?;
        ui.result(serde_json::json!({"ok": true, "crate": dir, "template": self.template}), || {
            format!("created {} (template {}); next: limes-pack build {}\n", dir.display(), self.template, dir.display())
        });
        Ok(())
    }
}
