use containerd_shim_limes::{node, LimesShim};
use containerd_shim_wasm::shim::{Cli, Config};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    // `limes serve` inside a container starts its workers as
    // `/proc/self/exe --store DIR worker NAME`: this binary, not containerd.
    if let [_, flag, store, cmd, name] = args.as_slice() {
        if flag == "--store" && cmd == "worker" {
            return worker(store, name);
        }
    }
    node::init();
    LimesShim::run(Config { default_log_level: "info".into(), ..Default::default() });
    ExitCode::SUCCESS
}

fn worker(store: &str, name: &str) -> ExitCode {
    let run = || -> anyhow::Result<()> {
        let store = limes::Store::open(store)?;
        let opts = limes::worker::WorkerOptions { function: name.to_string(), dirs: Vec::new() };
        let (stdin, stdout) = (std::io::stdin(), std::io::stdout());
        limes::worker::run_worker(&store, &opts, &mut stdin.lock(), &mut std::io::BufWriter::new(stdout.lock()))
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
