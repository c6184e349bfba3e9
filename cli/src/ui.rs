//! Output policy shared by all subcommands: human text on a TTY (with a
//! spinner), one JSON document with `--json`, nothing but errors with
//! `--quiet`; logs, JSON and errors in the shape `limes` uses too
//! (`limes_runtime::args`).

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Args, Debug, Clone)]
pub struct GlobalArgs {
    /// Print one machine-readable JSON document on stdout instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Print nothing but errors.
    #[arg(long, short, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(long, short, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

pub struct Ui {
    pub json: bool,
    pub quiet: bool,
    spinner: Option<ProgressBar>,
}

impl Ui {
    pub fn new(args: &GlobalArgs) -> Ui {
        limes_runtime::args::init_logging(args.verbose, args.quiet);
        let interactive = std::io::stderr().is_terminal() && !args.json && !args.quiet;
        let spinner = interactive.then(|| {
            let pb = ProgressBar::new_spinner();
            pb.set_style(ProgressStyle::with_template("{spinner} {msg} ({elapsed})").unwrap());
            pb.enable_steady_tick(Duration::from_millis(100));
            pb
        });
        Ui { json: args.json, quiet: args.quiet, spinner }
    }

    /// The command's result: JSON on stdout with `--json`, else the text.
    pub fn result(&self, json: serde_json::Value, text: impl FnOnce() -> String) {
        self.finish_spinner();
        if self.json {
            limes_runtime::args::print_json(&json);
        } else if !self.quiet {
            print!("{}", text());
        }
    }

    fn finish_spinner(&self) {
        if let Some(s) = &self.spinner {
            s.finish_and_clear();
        }
    }

    pub fn fail(&self, e: &anyhow::Error) -> ExitCode {
        self.finish_spinner();
        let kind = error_kind(e);
        limes_runtime::args::report_error(self.json, kind.name(), e);
        ExitCode::from(kind.exit_code())
    }
}

/// The kind of a failure, by type (the same kinds and exit codes as
/// `limes`): a run's failure says its own (`limes-pack run`: trap,
/// timeout, memory limit); a bundle or build error says whether it is a
/// verification failure; anything else is `other`.
fn error_kind(e: &anyhow::Error) -> limes_runtime::ErrorKind {
    use limes_runtime::ErrorKind;
    e.chain()
        .find_map(|c| {
            if let Some(r) = c.downcast_ref::<limes_runtime::RunError>() {
                Some(r.kind())
            } else if c.downcast_ref::<limes_bundle::BundleError>().is_some_and(|b| b.is_verification())
                || c.downcast_ref::<limes_build::pipeline::BuildError>().is_some_and(|b| b.is_verification())
            {
                Some(ErrorKind::Verification)
            } else {
                None
            }
        })
        .unwrap_or(ErrorKind::Other)
}

impl limes_build::Progress for Ui {
    fn step(&self, msg: &str) {
        match &self.spinner {
            Some(s) => s.set_message(msg.to_string()),
            None => tracing::info!("{msg}"),
        }
    }

    /// Cargo writes to the terminal itself: hide the spinner meanwhile, or
    /// each of its redraws leaves a stale line among cargo's output.
    fn suspend(&self, f: &mut dyn FnMut()) {
        match &self.spinner {
            Some(s) => s.suspend(f),
            None => f(),
        }
    }
}
