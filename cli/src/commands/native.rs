use super::{CargoFlags, CrateArgs};
use crate::ui::Ui;
use clap::Args;

/// Build the function as a native executable speaking the frame protocol.
///
/// The executable reads length-prefixed request frames on stdin and writes
/// response frames on stdout (see wit/README.md); it is what the microVM
/// image runs. Prints the executable's path.
#[derive(Args)]
#[command(after_help = "Examples:\n  limes-pack native hello")]
pub struct NativeCommand {
    #[command(flatten)]
    krate: CrateArgs,
    #[command(flatten)]
    cargo: CargoFlags,
    /// Target triple (e.g. x86_64-unknown-linux-musl) [default: the host].
    #[arg(long)]
    target: Option<String>,
}

impl NativeCommand {
    pub fn execute(self, ui: &Ui) -> anyhow::Result<()> {
        let opts = self.cargo.options(ui.quiet || ui.json);
        let project = limes_build::Project::discover(&self.krate.location(), self.krate.package.as_deref(), &opts.global_flags())?;
        let exe = limes_build::compile::build_native(&project, self.target.as_deref(), &opts)?;
        ui.result(serde_json::json!({"ok": true, "executable": exe}), || format!("{}\n", exe.display()));
        Ok(())
    }
}
