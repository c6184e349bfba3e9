use super::Ctx;
use clap::Args;
use limes::sync::state::SyncState;
use limes::Store;
use std::process::ExitCode;

/// Return a function to the newest version it replaced (kept in the store,
/// no download). The version left is marked bad for `limes sync`, which
/// will not switch to it again until its tag moves. `limes serve` follows.
#[derive(Args)]
#[command(after_help = "Examples:\n  limes rollback hello\n  limes status hello   # the versions kept")]
pub struct RollbackCommand {
    /// Function name.
    name: String,
}

impl RollbackCommand {
    pub fn execute(self, ctx: &Ctx) -> anyhow::Result<ExitCode> {
        let store = Store::open(&ctx.store)?;
        let (left, back) = store.rollback(&self.name)?;
        let mut st = SyncState::load(&store, &self.name);
        let reason = "by hand (limes rollback)";
        st.rolled_back(&left, &back.version, reason);
        st.save(&store)?;
        if ctx.json {
            println!("{}", serde_json::json!({"ok": true, "name": self.name, "from": left.version, "to": back.version}));
        } else if !ctx.quiet {
            println!("rolled back {} {} -> {}", self.name, left.version, back.version);
        }
        Ok(ExitCode::SUCCESS)
    }
}
