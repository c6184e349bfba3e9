use super::{CargoFlags, CrateArgs};
use crate::ui::Ui;
use anyhow::Context;
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode};
use std::time::{Duration, Instant};

/// Serve the function on localhost and rebuild it on every save.
///
/// Builds the crate for this host's best CPU tier (no microVM image), signs
/// it with a development key that only this development server trusts
/// (kept in target/limes/dev-server/, never your release key), installs it
/// into a store of its own there, and serves it with the device's own
/// `limes serve` (the `limes` binary next to limes-pack, or on PATH), which
/// prints each route. Every change under the crate (outside target/)
/// rebuilds it; a good build is switched to while requests in flight finish
/// on the old one, a failed build is reported and the last good one keeps
/// serving. The function's stdout and stderr appear in the console, with
/// one access-log line per request. Ctrl-C stops it.
///
/// From a workspace root without a package of its own (or with
/// --workspace), every function crate of the workspace is built and served
/// together; a save rebuilds the crates whose directory changed (all of
/// them when the change is elsewhere, such as a library they share).
#[derive(Args)]
#[command(
    after_help = "Examples:\n  limes-pack dev\n  limes-pack dev hello --listen 127.0.0.1:3000\n  limes-pack dev --workspace\n  curl -d world http://127.0.0.1:3000/functions/hello"
)]
pub struct DevCommand {
    #[command(flatten)]
    krate: CrateArgs,
    /// Serve every function crate of the workspace (the default at a
    /// workspace root that has no package of its own).
    #[arg(long, conflicts_with = "package")]
    workspace: bool,
    #[command(flatten)]
    cargo: CargoFlags,
    /// Address to serve on.
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: std::net::SocketAddr,
    /// The `limes` binary that serves [default: next to limes-pack, else on PATH].
    #[arg(long, value_name = "PATH")]
    limes: Option<PathBuf>,
}

/// The development server's files: a store, a trust directory holding only
/// the development key's public half, and that key.
struct DevHome {
    store: PathBuf,
    trust: PathBuf,
    key: PathBuf,
    public: PathBuf,
}

impl DevHome {
    fn open(dir: &Path) -> anyhow::Result<DevHome> {
        let home = DevHome { store: dir.join("store"), trust: dir.join("trust"), key: dir.join("dev.key"), public: dir.join("trust").join("dev.pub") };
        std::fs::create_dir_all(&home.trust).with_context(|| format!("creating {}", home.trust.display()))?;
        if !home.key.is_file() || !home.public.is_file() {
            let sk = limes_bundle::keys::SecretKey::generate()?;
            super::keygen::write_private(&home.key, sk.to_text().as_bytes())?;
            std::fs::write(&home.public, sk.public().to_text()).with_context(|| format!("writing {}", home.public.display()))?;
        }
        Ok(home)
    }

    fn limes(&self, exe: &Path) -> Command {
        let mut c = Command::new(exe);
        c.arg("--store").arg(&self.store).arg("--trust-dir").arg(&self.trust);
        c
    }
}

/// Have `limes serve` read the store now (SIGHUP) instead of at its next
/// poll: a save's new build answers up to a poll interval sooner.
fn reload(server: &Child) {
    if let Ok(pid) = libc::pid_t::try_from(server.id()) {
        // SAFETY: kill takes plain integers; `server` is our child and not
        // reaped while we hold it, so the pid cannot name another process.
        unsafe { libc::kill(pid, libc::SIGHUP) };
    }
}

/// The `limes` binary: next to this executable (both are installed
/// together), else the first on PATH.
fn find_limes(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        anyhow::ensure!(p.is_file(), "--limes {}: no such file", p.display());
        return Ok(p.to_path_buf());
    }
    let beside = std::env::current_exe()?.parent().map(|d| d.join("limes"));
    if let Some(p) = beside.filter(|p| p.is_file()) {
        return Ok(p);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("limes"))
        .find(|p| p.is_file())
        .context("`limes-pack dev` serves with the device loader `limes`, which is neither next to limes-pack nor on PATH: install it (`cargo install --locked --path loader`) or pass --limes PATH")
}

