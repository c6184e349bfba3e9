//! One container: its image layers back to bundle files, verified and
//! installed into the node store, then run once (a Job) or served over
//! HTTP (a Deployment). Runs inside the container's namespaces, forked from
//! the shim after the node configuration was loaded.

use crate::node::{self, Node};
use crate::{EXIT_FAULT, EXIT_FUNCTION_ERROR, EXIT_USAGE};
use clap::{Parser, Subcommand};
use limes::load::LoadMode;
use limes::runtime::{Interfaces, InvokeOptions, RuntimeOptions};
use limes::store::{InstallPolicy, InstalledFunction, Integrity, Store};
use limes::Runtime;
use limes_bundle::manifest::{MANIFEST_PATH, SIGNATURE_PATH};
use std::io::Write;
use std::time::Duration;

/// A bundle file carried by one image layer (matched by its
/// `org.opencontainers.image.title` annotation, as `limes-pack push` writes it).
pub struct LayerFile<'a> {
    pub title: &'a str,
    pub bytes: &'a [u8],
}

/// The container's command line: the image's `Entrypoint` is `limes`, its
/// `Cmd` is `run`; a pod's `args` replace the `Cmd`.
#[derive(Parser, Debug)]
#[command(name = "limes", about = "Run the limes function carried by this image", disable_version_flag = true)]
pub struct ContainerArgs {
    #[command(subcommand)]
    pub command: ContainerCommand,
}

#[derive(Subcommand, Debug)]
pub enum ContainerCommand {
    /// Run the function once and exit: the response body on stdout, the
    /// function's own output on stderr. Exit 4 for an error answer, 5 for a
    /// trap, timeout or memory-limit hit, 3 if the bundle is refused.
    Run(RunArgs),
    /// Serve the function over HTTP until the container is stopped, as
    /// `limes serve` does (pre-warmed workers, 504 past the deadline,
    /// `/healthz`, `/metrics`).
    Serve(ServeArgs),
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    request: limes::args::RequestArgs,
    /// Wall-time limit in milliseconds (overrides the manifest).
    #[arg(long, value_name = "MS")]
    timeout_ms: Option<u64>,
    /// Memory limit in MiB (overrides the manifest).
    #[arg(long, value_name = "MIB")]
    memory_limit_mib: Option<u64>,
}

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on (in the pod's network namespace).
    #[arg(long, default_value = "0.0.0.0:8080")]
    listen: std::net::SocketAddr,
    /// Pre-warmed worker processes.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Invocations running at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Wall-time limit per request in ms (overrides the manifest).
    #[arg(long, value_name = "MS")]
    timeout_ms: Option<u64>,
}

