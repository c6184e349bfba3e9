use crate::ui::Ui;
use clap::Args;

/// Check what builds need from this machine, and say how to install it.
///
/// Lists the Rust targets, the Hermit nightly (the default microVM image)
/// and the tools options need, each with its install command. Exits 1 when
/// something the default `limes-pack build` needs is missing (--no-microvm
/// or --image linux avoid the Hermit nightly).
#[derive(Args)]
#[command(after_help = "Examples:\n  limes-pack doctor\n  limes-pack doctor --json")]
pub struct DoctorCommand {}

impl DoctorCommand {
    pub fn execute(self, ui: &Ui) -> anyhow::Result<std::process::ExitCode> {
        let checks = limes_build::doctor::checks(&std::env::current_dir()?);
        let ready = checks.iter().all(|c| c.ok || !c.required);
        ui.result(serde_json::json!({"ok": ready, "checks": checks}), || {
            let mut s = String::new();
            for c in &checks {
                let mark = match (c.ok, c.required) {
                    (true, _) => "ok     ",
                    (false, true) => "MISSING",
                    (false, false) => "absent ",
                };
                s += &format!("{mark} {}\n        for {}\n", c.name, c.needed_for);
                if !c.ok {
                    s += &format!("        install: {}\n", c.fix);
                }
            }
            s += if ready {
                "the default build has everything it needs\n"
            } else {
                "the default build cannot run until the MISSING items are installed (--no-microvm or --image linux avoid the Hermit nightly)\n"
            };
            s
        });
        Ok(if ready { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::from(1) })
    }
}
