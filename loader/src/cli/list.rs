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
        let verified: Vec<Result<(), String>> = all.iter().map(|r| store.load(&r.name, &anchors).map(|_| ()).map_err(|e| e.to_string())).collect();
        // How a running `limes serve` serves each function, if one runs.
        let serving: serde_json::Value = store
            .read_file(limes::serve::SERVE_STATE, 1 << 20)?
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .filter(|s| s["pid"].as_u64().is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists()))
            .map(|s| s["functions"].clone())
            .unwrap_or(serde_json::Value::Null);
        let describe = |name: &str| -> Option<String> {
            let f = serving.get(name)?;
            let backend = f["backend"].as_str()?;
            if backend != "auto" {
                return Some(format!("served: {backend}"));
            }
            let fig = |b: &str| f["p50_us"][b].as_u64().map(|us| format!("{b} p50 {us} µs")).unwrap_or_else(|| format!("{b} not measured yet"));
            Some(format!("served: auto -> {} ({}, {})", f["routing_to"].as_str().unwrap_or("?"), fig("wasm"), fig("microvm")))
        };
        if ctx.json {
            let rows: Vec<_> = all
                .iter()
                .zip(&verified)
                .map(|(r, v)| {
                    serde_json::json!({"name": r.name, "version": r.version, "signer": r.signer, "object": r.object, "files": r.files,
                    "verified": v.is_ok(), "error": v.as_ref().err(), "serving": serving.get(&r.name).cloned()})
                })
                .collect();
            println!("{}", serde_json::json!({"ok": true, "functions": rows}));
        } else if all.is_empty() {
            eprintln!("no functions installed in {} (install one with `limes install BUNDLE --trust KEY`)", ctx.store.display());
        } else {
            for (r, v) in all.iter().zip(&verified) {
                let served = describe(&r.name).map(|s| format!("  {s}")).unwrap_or_default();
                match v {
                    Ok(()) => println!("{:<24} {:<12} signer {}  object {}{served}", r.name, r.version, r.signer, &r.object[..16.min(r.object.len())]),
                    Err(e) => println!("{:<24} {:<12} UNVERIFIED: {e}", r.name, r.version),
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}
