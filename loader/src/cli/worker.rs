use super::Ctx;
use clap::Args;
use limes::exec::worker::{run_any_worker, run_worker, AnyWorkerOptions, WorkerOptions};
use limes::Store;
use std::path::PathBuf;
use std::process::ExitCode;

/// Internal: serve one function over stdin/stdout for `limes serve`.
///
/// Loads NAME (re-hashing its artifact), writes a ready frame, then answers
/// request frames until stdin closes. With `--any` instead of NAME: a
/// shared worker, loading whichever function each request names. Not for
/// direct use.
#[derive(Args)]
pub struct WorkerCommand {
    /// Installed function name.
    #[arg(required_unless_present = "any")]
    name: Option<String>,
    /// Serve any function of the store, each request naming its own.
    #[arg(long, conflicts_with = "name")]
    any: bool,
    /// With `--any`: loaded functions kept in memory.
    #[arg(long, default_value_t = limes::serve::defaults::WORKER_CACHE)]
    cache: usize,
    /// Bind a declared preopen to a host directory: `NAME=PATH` (repeatable).
    #[arg(long, value_name = "NAME=PATH", value_parser = limes::args::parse_dir)]
    dir: Vec<(String, PathBuf)>,
    /// A trusted public key (base64 line), as the server passes it (repeatable).
    #[arg(long, value_name = "BASE64")]
    trusted_key: Vec<String>,
}

impl WorkerCommand {
    pub fn execute(self, ctx: &Ctx) -> anyhow::Result<ExitCode> {
        // A worker runs one request at a time; wasi:http's host runs its
        // I/O on a Tokio runtime made on first use, one thread per core by
        // default. One thread is enough, and each other thread that ran
        // costs every instance reset a TLB shootdown (measured: 6% of a
        // wasi:http worker's time). Still single-threaded here, so setting
        // the variable races with nothing.
        if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
            std::env::set_var("TOKIO_WORKER_THREADS", "1");
        }
        let store = Store::open(&ctx.store)?;
        let anchors = super::anchors(ctx, &[], &store)?.with_keys(&limes::trust::keys_from_args(&self.trusted_key)?);
        let stdin = std::io::stdin();
        let stdout = std::io::stdout();
        let (mut input, mut output) = (stdin.lock(), std::io::BufWriter::new(stdout.lock()));
        let served = match self.name {
            Some(function) => run_worker(&store, &WorkerOptions { function, dirs: self.dir.clone(), anchors }, &mut input, &mut output),
            None => run_any_worker(&store, &AnyWorkerOptions { dirs: self.dir.clone(), anchors, cache: self.cache }, &mut input, &mut output),
        };
        match served {
            // The server went away mid-answer: nothing left to do.
            Err(e) if e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) => Ok(ExitCode::SUCCESS),
            Err(e) => Err(e),
            Ok(()) => Ok(ExitCode::SUCCESS),
        }
    }
}
