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

pub const EXIT_VERIFY: u8 = 3;
pub const EXIT_FUNCTION_ERROR: u8 = 4;
pub const EXIT_FAULT: u8 = 5;

/// The `kind` of an error in JSON output: what failed, by type.
pub fn error_kind(e: &anyhow::Error) -> &'static str {
    use limes::RunError;
    for c in e.chain() {
        if let Some(r) = c.downcast_ref::<RunError>().or_else(|| match c.downcast_ref() {
            Some(limes::microvm::VmError::Run(r)) => Some(r),
            _ => match c.downcast_ref() {
                Some(limes::launch::LoadError::Run(r)) => Some(r),
                _ => None,
            },
        }) {
            return match r {
                RunError::Timeout { .. } => "timeout",
                RunError::MemoryLimit { .. } => "memory-limit",
                RunError::Trap { .. } | RunError::Instantiate { .. } => "trap",
                RunError::InputTooLarge { .. } => "too-large",
                RunError::UndeclaredDir { .. } | RunError::Dir { .. } => "usage",
                RunError::NoUsableTier { .. } | RunError::Load { .. } | RunError::Engine(_) => "load",
            };
        }
        if let Some(limes::store::StoreError::NotInstalled { .. }) = c.downcast_ref() {
            return "not-installed";
        }
    }
    match exit_code(e) {
        EXIT_VERIFY => "verification",
        EXIT_FAULT => "fault",
        _ => "error",
    }
}

pub fn exit_code(e: &anyhow::Error) -> u8 {
    use limes::launch::LoadError;
    use limes::pull::PullError;
    use limes::store::StoreError;
    use limes::RunError;
    fn run(r: &RunError) -> u8 {
        match r {
            RunError::Timeout { .. } | RunError::MemoryLimit { .. } | RunError::Trap { .. } => EXIT_FAULT,
            _ => 1,
        }
    }
    for c in e.chain() {
        let code = if let Some(b) = c.downcast_ref::<limes_bundle::BundleError>() {
            b.is_verification().then_some(EXIT_VERIFY)
        } else if let Some(s) = c.downcast_ref::<StoreError>() {
            s.is_verification().then_some(EXIT_VERIFY)
        } else if let Some(p) = c.downcast_ref::<PullError>() {
            p.is_verification().then_some(EXIT_VERIFY)
        } else if let Some(l) = c.downcast_ref::<LoadError>() {
            match l {
                LoadError::Store(s) => s.is_verification().then_some(EXIT_VERIFY),
                LoadError::Run(r) => Some(run(r)).filter(|&c| c != 1),
            }
        } else if let Some(r) = c.downcast_ref::<RunError>() {
            Some(run(r)).filter(|&c| c != 1)
        } else if let Some(limes::microvm::VmError::Store(s)) = c.downcast_ref() {
            s.is_verification().then_some(EXIT_VERIFY)
        } else if let Some(limes::microvm::VmError::Run(r)) = c.downcast_ref() {
            Some(run(r)).filter(|&c| c != 1)
        } else if let Some(s) = c.downcast_ref::<limes::serve::ServeError>() {
            s.is_verification().then_some(EXIT_VERIFY)
        } else {
            None
        };
        if let Some(code) = code {
            return code;
        }
    }
    1
}
