//! A fleet on one machine (#26): N devices, each a store with its own
//! `limes serve` (own loopback port) and `limes sync` agent, follow one tag
//! on one real `docker-registry`. Three updates are published:
//!
//! 1. new code (another component and tier): every device converges;
//! 2. a version whose declared health check fails: every device rejects it
//!    and keeps serving the last one;
//! 3. new code again, with the registry killed right after the tag moved
//!    and restarted a few seconds later: every device converges by itself.
//!
//! A device has converged when its record names the version and its
//! `limes serve` serves that object. Reported: convergence time after the
//! tag moved (the aim: poll interval + 5 s), and the bytes each device
//! received per update against the bound (manifest + signature + the
//! changed component and one tier). Fails when a device does not converge.

use anyhow::{Context, Result};
use limes_bundle::manifest::HealthCheck;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Seconds between two polls of a device (each wait drawn from [i/2, i]).
const POLL_INTERVAL_S: f64 = 2.0;
/// Longest wait between polls while the registry is down.
const MAX_BACKOFF_S: f64 = 4.0;
/// How long the registry stays down in the outage phase.
const OUTAGE: Duration = Duration::from_secs(5);
/// A device that has not converged by then fails the benchmark.
const GIVE_UP: Duration = Duration::from_secs(180);
const NAME: &str = "fleetfn";

#[derive(Debug, Clone, Serialize)]
pub struct FleetPhase {
    pub what: String,
    pub version: String,
    /// Seconds after the tag moved until each device converged (or, for a
    /// rejected version, until it had rejected it).
    pub seconds: Vec<f64>,
    /// Bytes each device received from the registry for this update.
    pub bytes: Vec<u64>,
    /// Manifest + signature (+ component and one tier when they changed).
    pub bound_bytes: u64,
    /// Files a device downloaded (the first device's; all are alike).
    pub downloaded: Vec<String>,
    /// Seconds after the tag moved at which the registry came back (the
    /// outage phase).
    pub registry_back_s: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FleetReport {
    pub devices: usize,
    pub poll_interval_s: f64,
    pub phases: Vec<FleetPhase>,
    pub outage_s: f64,
}

/// Children killed on drop (devices, the registry).
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Debian's `docker-registry` on a free loopback port, storage in `dir`.
struct Registry {
    addr: String,
    dir: PathBuf,
    child: Option<Child>,
}

impl Registry {
    fn start(dir: &Path) -> Result<Registry> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr = format!("127.0.0.1:{port}");
        std::fs::create_dir_all(dir)?;
        let cfg = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
            dir.join("data").display()
        );
        std::fs::write(dir.join("config.yml"), cfg)?;
        let mut r = Registry { addr, dir: dir.to_path_buf(), child: None };
        r.up()?;
        Ok(r)
    }

    fn up(&mut self) -> Result<()> {
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(self.dir.join("config.yml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("docker-registry is required (scripts/setup.sh installs it)")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&self.addr).is_err() {
            anyhow::ensure!(Instant::now() < deadline, "the registry did not start on {}", self.addr);
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.down();
    }
}

fn push(bundle: &Path, reference: &str) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(limes_oci::push(bundle, reference, true, &Default::default())).with_context(|| format!("pushing {}", bundle.display()))?;
    Ok(())
}

/// One device's store and what its agent and server say.
struct Device {
    store: PathBuf,
    addr: std::net::SocketAddr,
}

impl Device {
    fn record(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&std::fs::read(self.store.join(format!("functions/{NAME}.json"))).ok()?).ok()
    }

    fn sync_state(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&std::fs::read(self.store.join(format!("sync/{NAME}.json"))).ok()?).ok()
    }

    /// Its record names `version` and its server serves that object.
    fn runs(&self, version: &str) -> bool {
        let Some(rec) = self.record() else { return false };
        let served: Option<serde_json::Value> = std::fs::read(self.store.join("serve-state.json")).ok().and_then(|b| serde_json::from_slice(&b).ok());
        rec["version"] == version && served.is_some_and(|s| s["functions"][NAME]["object"] == rec["object"])
    }

    fn rejected(&self, version: &str) -> bool {
        self.sync_state().is_some_and(|s| s["bad"].as_array().is_some_and(|b| b.iter().any(|x| x["version"] == version)))
    }
}

