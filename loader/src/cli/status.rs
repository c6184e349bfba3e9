use super::Ctx;
use clap::Args;
use limes::store::Installed;
use limes::sync::state::SyncState;
use limes::Store;
use std::process::ExitCode;

/// Per function: the current version (digest, signer), the versions kept
/// to roll back to, a candidate being checked, and what `limes sync` last
/// did (last poll and its result, last update, versions marked bad, last
/// rollback and why).
#[derive(Args)]
#[command(after_help = "Examples:\n  limes status\n  limes status hello --json")]
pub struct StatusCommand {
    /// Only these functions.
    names: Vec<String>,
}

fn version(r: &Installed) -> serde_json::Value {
    serde_json::json!({"version": r.version, "manifest_sha256": r.manifest_digest(), "signer": r.signer})
}

fn ago(at: Option<u64>) -> String {
    match at {
        Some(t) => format!("{} s ago", limes::sync::state::now().saturating_sub(t)),
        None => "never".into(),
    }
}

impl StatusCommand {
    pub fn execute(self, ctx: &Ctx) -> anyhow::Result<ExitCode> {
        let store = Store::open(&ctx.store)?;
        let records = store.list()?;
        let states = SyncState::all(&store);
        let mut names: Vec<String> = records.iter().map(|r| r.name.clone()).chain(states.iter().map(|s| s.name.clone())).collect();
        names.sort();
        names.dedup();
        if !self.names.is_empty() {
            if let Some(missing) = self.names.iter().find(|n| !names.contains(n)) {
                return Err(store.get(missing).err().map(anyhow::Error::from).unwrap_or_else(|| anyhow::anyhow!("{missing} is not installed")));
            }
            names.retain(|n| self.names.contains(n));
        }
        let mut rows = Vec::new();
        for name in &names {
            let rec = records.iter().find(|r| &r.name == name);
            let st = states.iter().find(|s| &s.name == name).cloned().unwrap_or_default();
            let cand = store.candidate(name).ok().flatten();
            if ctx.json {
                rows.push(serde_json::json!({
                    "name": name,
                    "current": rec.map(version),
                    "previous": rec.map(|r| r.previous.iter().map(version).collect::<Vec<_>>()).unwrap_or_default(),
                    "candidate": cand.as_ref().map(version),
                    "sync": if st.reference.is_empty() { serde_json::Value::Null } else { serde_json::to_value(&st).expect("state serializes") },
                }));
                continue;
            }
            match rec {
                Some(r) => println!("{name} {} (sha256:{}, signer {})", r.version, &r.manifest_digest()[..12.min(r.manifest_digest().len())], r.signer),
                None => println!("{name}: not installed"),
            }
            if let Some(r) = rec {
                let kept: Vec<String> = r.previous.iter().map(|p| p.version.clone()).collect();
                println!("  kept for rollback: {}", if kept.is_empty() { "none".into() } else { kept.join(", ") });
            }
            if let Some(c) = &cand {
                println!("  candidate: {} (being checked, or left by a stopped agent)", c.version);
            }
            if !st.reference.is_empty() {
                println!("  sync: {} | last poll {}: {}", st.reference, ago(st.last_sync), st.last_result.as_deref().unwrap_or("-"));
                if let Some(u) = &st.last_update {
                    println!("  last update: {} -> {} {}, {} bytes", u.from.as_deref().unwrap_or("(none)"), u.to, ago(Some(u.at)), u.bytes);
                }
                if let Some(w) = &st.watching {
                    println!("  watching {} since {}", w.version, ago(Some(w.since)));
                }
            }
            if let Some(rb) = &st.last_rollback {
                println!("  last rollback: {} -> {} {}: {}", rb.from, rb.to, ago(Some(rb.at)), rb.reason);
            }
            for b in &st.bad {
                println!("  marked bad: {} (sha256:{}): {}", b.version, &b.manifest_sha256[..12.min(b.manifest_sha256.len())], b.reason);
            }
        }
        if ctx.json {
            println!("{}", serde_json::json!({"ok": true, "functions": rows}));
        }
        Ok(ExitCode::SUCCESS)
    }
}
