use super::Ctx;
use clap::Args;
use limes::Store;
use std::process::ExitCode;

/// Remove an installed function (and its files, once unreferenced).
#[derive(Args)]
#[command(after_help = "Examples:\n  limes remove hello")]
pub struct RemoveCommand {
    /// Function name.
    name: String,
}

impl RemoveCommand {
    pub fn execute(self, ctx: &Ctx) -> anyhow::Result<ExitCode> {
        let store = Store::open(&ctx.store)?;
        let r = store.remove(&self.name)?;
        if ctx.json {
            println!("{}", serde_json::json!({"ok": true, "removed": r.name, "version": r.version}));
        } else if !ctx.quiet {
            println!("removed {} {}", r.name, r.version);
        }
        Ok(ExitCode::SUCCESS)
    }
}