/// Seconds after `t0` at which each device first satisfied `done`; fails
/// naming the devices that never did. `never` must hold for none, ever.
fn converge(devices: &[Device], t0: Instant, done: impl Fn(&Device) -> bool, never: impl Fn(&Device) -> bool, what: &str) -> Result<Vec<f64>> {
    let mut at: Vec<Option<f64>> = vec![None; devices.len()];
    while at.iter().any(Option::is_none) {
        for (i, d) in devices.iter().enumerate() {
            anyhow::ensure!(!never(d), "device {i}: {what}: reached a state it must never reach");
            if at[i].is_none() && done(d) {
                at[i] = Some(t0.elapsed().as_secs_f64());
            }
        }
        if t0.elapsed() > GIVE_UP {
            let missing: Vec<usize> = at.iter().enumerate().filter(|(_, a)| a.is_none()).map(|(i, _)| i).collect();
            anyhow::bail!("{what}: devices {missing:?} did not converge within {GIVE_UP:?} (their sync state: {:?})", devices[missing[0]].sync_state());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    Ok(at.into_iter().map(|a| a.unwrap_or_default()).collect())
}

fn last_update_bytes(devices: &[Device], version: &str) -> Result<(Vec<u64>, Vec<String>)> {
    let mut bytes = Vec::new();
    let mut downloaded = Vec::new();
    for (i, d) in devices.iter().enumerate() {
        let s = d.sync_state().with_context(|| format!("device {i} has no sync state"))?;
        let u = &s["last_update"];
        anyhow::ensure!(u["to"] == version, "device {i}: last update is {u}, not to {version}");
        bytes.push(u["bytes"].as_u64().unwrap_or_default());
        if i == 0 {
            downloaded = u["downloaded"].as_array().map(|a| a.iter().filter_map(|p| p.as_str().map(String::from)).collect()).unwrap_or_default();
        }
    }
    Ok((bytes, downloaded))
}

/// What a device must fetch of `bundle` beyond what it holds from `held`.
fn bound(bundle: &Path, held: &[&Path]) -> Result<u64> {
    let read = |p: &Path| -> Result<(limes_bundle::Manifest, u64)> {
        let mut sink = limes_bundle::archive::InMemory::default();
        let v = limes_bundle::archive::read_bundle(p, &Default::default(), limes_bundle::archive::SignaturePolicy::Unverified, &mut sink)?;
        Ok((v.manifest, v.manifest_bytes.len() as u64))
    };
    let (m, mlen) = read(bundle)?;
    let held: Vec<String> =
        held.iter().map(|h| read(h).map(|(hm, _)| hm.files.into_iter().map(|f| f.sha256).collect::<Vec<_>>())).collect::<Result<Vec<_>>>()?.concat();
    // The signature is ~350 bytes; the OCI manifest that says where the
    // layers are, ~2 KiB (a poll fetches it whether or not the tag moved).
    let mut total = mlen + 400 + 2048;
    let tier = limes::select::best_tier(&m).0.map(|a| a.path.clone());
    for path in std::iter::once(m.component.clone()).chain(tier) {
        let e = m.file(&path).context("manifest lists its files")?;
        if !held.contains(&e.sha256) {
            total += e.size;
        }
    }
    Ok(total)
}

/// The fleet run: build the versions, start `devices` devices, publish.
pub fn run(work: &Path, key: &limes_bundle::keys::SecretKey, pubkey: &Path, devices: usize) -> Result<FleetReport> {
    let limes = crate::sibling("limes")?;
    let out = work.join("fleet-builds");
    // One tier keeps the builds short; a device fetches one tier anyway.
    let build = |dir: PathBuf| -> Result<PathBuf> {
        let opts = limes_build::BuildOptions { tiers: vec!["x86-64".into()], ..crate::signed_build_options(dir.clone(), out.clone(), key) };
        Ok(limes_build::build(&opts, &limes_build::pipeline::NoProgress).with_context(|| format!("building {}", dir.display()))?.bundle)
    };
    eprintln!("fleet: building the versions");
    let noop = build(crate::repo().join("packs/noop"))?;
    let faulty = build(crate::repo().join("tests/fixtures/faulty"))?;
    let mandelbrot = build(crate::repo().join("packs/mandelbrot"))?;
    let version = |from: &Path, v: &str, input: &str, expect: Option<&str>| -> Result<PathBuf> {
        let p = work.join(format!("{NAME}-{v}.limes"));
        limes_bundle::archive::rewrite_manifest(
            from,
            key,
            &p,
            |m| {
                m.function.name = NAME.into();
                m.function.version = v.into();
                m.health = Some(HealthCheck { input: input.into(), expect: expect.map(String::from), ..Default::default() });
            },
            None,
        )?;
        Ok(p)
    };
    let v1 = version(&noop, "0.1.0", "ping", Some("ping"))?;
    let v2 = version(&faulty, "0.2.0", "ping", Some("ping"))?;
    let v3 = version(&faulty, "0.3.0", "ping", Some("pong"))?;
    let v4 = version(&mandelbrot, "0.4.0", "output=checksum", None)?;

    let mut registry = Registry::start(&work.join("fleet-registry"))?;
    let reference = format!("{}/fleet/{NAME}:stable", registry.addr);
    push(&v1, &reference)?;

    eprintln!("fleet: starting {devices} devices");
    let mut procs = Procs(Vec::new());
    let mut fleet = Vec::new();
    for i in 0..devices {
        let dir = work.join(format!("device-{i}"));
        std::fs::create_dir_all(&dir)?;
        let (store, trust) = (dir.join("store"), dir.join("trust"));
        let config = dir.join("device.toml");
        std::fs::write(
            &config,
            format!(
                "trust = [{:?}]\npoll_interval_s = {POLL_INTERVAL_S}\nmax_backoff_s = {MAX_BACKOFF_S}\ninsecure = true\n[[function]]\nreference = {reference:?}\n",
                pubkey.display()
            ),
        )?;
        let base = |c: &mut Command| {
            c.arg("--store").arg(&store).arg("--trust-dir").arg(&trust).env("RUST_LOG", "error");
        };
        let mut serve = Command::new(&limes);
        base(&mut serve);
        let mut serve = serve.args(["serve", "--listen", "127.0.0.1:0", "--workers", "1"]).stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?;
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(serve.stdout.take().context("serve stdout")?), &mut line)?;
        let addr = line.trim().strip_prefix("listening on ").with_context(|| format!("device {i}: serve said {line:?}"))?.parse()?;
        procs.0.push(serve);
        let mut agent = Command::new(&limes);
        base(&mut agent);
        procs.0.push(agent.args(["sync", "--config"]).arg(&config).stdout(Stdio::null()).stderr(Stdio::null()).spawn()?);
        fleet.push(Device { store, addr });
    }
    converge(&fleet, Instant::now(), |d| d.runs("0.1.0"), |_| false, "first install of 0.1.0")?;

    let mut phases = Vec::new();
    eprintln!("fleet: publishing 0.2.0 (new code)");
    push(&v2, &reference)?;
    let seconds = converge(&fleet, Instant::now(), |d| d.runs("0.2.0"), |_| false, "update to 0.2.0")?;
    let (bytes, downloaded) = last_update_bytes(&fleet, "0.2.0")?;
    phases.push(FleetPhase {
        what: "new code".into(),
        version: "0.2.0".into(),
        seconds,
        bytes,
        bound_bytes: bound(&v2, &[&v1])?,
        downloaded,
        registry_back_s: None,
    });

    eprintln!("fleet: publishing 0.3.0 (fails its health check)");
    push(&v3, &reference)?;
    let seconds = converge(&fleet, Instant::now(), |d| d.rejected("0.3.0"), |d| d.record().is_some_and(|r| r["version"] == "0.3.0"), "rejection of 0.3.0")?;
    anyhow::ensure!(fleet.iter().all(|d| d.runs("0.2.0")), "a device left 0.2.0 while rejecting 0.3.0");
    phases.push(FleetPhase {
        what: "fails its health check: rejected, 0.2.0 kept".into(),
        version: "0.3.0".into(),
        seconds,
        bytes: Vec::new(),
        bound_bytes: bound(&v3, &[&v2])?,
        downloaded: Vec::new(),
        registry_back_s: None,
    });

    eprintln!("fleet: publishing 0.4.0, then a registry outage of {OUTAGE:?}");
    push(&v4, &reference)?;
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_millis(300));
    registry.down();
    std::thread::sleep(OUTAGE);
    anyhow::ensure!(
        fleet.iter().all(|d| d.runs("0.2.0") || d.runs("0.4.0") || d.record().is_some_and(|r| r["version"] == "0.4.0")),
        "a device lost its version during the outage"
    );
    registry.up()?;
    let back = t0.elapsed().as_secs_f64();
    let seconds = converge(&fleet, t0, |d| d.runs("0.4.0"), |_| false, "update to 0.4.0 through an outage")?;
    let (bytes, downloaded) = last_update_bytes(&fleet, "0.4.0")?;
    phases.push(FleetPhase {
        what: format!("new code; registry down {} s right after the tag moved", OUTAGE.as_secs()),
        version: "0.4.0".into(),
        seconds,
        bytes,
        bound_bytes: bound(&v4, &[&v1, &v2])?,
        downloaded,
        registry_back_s: Some(back),
    });
    // Every device answers with the new version.
    for (i, d) in fleet.iter().enumerate() {
        let (status, body) = crate::report::post(d.addr, &format!("/functions/{NAME}"), b"output=checksum")?;
        anyhow::ensure!(status == 200 && body.starts_with(b"{\"width\""), "device {i} answered {status}: {}", String::from_utf8_lossy(&body));
    }
    drop(procs);
    Ok(FleetReport { devices, poll_interval_s: POLL_INTERVAL_S, phases, outage_s: OUTAGE.as_secs_f64() })
}

