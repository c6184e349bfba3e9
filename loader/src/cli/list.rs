use super::Ctx;
use clap::Args;
use limes::Store;
use std::process::ExitCode;

/// List installed functions.
#[derive(Args)]
#[command(after_help = "Examples:\n  limes list\n  limes --json list")]
pub struct ListCommand {}

impl ListCommand {
    pub fn execute(self, ctx: &Ctx) -> anyhow::Result<ExitCode> {
        let store = Store::open(&ctx.store)?;
        let all = store.list()?;
        if ctx.json {
            let rows: Vec<_> = all
                .iter()
                .map(|r| serde_json::json!({"name": r.name, "version": r.version, "signer": r.signer, "object": r.object, "files": r.files}))
                .collect();
            println!("{}", serde_json::json!({"ok": true, "functions": rows}));
        } else if all.is_empty() {
            eprintln!("no functions installed in {} (install one with `limes install BUNDLE --trust KEY`)", ctx.store.display());
        } else {
            for r in all {
                println!("{:<24} {:<12} signer {}  object {}", r.name, r.version, r.signer, &r.object[..16]);
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}
