//! One file per subcommand.

mod install;
mod list;
mod pull;
mod remove;
mod run;
mod serve;
mod worker;

use clap::Subcommand;
use std::path::PathBuf;
use std::process::ExitCode;

pub struct Ctx {
    pub store: PathBuf,
    pub json: bool,
    /// No confirmation lines on stdout.
    pub quiet: bool,
}

#[derive(Subcommand)]
pub enum Command {
    Install(install::InstallCommand),
    List(list::ListCommand),
    Pull(pull::PullCommand),
    Remove(remove::RemoveCommand),
    Run(run::RunCommand),
    Serve(serve::ServeCommand),
    #[command(hide = true)]
    Worker(worker::WorkerCommand),
}

impl Command {
    pub fn execute(self, ctx: &Ctx) -> anyhow::Result<ExitCode> {
        match self {
            Command::Install(c) => c.execute(ctx),
            Command::List(c) => c.execute(ctx),
            Command::Pull(c) => c.execute(ctx),
            Command::Remove(c) => c.execute(ctx),
            Command::Run(c) => c.execute(ctx),
            Command::Serve(c) => c.execute(ctx),
            Command::Worker(c) => c.execute(ctx),
        }
    }
}

pub use limes::error::{EXIT_FAULT, EXIT_FUNCTION_ERROR};

/// The `kind` of an error in JSON output: what failed, by type.
pub fn error_kind(e: &anyhow::Error) -> &'static str {
    limes::ErrorKind::of(e).name()
}

pub fn exit_code(e: &anyhow::Error) -> u8 {
    limes::ErrorKind::of(e).exit_code()
}
