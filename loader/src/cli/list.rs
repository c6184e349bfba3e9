use super::Ctx;
use clap::Args;
use limes::Store;
use std::process::ExitCode;

/// List installed functions.
#[derive(Args)]
pub struct ListCommand {}

impl ListCommand {
    pub fn execute(self, ctx: &Ctx) -> anyhow::Result<ExitCode> {
        let store = Store::open(&ctx.store)?;
        let all = store.list()?;
        if ctx.json {
            println!("{}", serde_json::to_string_pretty(&all)?);
        } else {
            for r in all {
                println!("{:<24} {:<12} signer {}  object {}", r.name, r.version, r.signer, &r.object[..16]);
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}
