use containerd_shim_limes::{node, LimesShim};
use containerd_shim_wasm::shim::{Cli, Config};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    // `limes serve` inside a container starts its workers as
    // `/proc/self/exe --store DIR worker NAME [--trusted-key KEY]...`: this
    // binary, not containerd. The keys are the node's, passed by the server.
    if let [_, flag, store, cmd, name, keys @ ..] = args.as_slice() {
        if flag == "--store" && cmd == "worker" {
            return worker(store, name, keys);
        }
    }
    node::init();
    LimesShim::run(Config { default_log_level: "info".into(), ..Default::default() });
    ExitCode::SUCCESS
}

fn worker(store: &str, name: &str, key_args: &[String]) -> ExitCode {
    let run = || -> anyhow::Result<()> {
        let store = limes::Store::open(store)?;
        let mut keys = Vec::new();
        for pair in key_args.chunks(2) {
            match pair {
                [flag, key] if flag == "--trusted-key" => keys.push(key.clone()),
                _ => anyhow::bail!("unexpected worker arguments {key_args:?}"),
            }
        }
        let anchors = limes::trust::Anchors::from_keys(limes::trust::keys_from_args(&keys)?);
        let opts = limes::exec::worker::WorkerOptions { function: name.to_string(), dirs: Vec::new(), anchors };
        let (stdin, stdout) = (std::io::stdin(), std::io::stdout());
        limes::exec::worker::run_worker(&store, &opts, &mut stdin.lock(), &mut std::io::BufWriter::new(stdout.lock()))
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
