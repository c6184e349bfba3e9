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
    /// `limes-sdk` dependency as a TOML value (e.g.
    /// `{ path = "../limes/crates/limes-sdk" }`); default: `"MAJOR.MINOR"`
    /// of this limes-pack, which limes-pack resolves on every build to the
    /// SDK it carries (written once to $LIMES_PACK_HOME, else
    /// ~/.local/share/limes-pack, /sdk/), and records for cargo and
    /// rust-analyzer in the crate's git-ignored .cargo/config.toml. The
    /// crate holds no path of this machine's.
    #[arg(long, env = "LIMES_SDK", value_name = "TOML")]
    sdk: Option<String>,
}

impl NewCommand {
    pub fn execute(self, ui: &Ui) -> anyhow::Result<()> {
        // The SDK copy is checked (and a home found) before anything is
        // written.
        let (sdk, krate) = match self.sdk.clone() {
            Some(s) => (s, None),
            None => (limes_build::templates::default_sdk_dependency(), Some(limes_build::templates::materialize_sdk(&limes_build::templates::sdk_home()?)?)),
        };
        let dir = limes_build::templates::generate(&self.dir, &self.name, &self.template, &sdk).with_context(|| format!("creating crate {}", self.name))?;
        // For rust-analyzer and plain cargo from the first minute.
        if let Some(krate) = krate.filter(|_| limes_build::templates::wants_sdk_by_version(&dir.join("Cargo.toml"))) {
            limes_build::templates::link_sdk(&dir, &krate);
        }
        ui.result(serde_json::json!({"ok": true, "crate": dir, "template": self.template}), || {
            format!("created {} (template {}); next: limes-pack build {}\n", dir.display(), self.template, dir.display())
        });
        Ok(())
    }
}
