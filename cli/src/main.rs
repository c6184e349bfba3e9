//! `limes-pack`: build Rust functions into signed, AOT-compiled bundles.
//!
//! This binary is a thin shell: each subcommand is a clap struct in
//! `commands/` whose `execute()` calls into `limes-build` / `limes-bundle`.

mod commands;
mod ui;

use clap::Parser;
use std::process::ExitCode;

/// Build Rust functions into signed, reproducible bundles that start in well
/// under a millisecond on edge devices.
///
/// Typical flow: `limes-pack new hello`, `limes-pack keygen`,
/// `limes-pack build hello --sign limes.key`, then on the device
/// `limes install hello-0.1.0.limes --trust limes.pub && limes run hello`.
///
/// Exit codes: 0 success; 1 error (build, I/O, bad input); 2 usage error;
/// 3 a bundle failed verification.
#[derive(Parser)]
#[command(name = "limes-pack", version, propagate_version = true, max_term_width = 100)]
struct Cli {
    #[command(flatten)]
    global: ui::GlobalArgs,
    #[command(subcommand)]
    command: commands::Command,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let ui = ui::Ui::new(&cli.global);
    match cli.command.execute(&ui) {
        Ok(code) => code,
        Err(e) => ui.fail(&e),
    }
}

#[cfg(test)]
mod tests {
    /// clap's own consistency checks over every subcommand and flag.
    #[test]
    fn verify_cli() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }

    /// Every `limes-pack` command of the documented CI recipe parses with
    /// this binary's command-line definition (so the recipe cannot rot).
    #[test]
    fn ci_recipe_commands_parse() {
        use clap::Parser;
        let recipe = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/ci/github-actions.yml")).unwrap();
        let mut checked = 0;
        for line in recipe.lines() {
            let line = line.trim().trim_start_matches("run:").trim();
            if !line.starts_with("limes-pack ") {
                continue;
            }
            // Shell variables become plain words; redirections are the shell's.
            let cmd = line.split('>').next().unwrap();
            let words: Vec<String> = cmd
                .split_whitespace()
                .map(|w| {
                    if w.contains('$') {
                        w.replace(|c: char| !c.is_ascii_alphanumeric() && c != '/' && c != '-' && c != '.' && c != ':', "x")
                    } else {
                        w.to_string()
                    }
                })
                .collect();
            super::Cli::try_parse_from(&words).unwrap_or_else(|e| panic!("{line}: {e}"));
            checked += 1;
        }
        assert!(checked >= 4, "only {checked} commands found in the recipe");
        // A build runs third-party code as the CI user: the key must only
        // exist in a step of its own (docs/trust.md).
        assert!(!recipe.lines().any(|l| l.contains("limes-pack build") && l.contains("--sign")), "the recipe must sign in a step separate from the build");
    }
}