/// Why a container's bundle is not run.
#[derive(Debug, thiserror::Error)]
pub enum RefusedError {
    #[error("this node's limes shim is not configured: {0}")]
    Node(String),
    #[error("the image carries no {0} layer: not a limes bundle image (push it with `limes-pack push`)")]
    MissingLayer(&'static str),
    #[error("the image's {0} layer is not UTF-8")]
    Signature(&'static str),
    #[error("the image carries no precompiled tier this node can run (the shim has no compiler)")]
    NoTier,
    #[error("sharing the node store {path} with serve's workers")]
    Store { path: std::path::PathBuf, source: std::io::Error },
    #[error(transparent)]
    Install(#[from] limes::store::StoreError),
    #[error(transparent)]
    Bundle(#[from] limes_bundle::BundleError),
}

impl RefusedError {
    /// Verification when the bundle itself failed (exit 3), rather than
    /// the node or the image being unusable.
    pub fn kind(&self) -> limes::ErrorKind {
        match self {
            RefusedError::Install(e) => e.kind(),
            RefusedError::Bundle(e) => limes::error::bundle_kind(e),
            RefusedError::Signature(_) => limes::ErrorKind::Verification,
            RefusedError::Node(_) | RefusedError::MissingLayer(_) | RefusedError::NoTier | RefusedError::Store { .. } => limes::ErrorKind::Other,
        }
    }
}

/// Verify the bundle in `layers` against the node's keys and install the
/// files this node runs (the component and the best CPU tier) into the node
/// store. Each signed manifest gets its own store under the node store
/// (`<store>/<manifest sha256>`), so two versions of a function on one node
/// (a rolling update) never replace each other's files; the same bundle
/// reinstalls as a no-op after re-verifying the copy on disk.
pub fn install(node: &Node, layers: &[LayerFile<'_>]) -> Result<(Store, InstalledFunction), RefusedError> {
    let layer = |title: &str, what: &'static str| layers.iter().find(|l| l.title == title).map(|l| l.bytes).ok_or(RefusedError::MissingLayer(what));
    let manifest_bytes = layer(MANIFEST_PATH, MANIFEST_PATH)?;
    let signature = std::str::from_utf8(layer(SIGNATURE_PATH, SIGNATURE_PATH)?).map_err(|_| RefusedError::Signature(SIGNATURE_PATH))?;
    // Trust first: nothing of an unverified manifest is looked at further.
    let (_, manifest) = node.keys.verify_manifest(manifest_bytes, signature)?;
    let best = limes::select::best_tier(&manifest).0.ok_or(RefusedError::NoTier)?;
    let files = [(&manifest.component, "component"), (&best.path, "precompiled tier")]
        .into_iter()
        .map(|(path, what)| Ok((path.clone(), layer(path, what)?.to_vec())))
        .collect::<Result<Vec<_>, RefusedError>>()?;
    let store = Store::open(node.store_root().join(limes_bundle::sha256_hex(manifest_bytes)))?;
    // The image names the version to run: an older one is a rollback, not
    // a downgrade attack (its signature is checked like any other).
    let policy = InstallPolicy { allow_downgrade: true, ..Default::default() };
    let f = store.install_parts(manifest_bytes, signature, &files, &node.keys, policy)?;
    Ok((store, f))
}

/// Run the container: parse its command line, verify and install, then run
/// or serve. Returns the container's exit code.
pub fn run(args: &[String], layers: &[LayerFile<'_>]) -> i32 {
    let parsed = match ContainerArgs::try_parse_from(args) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { EXIT_USAGE.into() } else { 0 };
        }
    };
    let serving = matches!(parsed.command, ContainerCommand::Serve(_));
    let installed = node::get().map_err(|e| RefusedError::Node(e.to_string())).and_then(|n| {
        let (store, f) = install(n, layers)?;
        if serving {
            n.share_with_children().map_err(|source| RefusedError::Store { path: n.store_path.clone(), source })?;
        }
        Ok((n, store, f))
    });
    let (node, store, f) = match installed {
        Ok(x) => x,
        Err(e) => {
            let code = e.kind().exit_code();
            eprintln!("error: refusing to run this image: {:#}", anyhow::Error::from(e));
            return code.into();
        }
    };
    match parsed.command {
        ContainerCommand::Run(a) => run_once(&f, &a),
        ContainerCommand::Serve(a) => serve(node, store, &f, &a),
    }
}

fn run_once(f: &InstalledFunction, a: &RunArgs) -> i32 {
    let req = match a.request.request() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e:#}");
            return EXIT_USAGE.into();
        }
    };
    let opts = InvokeOptions { memory_limit: a.memory_limit_mib.map(|m| m << 20), timeout: a.timeout_ms.map(Duration::from_millis), ..Default::default() };
    let outcome = (|| -> Result<_, anyhow::Error> {
        let rt = Runtime::new(&RuntimeOptions { pooling: false, max_instances: 1, interfaces: Interfaces::Imported })?;
        // Re-hash: the bytes mapped are the bytes just checked.
        let loaded = limes::load::load(&rt, f, LoadMode::Auto, Integrity::Rehash)?;
        Ok(limes::once::invoke(&rt, &loaded, req, &opts, |err| limes::once::timeout_expiry(false, err))?)
    })();
    let inv = match outcome {
        Ok(inv) => inv,
        Err(e) => {
            eprintln!("error: {e:#}");
            return limes::classify::kind_of(&e).exit_code().into();
        }
    };
    match inv.result {
        Ok(resp) => {
            let mut out = std::io::stdout();
            if out.write_all(&resp.body).and_then(|_| out.flush()).is_err() {
                return 1;
            }
            0
        }
        Err(e) => {
            eprintln!("function error: {e}");
            EXIT_FUNCTION_ERROR.into()
        }
    }
}

fn serve(node: &Node, store: Store, f: &InstalledFunction, a: &ServeArgs) -> i32 {
    let opts = limes::serve::ServeOptions {
        listen: a.listen,
        functions: vec![f.manifest.function.name.clone()],
        workers: a.workers.max(1),
        concurrency: a.concurrency.max(1),
        timeout: a.timeout_ms.map(Duration::from_millis),
        // Workers are this binary (see `main`), started through descriptors
        // opened on the node.
        worker_exe: Some(node.worker_exe()),
        // Every load, here and in each worker, checks the signature against
        // the node's keys (never anything in the store or the pod).
        anchors: limes::trust::Anchors::from_keys(node.keys.clone()),
        // A pod serves one function: a wasi:http one also at the root, as
        // `wasmtime serve` and Spin do (a limes function keeps its
        // /functions/NAME route: its world has no paths).
        routes: match f.manifest.world.kind {
            limes_bundle::manifest::WorldKind::WasiHttp => vec![limes::serve::Route { prefix: "/".into(), function: f.manifest.function.name.clone() }],
            _ => Vec::new(),
        },
        ..Default::default()
    };
    // Our own runtime on a thread of its own: this code is called from
    // inside the shim library's executor.
    let served = std::thread::spawn(move || -> anyhow::Result<()> {
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        rt.block_on(async move {
            let shutdown = async {
                let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            };
            limes::serve::serve(&store, opts, |addr, _| eprintln!("listening on {addr}"), shutdown).await?;
            Ok(())
        })
    })
    .join();
    match served {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            eprintln!("error: {e:#}");
            1
        }
        Err(_) => EXIT_FAULT.into(),
    }
}
