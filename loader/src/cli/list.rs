use super::Ctx;
use clap::Args;
use limes::Store;
use std::path::PathBuf;
use std::process::ExitCode;

/// List installed functions.
///
/// Each function's signature is checked as a load would check it; the
/// signer shown is the key that signed, and a function that would not load
/// is shown as UNVERIFIED with the reason.
#[derive(Args)]
#[command(after_help = "Examples:\n  limes list\n  limes --json list")]
pub struct ListCommand {
    /// Trusted keys (repeatable) besides the trust directory's.
    #[arg(long, value_name = "KEY|DIR")]
    trust: Vec<PathBuf>,
}

impl ListCommand {
    pub fn execute(self, ctx: &Ctx) -> anyhow::Result<ExitCode> {
        let store = Store::open(&ctx.store)?;
        let anchors = super::anchors(ctx, &self.trust, &store)?;
        let all = store.list()?;
        // A load's checks, and the files the object holds: a record lists
        // them only when a pull fetched some (empty means all the signed
        // manifest names), so a complete install is listed from its manifest.
        let verified: Vec<Result<Vec<String>, String>> = all
            .iter()
            .map(|r| {
                let f = store.load(&r.name, &anchors).map_err(|e| e.to_string())?;
                Ok(if r.files.is_empty() { f.manifest.files.iter().map(|e| e.path.clone()).collect() } else { r.files.clone() })
            })
            .collect();
        // How a running `limes serve` serves each function, if one runs.
        let serving = limes::store::ServeState::read(&store).map(|s| s.functions).unwrap_or_default();
        let describe = |name: &str| -> Option<String> {
            let f = serving.get(name)?;
            let backend = serde_json::to_value(f.backend).ok()?.as_str()?.to_string();
            let Some(p50) = f.p50_us.filter(|_| f.backend == limes::store::ServedBy::Auto) else { return Some(format!("served: {backend}")) };
            let fig = |b: &str, v: Option<u64>| v.map(|us| format!("{b} p50 {us} µs")).unwrap_or_else(|| format!("{b} not measured yet"));
            Some(format!("served: auto -> {} ({}, {})", f.routing_to.as_deref().unwrap_or("?"), fig("wasm", p50.wasm), fig("microvm", p50.microvm)))
        };
        if ctx.json {
            let rows: Vec<_> = all
                .iter()
                .zip(&verified)
                .map(|(r, v)| {
                    let files = v.as_ref().unwrap_or(&r.files);
                    serde_json::json!({"name": r.name, "version": r.version, "signer": r.signer, "object": r.object, "files": files,
                    "verified": v.is_ok(), "error": v.as_ref().err(), "serving": serving.get(&r.name)})
                })
                .collect();
            println!("{}", serde_json::json!({"ok": true, "functions": rows}));
        } else if all.is_empty() {
            eprintln!("no functions installed in {} (install one with `limes install BUNDLE --trust KEY`)", ctx.store.display());
        } else {
            for (r, v) in all.iter().zip(&verified) {
                let served = describe(&r.name).map(|s| format!("  {s}")).unwrap_or_default();
                match v {
                    Ok(_) => println!("{:<24} {:<12} signer {}  object {}{served}", r.name, r.version, r.signer, &r.object[..16.min(r.object.len())]),
                    Err(e) => println!("{:<24} {:<12} UNVERIFIED: {e}", r.name, r.version),
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}
