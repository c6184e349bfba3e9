use super::Ctx;
use clap::Args;
use limes::Store;
use std::process::ExitCode;

/// Check the store: every installed function's signature (against the
/// trusted keys) and the bytes of every file it holds, and what killed
/// installs left behind.
///
/// Exit status: 0 when every function verified (leftovers are reported,
/// and harmless: nothing loads them), 3 when a function failed
/// verification, 1 for any other problem. A function that fails is never
/// changed here: reinstall it. `--repair` removes leftovers and objects no
/// record names.
#[derive(Args)]
#[command(after_help = "Examples:\n  limes check\n  limes check --repair --json")]
pub struct CheckCommand {
    /// Remove leftovers of killed processes and unreferenced objects.
    #[arg(long)]
    repair: bool,
    /// Also trust these public keys (files or directories), beside the
    /// trust directory's.
    #[arg(long = "trust", value_name = "KEY|DIR")]
    trust: Vec<std::path::PathBuf>,
}

impl CheckCommand {
    pub fn execute(self, ctx: &Ctx) -> anyhow::Result<ExitCode> {
        let store = Store::open(&ctx.store)?;
        let anchors = super::anchors(ctx, &self.trust, &store)?;
        let r = store.check(&anchors, self.repair)?;
        let worst = r.worst();
        if ctx.json {
            let functions: Vec<_> = r
                .functions
                .iter()
                .map(|f| {
                    serde_json::json!({"name": f.name, "ok": f.problem.is_none(), "version": f.version, "signer": f.signer,
                        "files_checked": f.files_checked, "kind": f.problem.as_ref().map(|p| p.0.name()), "error": f.problem.as_ref().map(|p| &p.1)})
                })
                .collect();
            println!(
                "{}",
                serde_json::json!({"ok": worst.is_none(), "store": store.root(), "functions": functions,
                    "unreferenced_objects": r.unreferenced_objects, "leftovers": r.leftovers, "repaired": r.repaired})
            );
        } else if !ctx.quiet || worst.is_some() {
            for f in &r.functions {
                match &f.problem {
                    None => println!(
                        "ok      {} {} (signer {}, {} file(s) re-hashed)",
                        f.name,
                        f.version.as_deref().unwrap_or("?"),
                        f.signer.as_deref().unwrap_or("?"),
                        f.files_checked
                    ),
                    Some((kind, e)) => println!("FAILED  {} ({}): {e}", f.name, kind.name()),
                }
            }
            if r.functions.is_empty() {
                println!("no functions installed in {}", store.root().display());
            }
            let what = if r.repaired { "removed" } else { "found (remove with --repair)" };
            if !r.leftovers.is_empty() {
                println!("{} leftover(s) of killed processes {what}", r.leftovers.len());
            }
            if !r.unreferenced_objects.is_empty() {
                println!("{} unreferenced object(s) {what}", r.unreferenced_objects.len());
            }
        }
        Ok(match worst {
            None => ExitCode::SUCCESS,
            Some(k) => ExitCode::from(k.exit_code()),
        })
    }
}
