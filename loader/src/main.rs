//! `limes`: verify, install and run limes bundles on an edge device.

mod cli;

// The device build is static (x86_64-unknown-linux-musl): no dynamic loader
// and no glibc start-up, which costs 0.5-0.75 ms per process on a machine
// where CPUID traps to the hypervisor. musl's own allocator is slow for a
// server (no-op p50 0.37 vs 0.29 ms), so that build uses mimalloc, without
// its transparent huge pages: clearing a 2 MiB page costs a one-shot run
// more (0.4 ms) than it saves. The numbers are in the README.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use std::process::ExitCode;

/// Run limes functions: verified, precompiled, sub-millisecond cold starts.
///
/// `limes install BUNDLE --trust KEY` verifies a signed bundle and stores it;
/// `limes run NAME` runs it. Nothing native is mapped before the bundle's
/// signature and every digest have been checked.
///
/// Exit codes: 0 success; 1 error; 2 usage; 3 the bundle failed
/// verification; 4 the function returned an error; 5 the function trapped,
/// timed out or ran out of memory.
#[derive(Parser)]
#[command(name = "limes", version, propagate_version = true, max_term_width = 100)]
struct Cli {
    /// Store directory [default: $LIMES_HOME, else $XDG_DATA_HOME/limes, else ~/.local/share/limes].
    #[arg(long, global = true, value_name = "DIR")]
    store: Option<std::path::PathBuf>,
    /// Trusted keys and publisher pins, checked on every load [default:
    /// $LIMES_TRUST_DIR, else $XDG_CONFIG_HOME/limes/trusted, else
    /// ~/.config/limes/trusted]. Must lie outside the store.
    #[arg(long, global = true, value_name = "DIR")]
    trust_dir: Option<std::path::PathBuf>,
    /// Machine-readable JSON on stdout.
    #[arg(long, global = true)]
    json: bool,
    /// More log output on stderr (-v, -vv).
    #[arg(long, short, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Only errors on stderr, and no confirmation lines on stdout.
    #[arg(long, short, global = true, conflicts_with = "verbose")]
    quiet: bool,
    #[command(subcommand)]
    command: cli::Command,
}

fn main() -> ExitCode {
    let c = Cli::parse();
    let access_log = matches!(&c.command, cli::Command::Serve(s) if s.access_log());
    limes::args::init_logging_with(c.verbose, c.quiet, if access_log { &["limes::access=info"] } else { &[] });
    let ctx = cli::Ctx {
        store: c.store.unwrap_or_else(limes::store::default_root),
        trust_dir: c.trust_dir.unwrap_or_else(limes::trust::default_dir),
        json: c.json,
        quiet: c.quiet,
    };
    match c.command.execute(&ctx) {
        Ok(code) => code,
        Err(e) => {
            limes::args::report_error(ctx.json, cli::error_kind(&e), &e);
            ExitCode::from(cli::exit_code(&e))
        }
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
}
