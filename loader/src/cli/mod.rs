//! One file per subcommand.

mod install;
mod list;
mod pull;
mod remove;
mod run;
mod serve;

use clap::Subcommand;
use std::path::PathBuf;
use std::process::ExitCode;

pub struct Ctx {
    pub store: PathBuf,
    pub json: bool,
}

#[derive(Subcommand)]
pub enum Command {
    Install(install::InstallCommand),
    List(list::ListCommand),
    Pull(pull::PullCommand),
    Remove(remove::RemoveCommand),
    Run(run::RunCommand),
    Serve(serve::ServeCommand),
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
        }
    }
}

/// Parse repeated `--dir NAME=PATH` flags.
pub fn parse_dirs(flags: &[String]) -> anyhow::Result<Vec<(String, PathBuf)>> {
    flags
        .iter()
        .map(|d| match d.split_once('=') {
            Some((n, p)) => Ok((n.to_string(), PathBuf::from(p))),
            None => anyhow::bail!("--dir takes NAME=PATH, got {d:?}"),
        })
        .collect()
}

pub const EXIT_VERIFY: u8 = 3;
pub const EXIT_FUNCTION_ERROR: u8 = 4;
pub const EXIT_FAULT: u8 = 5;

pub fn exit_code(e: &anyhow::Error) -> u8 {
    for c in e.chain() {
        // `#[error(transparent)]` wrappers hide the inner error from the
        // chain, so look inside them explicitly.
        let bundle = c.downcast_ref::<limes_bundle::BundleError>().or_else(|| match c.downcast_ref() {
            Some(limes::store::StoreError::Bundle(b)) => Some(b),
            _ => match c.downcast_ref() {
                Some(limes::pull::PullError::Bundle(b)) => Some(b),
                Some(limes::pull::PullError::Store(limes::store::StoreError::Bundle(b))) => Some(b),
                _ => None,
            },
        });
        if matches!(c.downcast_ref(), Some(limes::pull::PullError::LayerMismatch { .. }))
            || matches!(c.downcast_ref(), Some(limes::pull::PullError::Oci(limes_oci::OciError::Digest { .. })))
        {
            return EXIT_VERIFY;
        }
        if let Some(b) = bundle {
            if !matches!(b, limes_bundle::BundleError::Io { .. } | limes_bundle::BundleError::Key(_)) {
                return EXIT_VERIFY;
            }
        }
        if let Some(r) = c.downcast_ref::<limes::RunError>() {
            if matches!(r, limes::RunError::Timeout { .. } | limes::RunError::MemoryLimit { .. } | limes::RunError::Trap { .. }) {
                return EXIT_FAULT;
            }
        }
    }
    1
}
