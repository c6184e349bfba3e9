use super::Ctx;
use anyhow::Context;
use clap::Args;
use limes::sync::config::{DeviceConfig, Follow, RollbackRules};
use limes::sync::{Agent, Event};
use limes::Store;
use std::path::PathBuf;
use std::process::ExitCode;

/// Keep this device on the newest healthy signed version of each function.
///
/// Polls each registry reference (with jitter, and backoff while the
/// registry cannot be reached); when a tag moves to a newly signed
/// manifest, fetches only what this device runs (resuming interrupted
/// downloads), installs it beside the current version, sends it the health
/// request its manifest declares, and switches only if it answers as
/// declared. A version that fails its check, or that fails too many
/// requests in `limes serve` after the switch, is rolled back and marked
/// bad until the tag moves again. Runs next to `limes serve` on the same
/// store (serve picks each switch up by itself); offline, the device keeps
/// serving what it has.
///
/// The device is described by a TOML file (--config; see docs/fleet.md) or
/// by flags: references as arguments with --trust.
#[derive(Args)]
#[command(
    after_help = "Examples:\n  limes sync --config /etc/limes/device.toml\n  limes sync registry.example.com/fns/hello:stable --trust publisher.pub --interval-s 60\n  limes sync 127.0.0.1:5000/fns/hello:stable --trust k.pub --insecure --once --json"
)]
pub struct SyncCommand {
    /// Registry references to follow (`registry/repository:tag`).
    references: Vec<String>,
    /// The device configuration (TOML): keys, functions, intervals, rollback rules.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["references", "trust"])]
    config: Option<PathBuf>,
    /// Trusted public key, or a directory of `.pub` files (repeatable).
    #[arg(long, value_name = "KEY|DIR")]
    trust: Vec<PathBuf>,
    /// Seconds between polls (each wait drawn from [interval/2, interval]).
    #[arg(long, value_name = "S", default_value_t = 30.0)]
    interval_s: f64,
    /// Plain HTTP; allowed only for registries on loopback.
    #[arg(long)]
    insecure: bool,
    /// Poll each reference once and exit (0: all reached; 1: one failed).
    #[arg(long)]
    once: bool,
}

impl SyncCommand {
    fn config(&self) -> anyhow::Result<DeviceConfig> {
        if let Some(p) = &self.config {
            return Ok(DeviceConfig::load(p)?);
        }
        if self.references.is_empty() {
            anyhow::bail!("nothing to follow: give registry references and --trust KEY, or --config FILE");
        }
        let mut cfg: DeviceConfig = toml::from_str("trust = []").context("default configuration")?;
        cfg.trust = self.trust.clone();
        cfg.poll_interval_s = self.interval_s;
        cfg.insecure = self.insecure;
        cfg.functions = self.references.iter().map(|r| Follow { reference: r.clone(), with_microvm: false }).collect();
        cfg.rollback = RollbackRules::default();
        Ok(cfg)
    }

    pub fn execute(self, ctx: &Ctx) -> anyhow::Result<ExitCode> {
        let mut cfg = self.config()?;
        if self.config.is_some() && self.insecure {
            cfg.insecure = true;
        }
        let store = Store::open(&ctx.store)?;
        let mut agent = Agent::new(store, cfg, ctx.trust_dir.clone(), std::env::current_exe()?)?;
        let (json, quiet) = (ctx.json, ctx.quiet);
        let mut report = move |e: &Event| print_event(e, json, quiet);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        if self.once {
            let ok = rt.block_on(agent.poll_all(&mut report));
            return Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(limes::error::EXIT_ERROR) });
        }
        rt.block_on(agent.run(&mut report, shutdown_signal()));
        Ok(ExitCode::SUCCESS)
    }
}

/// SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        Some(_) = async { match term.as_mut() { Some(t) => t.recv().await, None => std::future::pending().await } } => {}
    }
}

/// One line per event: JSON with --json, else a sentence (a failed poll on
/// stderr). An up-to-date poll prints nothing unless --json.
fn print_event(e: &Event, json: bool, quiet: bool) {
    if json {
        println!("{}", serde_json::to_string(e).expect("events serialize"));
        return;
    }
    match e {
        Event::UpToDate { .. } => {}
        Event::Failed { reference, error, retry_in_ms, .. } => {
            eprintln!(
                "sync: {reference}: {error}{}",
                if *retry_in_ms > 0 { format!(" (retrying in {:.1} s)", *retry_in_ms as f64 / 1e3) } else { String::new() }
            )
        }
        _ if quiet => {}
        Event::Updated { name, from, to, bytes, downloaded, reused, health_check_ms } => println!(
            "updated {name} {} -> {to} (health check passed in {health_check_ms} ms; {bytes} bytes received; downloaded: {}; reused: {})",
            from.as_deref().unwrap_or("(none)"),
            if downloaded.is_empty() { "nothing".into() } else { downloaded.join(", ") },
            if reused.is_empty() { "nothing".into() } else { reused.join(", ") }
        ),
        Event::Rejected { name, version, reason } => println!("rejected {name} {version}: {reason}"),
        Event::SkippedBad { name, version } => println!("skipping {name} {version}: marked bad; waiting for the tag to move"),
        Event::RolledBack { name, from, to, reason } => println!("rolled back {name} {from} -> {to}: {reason}"),
        Event::Healthy { name, version, requests, failures } => {
            println!("{name} {version} stayed healthy after the switch ({failures} of {requests} requests failed)")
        }
    }
}
