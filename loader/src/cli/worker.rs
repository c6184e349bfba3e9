use super::Ctx;
use clap::Args;
use limes::exec::worker::{run_worker, WorkerOptions};
use limes::Store;
use std::path::PathBuf;
use std::process::ExitCode;

/// Internal: serve one function over stdin/stdout for `limes serve`.
///
/// Loads NAME (re-hashing its artifact), writes a ready frame, then answers
/// request frames until stdin closes. Not for direct use.
#[derive(Args)]
pub struct WorkerCommand {
    /// Installed function name.
    name: String,
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
        let opts = WorkerOptions { function: self.name, dirs: self.dir.clone(), anchors };
        let stdin = std::io::stdin();
        let stdout = std::io::stdout();
        match run_worker(&store, &opts, &mut stdin.lock(), &mut std::io::BufWriter::new(stdout.lock())) {
            // The server went away mid-answer: nothing left to do.
            Err(e) if e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) => Ok(ExitCode::SUCCESS),
            Err(e) => Err(e),
            Ok(()) => Ok(ExitCode::SUCCESS),
        }
    }
}