impl DevCommand {
    pub fn execute(self, ui: &Ui) -> anyhow::Result<ExitCode> {
        let projects = self.discover(ui)?;
        let workspace = projects.len() > 1 || self.workspace;
        let first = &projects[0];
        let (label, root) =
            if workspace { ("workspace".to_string(), first.workspace_root.clone()) } else { (first.function_name.clone(), first.package_dir.clone()) };
        let home = DevHome::open(&first.target_dir.join("limes").join("dev-server").join(&label))?;
        let limes = find_limes(self.limes.as_deref())?;
        let target = first.target_dir.clone();
        let say = |text: String| {
            if !ui.quiet && !ui.json {
                eprintln!("limes-pack dev: {text}");
            }
        };
        let names = projects.iter().map(|p| p.function_name.as_str()).collect::<Vec<_>>().join(", ");
        say(format!("building {names} (first build of a crate compiles its dependencies: a minute or more)"));
        for p in &projects {
            let t = Instant::now();
            match self.build_and_install(ui, p, &home, &limes) {
                Ok(()) => say(format!("built and installed {} in {} ms", p.function_name, t.elapsed().as_millis())),
                Err(e) => say(format!("{}: build failed, not served yet; fix and save: {e:#}", p.function_name)),
            }
        }
        let mut server = self.serve(&home, &limes)?;
        let mut seen = super::run::newest_change(&root, &target);
        let mut seen_each: Vec<_> = projects.iter().map(|p| super::run::newest_change(&p.package_dir, &target)).collect();
        say(format!("watching {} for changes (Ctrl-C stops)", root.display()));
        loop {
            std::thread::sleep(Duration::from_millis(100));
            if let Some(status) = server.try_wait()? {
                anyhow::bail!("limes serve ended ({status})");
            }
            let now = super::run::newest_change(&root, &target);
            if now == seen {
                continue;
            }
            seen = now;
            // The crates whose own directory changed; all of them when the
            // change is elsewhere (a shared library, the workspace manifest).
            let now_each: Vec<_> = projects.iter().map(|p| super::run::newest_change(&p.package_dir, &target)).collect();
            let changed: Vec<usize> = (0..projects.len()).filter(|&i| now_each[i] != seen_each[i]).collect();
            seen_each = now_each;
            let changed = if changed.is_empty() { (0..projects.len()).collect() } else { changed };
            say("change detected, rebuilding".into());
            for i in changed {
                let name = &projects[i].function_name;
                let t = Instant::now();
                let fresh = limes_build::Project::discover(&projects[i].manifest_path, None, &self.cargo.options(ui.quiet).global_flags());
                match fresh.map_err(anyhow::Error::from).and_then(|p| self.build_and_install(ui, &p, &home, &limes)) {
                    Ok(()) => {
                        reload(&server);
                        say(format!("rebuilt {name} in {} ms; serving the new build (requests in flight finish on the old one)", t.elapsed().as_millis()))
                    }
                    Err(e) => say(format!("{name}: build failed; still serving the last good build:\n{e:#}")),
                }
            }
        }
    }

    /// The crate, or every function crate of the workspace (--workspace, or
    /// a workspace root without a package of its own).
    fn discover(&self, ui: &Ui) -> anyhow::Result<Vec<limes_build::Project>> {
        let location = self.krate.location();
        let flags = self.cargo.options(ui.quiet).global_flags();
        if self.workspace {
            return Ok(limes_build::Project::discover_workspace(&location, &flags)?);
        }
        match limes_build::Project::discover(&location, self.krate.package.as_deref(), &flags) {
            Ok(p) => Ok(vec![p]),
            Err(limes_build::project::ProjectError::VirtualWorkspace(..)) => Ok(limes_build::Project::discover_workspace(&location, &flags)?),
            Err(e) => Err(e.into()),
        }
    }

    /// One build for this host's tier, signed with the development key, and
    /// installed into the development store (`limes serve` follows it).
    fn build_and_install(&self, ui: &Ui, project: &limes_build::Project, home: &DevHome, limes: &Path) -> anyhow::Result<()> {
        let tier = limes_bundle::profile::Tier::best_for_host().context("no CPU tier fits this host")?;
        let key_path = home.key.clone();
        let opts = limes_build::BuildOptions {
            signing_key: Some(limes_build::pipeline::SigningKey::Deferred(Box::new(move || limes_bundle::keys::SecretKey::from_file(&key_path)))),
            ..super::dev_build_options(&self.krate, &self.cargo, ui, tier.name, home.store.with_file_name("bundles"))
        };
        let out = limes_build::pipeline::build_project(project.clone(), &opts, ui)?;
        // The same version rebuilt has other content: a development store
        // replaces it (--force), and never refuses an older one.
        let o = home
            .limes(limes)
            .args(["--quiet", "install"])
            .arg(&out.bundle)
            .arg("--trust")
            .arg(&home.public)
            .args(["--force", "--allow-downgrade", "--keep", "0"])
            .output()
            .with_context(|| format!("running {}", limes.display()))?;
        anyhow::ensure!(o.status.success(), "installing the development build: {}", String::from_utf8_lossy(&o.stderr).trim());
        Ok(())
    }

    /// `limes serve` on the development store, its output on this console:
    /// the routes, an access-log line per request, the function's output.
    fn serve(&self, home: &DevHome, limes: &Path) -> anyhow::Result<Child> {
        use std::os::unix::process::CommandExt;
        let mut c = home.limes(limes);
        c.args(["serve", "--listen", &self.listen.to_string(), "--workers", "2", "--access-log"])
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn,limes::serve=info,limes::access=info".into()));
        // SAFETY: prctl(PR_SET_PDEATHSIG) only sets a flag of the child
        // being started; it allocates nothing and takes no lock, so it is
        // safe between fork and exec.
        unsafe {
            c.pre_exec(|| {
                // The server ends with us, whatever ends us.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        c.spawn().with_context(|| format!("starting {} serve", limes.display()))
    }
}
