//! One file per subcommand.

mod check;
mod install;
mod list;
mod pull;
mod remove;
mod rollback;
mod run;
mod serve;
mod status;
mod sync;
mod worker;

use clap::Subcommand;
use std::path::PathBuf;
use std::process::ExitCode;

pub struct Ctx {
    pub store: PathBuf,
    /// Trusted keys and publisher pins, outside the store (see `limes::trust`).
    pub trust_dir: PathBuf,
    pub json: bool,
    /// No confirmation lines on stdout.
    pub quiet: bool,
}

#[derive(Subcommand)]
pub enum Command {
    Check(check::CheckCommand),
    Install(install::InstallCommand),
    List(list::ListCommand),
    Pull(pull::PullCommand),
    Remove(remove::RemoveCommand),
    Rollback(rollback::RollbackCommand),
    Run(run::RunCommand),
    Serve(serve::ServeCommand),
    Status(status::StatusCommand),
    Sync(sync::SyncCommand),
    #[command(hide = true)]
    Worker(worker::WorkerCommand),
}

/// `limes run` alone, for the one-shot fast path in `main`.
#[derive(Subcommand)]
pub enum RunOnly {
    Run(run::RunCommand),
}

impl RunOnly {
    pub fn into_command(self) -> Command {
        match self {
            RunOnly::Run(c) => Command::Run(c),
        }
    }
}

impl Command {
    pub fn execute(self, ctx: &Ctx) -> anyhow::Result<ExitCode> {
        match self {
            Command::Check(c) => c.execute(ctx),
            Command::Install(c) => c.execute(ctx),
            Command::List(c) => c.execute(ctx),
            Command::Pull(c) => c.execute(ctx),
            Command::Remove(c) => c.execute(ctx),
            Command::Rollback(c) => c.execute(ctx),
            Command::Run(c) => c.execute(ctx).map(ExitCode::from),
            Command::Serve(c) => c.execute(ctx),
            Command::Status(c) => c.execute(ctx),
            Command::Sync(c) => c.execute(ctx),
            Command::Worker(c) => c.execute(ctx),
        }
    }
}

pub use limes::error::EXIT_FUNCTION_ERROR;

/// What loads check signatures against: the `--trust` keys given plus the
/// trust directory's.
pub fn anchors(ctx: &Ctx, explicit: &[PathBuf], store: &limes::Store) -> anyhow::Result<limes::trust::Anchors> {
    Ok(limes::trust::Anchors::load(explicit, ctx.trust_dir.clone(), store.root())?)
}

/// After an install from `keys`: keep the signer's key, pinned as the
/// function's publisher, in the trust directory, so loads accept it (and
/// only it) without `--trust`.
pub fn adopt(ctx: &Ctx, store: &limes::Store, keys: &limes_bundle::TrustedKeys, f: &limes::store::InstalledFunction, rotate: bool) -> anyhow::Result<()> {
    use anyhow::Context;
    let adopted = anchors(ctx, &[], store)?
        .adopt_signer(keys, f, rotate)
        .with_context(|| format!("recording {}'s publisher in the trust directory {}", f.record.name, ctx.trust_dir.display()))?;
    if !adopted {
        anyhow::bail!("installed {} but its signer {} is not among the --trust keys", f.record.name, f.record.signer);
    }
    Ok(())
}

/// The `kind` of an error in JSON output: what failed, by type.
pub fn error_kind(e: &anyhow::Error) -> &'static str {
    limes::classify::kind_of(e).name()
}

pub fn exit_code(e: &anyhow::Error) -> u8 {
    limes::classify::kind_of(e).exit_code()
}
