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
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: cli::Command,
}

/// The options every subcommand takes, before or after its name.
#[derive(clap::Args)]
struct Global {
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
}

/// `limes run` parsed alone: the same global options and the same
/// `RunCommand` as in [`Cli`], without building every other subcommand's
/// parser first (part of a one-shot run's start-up; #27).
#[derive(Parser)]
#[command(name = "limes", version, propagate_version = true, max_term_width = 100)]
struct RunCli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: cli::RunOnly,
}

/// Whether the command line is a `run`: only global options before it, so
/// [`RunCli`] parses it exactly as [`Cli`] would. Anything else (help,
/// another subcommand, an unknown option) takes the full parser.
fn is_run(args: &[std::ffi::OsString]) -> bool {
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        match a.to_str() {
            Some("run") => return true,
            Some("--store" | "--trust-dir") => {
                it.next();
            }
            Some(o) if o.starts_with("--store=") || o.starts_with("--trust-dir=") => {}
            Some("--json" | "--quiet" | "-q" | "--verbose" | "-v" | "-vv" | "-vvv") => {}
            _ => return false,
        }
    }
    false
}

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let (g, command) = if is_run(&args) {
        let c = RunCli::parse_from(args);
        (c.global, c.command.into_command())
    } else {
        let c = Cli::parse_from(args);
        (c.global, c.command)
    };
    let access_log = matches!(&command, cli::Command::Serve(s) if s.access_log());
    limes::args::init_logging_with(g.verbose, g.quiet, if access_log { &["limes::access=info"] } else { &[] });
    let ctx = cli::Ctx {
        store: g.store.unwrap_or_else(limes::store::default_root),
        trust_dir: g.trust_dir.unwrap_or_else(limes::trust::default_dir),
        json: g.json,
        quiet: g.quiet,
    };
    let failed = |e: anyhow::Error| {
        limes::args::report_error(ctx.json, cli::error_kind(&e), &e);
        cli::exit_code(&e)
    };
    match command {
        cli::Command::Run(run) => leave_to_kernel(run.execute(&ctx).unwrap_or_else(failed)),
        command => command.execute(&ctx).unwrap_or_else(|e| ExitCode::from(failed(e))),
    }
}

/// End a one-shot run now: its answer is written, and everything it holds
/// (engine, mapped code, the function's memory, the allocator's arenas) is
/// the kernel's to free at once. Exiting through libc would first run the
/// allocator's and the runtime's clean-up, which only returns memory to a
/// process that is about to end.
fn leave_to_kernel(code: u8) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: `_exit` ends the process without running atexit handlers or
    // destructors; the buffered output was flushed above and nothing else
    // of this process must outlive it (a one-shot run writes no files after
    // answering; the store's staged bundle was removed before).
    unsafe { libc::_exit(i32::from(code)) }
}

#[cfg(test)]
mod tests {
    /// clap's own consistency checks over every subcommand and flag.
    #[test]
    fn verify_cli() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
        super::RunCli::command().debug_assert();
    }

    /// The fast path takes exactly the command lines whose words before
    /// `run` are global options; both parsers agree on what they take.
    #[test]
    fn run_fast_path_takes_only_runs() {
        use clap::Parser;
        let args = |s: &str| s.split_whitespace().map(std::ffi::OsString::from).collect::<Vec<_>>();
        for yes in ["limes run f", "limes --store /s --json -v run f --data x", "limes --trust-dir=/t -q run f", "limes run --help"] {
            assert!(super::is_run(&args(yes)), "{yes}");
        }
        for no in ["limes", "limes list", "limes --help", "limes serve --store /s", "limes --unknown run f", "limes -x run f", "limes install run"] {
            assert!(!super::is_run(&args(no)), "{no}");
        }
        let line = args("limes --store /s --json run f --data x --timeout-ms 5");
        let fast = super::RunCli::try_parse_from(line.clone()).unwrap();
        let full = super::Cli::try_parse_from(line).unwrap();
        assert_eq!((fast.global.store, fast.global.json), (full.global.store, full.global.json));
        assert!(matches!(full.command, super::cli::Command::Run(_)));
    }
}