fn quantile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(((v.len().max(1) - 1) as f64 * p).round() as usize).copied().unwrap_or_default()
}

/// `fleet.md`.
pub fn markdown(r: &FleetReport, machine: &str) -> String {
    let aim = r.poll_interval_s + 5.0;
    let mut md = format!(
        "# A fleet on one machine\n\n{machine}\n\n{} devices, each a store with its own `limes serve` (own loopback port, 1 worker) and `limes sync` agent \
         (poll interval {} s, each wait drawn from [interval/2, interval]; backoff up to {MAX_BACKOFF_S} s), follow one tag on one `docker-registry`. \
         A device has converged when its record names the version and its server serves that object. \
         Aim: every device within poll interval + 5 s = {aim} s after the tag moved; bytes per update <= manifest + signature + changed component + one tier.\n\n\
         | update | version | devices | p50 s | max s | aim s | bytes per device (max) | bound | downloaded |\n|---|---|---:|---:|---:|---:|---:|---:|---|\n",
        r.devices, r.poll_interval_s
    );
    for p in &r.phases {
        let max = quantile(&p.seconds, 1.0);
        let bytes = p.bytes.iter().max().map(|b| format!("{b}")).unwrap_or_else(|| "-".into());
        md += &format!(
            "| {}{} | {} | {} | {:.2} | {:.2}{} | {aim} | {bytes} | {} | {} |\n",
            p.what,
            p.registry_back_s.map(|b| format!(" (after the restart: max {:.2} s)", max - b)).unwrap_or_default(),
            p.version,
            p.seconds.len(),
            quantile(&p.seconds, 0.5),
            max,
            if max > aim && p.registry_back_s.is_none() { " (over)" } else { "" },
            p.bound_bytes,
            if p.downloaded.is_empty() { "-".into() } else { p.downloaded.join(", ") }
        );
    }
    md += &format!(
        "\nThe rejection row counts from the tag's move to the device marking the version bad (it fetched only the manifest and signature: \
         its code was already in the store). In the outage row the registry was killed 0.3 s after the tag moved and restarted {} s later; \
         its times count from the tag's move, and the aim applies from the restart. Bytes are what each device's agent received from the registry for the update (OCI manifest, \
         signed manifest, signature, files), from its `sync/` state; the bound is the signed manifest + 400 bytes for the signature + 2 KiB \
         for the OCI manifest + the component and tier the device did not already hold.\n",
        r.outage_s
    );
    md
}
