//! One file per subcommand.

mod build;
mod dev;
mod doctor;
mod inspect;
mod keygen;
mod native;
mod new;
mod push;
mod run;
mod sign;
mod verify;

use crate::ui::Ui;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum Command {
    New(new::NewCommand),
    // `--version` here is a prebuilt component's version (see PrebuiltArgs);
    // `limes-pack --version` still prints ours.
    #[command(disable_version_flag = true)]
    Build(build::BuildCommand),
    Run(run::RunCommand),
    Dev(dev::DevCommand),
    Native(native::NativeCommand),
    Keygen(keygen::KeygenCommand),
    Sign(sign::SignCommand),
    Verify(verify::VerifyCommand),
    Inspect(inspect::InspectCommand),
    Push(push::PushCommand),
    Doctor(doctor::DoctorCommand),
}

impl Command {
    pub fn execute(self, ui: &Ui) -> anyhow::Result<std::process::ExitCode> {
        let done = |r: anyhow::Result<()>| r.map(|()| std::process::ExitCode::SUCCESS);
        match self {
            Command::Run(c) => c.execute(ui),
            Command::Dev(c) => c.execute(ui),
            Command::New(c) => done(c.execute(ui)),
            Command::Build(c) => done(c.execute(ui)),
            Command::Native(c) => done(c.execute(ui)),
            Command::Keygen(c) => done(c.execute(ui)),
            Command::Sign(c) => done(c.execute(ui)),
            Command::Verify(c) => done(c.execute(ui)),
            Command::Inspect(c) => done(c.execute(ui)),
            Command::Push(c) => done(c.execute(ui)),
            Command::Doctor(c) => c.execute(ui),
        }
    }
}

/// A development build's options (`run`, `dev`): this host's best tier
/// only, no microVM image, unsigned, cargo's own progress unless the output
/// is for a script.
pub fn dev_build_options(krate: &CrateArgs, cargo: &CargoFlags, ui: &Ui, tier: &str, out_dir: std::path::PathBuf) -> limes_build::BuildOptions {
    limes_build::BuildOptions {
        path: krate.location(),
        package: krate.package.clone(),
        cargo: cargo.options(ui.quiet || ui.json),
        tiers: vec![tier.to_string()],
        out_dir: Some(out_dir),
        ..Default::default()
    }
}

/// Say what a bundle error means for `bundle`: a verification failure gets
/// `what` ("failed verification"); a file that cannot be read is reported
/// as that alone (the error names the path).
pub fn bundle_context(e: limes_bundle::BundleError, bundle: &std::path::Path, what: &str) -> anyhow::Error {
    if e.is_verification() {
        anyhow::Error::from(e).context(format!("{} {what}", bundle.display()))
    } else {
        e.into()
    }
}

/// Read a signing key from `SPEC` now (`limes-pack sign`, which runs no
/// build): a file path, or `env:VAR` for a variable holding the key file's
/// text (CI secrets). The process stops being dumpable first.
pub fn load_secret_key(spec: &str) -> anyhow::Result<limes_bundle::keys::SecretKey> {
    limes_build::isolate::not_dumpable()?;
    let limes_build::pipeline::SigningKey::Deferred(load) = deferred_secret_key(spec)? else { unreachable!("deferred") };
    Ok(load()?)
}

/// A build's `--sign` key, read only in its signing phase, after every
/// process the build started has ended (see `limes_build::isolate`): a file
/// is opened then; `env:VAR`'s text leaves this process's memory and
/// environment at once (into a pipe, read back then), so neither a child's
/// inherited environment nor `/proc/PID/environ` or `/proc/PID/mem` of this
/// process holds it while cargo and build scripts run.
pub fn deferred_secret_key(spec: &str) -> anyhow::Result<limes_build::pipeline::SigningKey> {
    use limes_bundle::keys::SecretKey;
    use limes_bundle::BundleError;
    if let Some(var) = spec.strip_prefix("env:") {
        let pipe = std::sync::Mutex::new(Some(stash_env(var)?));
        let source = format!("${var}");
        return Ok(limes_build::pipeline::SigningKey::Deferred(Box::new(move || {
            use std::io::Read;
            let fd = pipe.lock().unwrap().take().ok_or_else(|| BundleError::Key(format!("{source} was already read")))?;
            let mut text = String::new();
            std::fs::File::from(fd).read_to_string(&mut text).map_err(|e| BundleError::Key(format!("{source}: {e}")))?;
            let key = SecretKey::from_text(&text, &source);
            // The key now lives in `key` alone.
            // SAFETY: zeros are valid UTF-8, and `text` is not used again.
            zero(unsafe { text.as_bytes_mut() });
            key
        })));
    }
    let path = std::path::PathBuf::from(spec);
    Ok(limes_build::pipeline::SigningKey::Deferred(Box::new(move || SecretKey::from_file(&path))))
}

/// Overwrite `b` with zeros in a way the optimiser keeps.
fn zero(b: &mut [u8]) {
    for x in b.iter_mut() {
        // SAFETY: `x` is a valid, aligned, exclusive reference.
        unsafe { std::ptr::write_volatile(x, 0) };
    }
}

/// Move the value of `var` out of the process: into a pipe that only this
/// process holds (close-on-exec), then overwrite the value where the kernel
/// shows it (`/proc/PID/environ` reads the initial environment block) and
/// remove the variable, so no child inherits it. Call before any thread or
/// child is started.
fn stash_env(var: &str) -> anyhow::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // From here on this process holds the key (in the pipe): no process of
    // the same user may open `/proc/PID/fd/N`, memory or environment.
    limes_build::isolate::not_dumpable()?;
    let name = std::ffi::CString::new(var)?;
    // SAFETY: no other thread runs yet (called while parsing arguments), so
    // the environment is not changed under us; getenv returns a pointer into
    // the environment block or null.
    let value = unsafe { libc::getenv(name.as_ptr()) };
    if value.is_null() {
        anyhow::bail!("signing key variable {var} is not set");
    }
    // SAFETY: getenv's result is a NUL-terminated string that stays valid
    // until the environment changes, which nothing here does before the end
    // of this function.
    let bytes = unsafe { std::slice::from_raw_parts_mut(value.cast::<u8>(), libc::strlen(value)) };
    anyhow::ensure!(bytes.len() <= 16 << 10, "signing key variable {var} holds {} bytes; a minisign key is a few hundred", bytes.len());
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: both descriptors were just created and are owned here alone.
    let (read, write) = unsafe { (std::os::fd::OwnedFd::from_raw_fd(fds[0]), std::os::fd::OwnedFd::from_raw_fd(fds[1])) };
    // A pipe holds 64 KiB, more than the bound above: this never blocks.
    std::io::Write::write_all(&mut std::fs::File::from(write), bytes)?;
    zero(bytes);
    std::env::remove_var(var);
    Ok(read)
}

/// Cargo flags shared by `build` and `native`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct CargoFlags {
    /// Require Cargo.lock to be up to date (forwarded to cargo).
    #[arg(long)]
    pub locked: bool,
    /// Run without accessing the network (forwarded to cargo).
    #[arg(long)]
    pub offline: bool,
    /// Both --locked and --offline (forwarded to cargo).
    #[arg(long)]
    pub frozen: bool,
    /// Space or comma separated features to enable (forwarded to cargo).
    #[arg(long, short = 'F')]
    pub features: Vec<String>,
    /// Enable all features (forwarded to cargo).
    #[arg(long)]
    pub all_features: bool,
    /// Do not enable the default feature (forwarded to cargo).
    #[arg(long)]
    pub no_default_features: bool,
    /// Cargo profile for the function build [default: release].
    #[arg(long, value_name = "PROFILE")]
    pub profile: Option<String>,
}

impl CargoFlags {
    pub fn options(&self, quiet: bool) -> limes_build::CargoOptions {
        limes_build::CargoOptions {
            locked: self.locked,
            offline: self.offline,
            frozen: self.frozen,
            features: self.features.iter().flat_map(|f| f.split([' ', ','])).filter(|s| !s.is_empty()).map(String::from).collect(),
            all_features: self.all_features,
            no_default_features: self.no_default_features,
            profile: self.profile.clone(),
            quiet,
        }
    }
}

/// Where the crate is: a positional path or --manifest-path, plus --package.
#[derive(clap::Args, Debug, Clone)]
pub struct CrateArgs {
    /// The function crate's directory (default: the current directory).
    #[arg(value_name = "PATH", conflicts_with = "manifest_path")]
    pub path: Option<std::path::PathBuf>,
    /// Path to the function crate's Cargo.toml.
    #[arg(long, value_name = "PATH")]
    pub manifest_path: Option<std::path::PathBuf>,
    /// Package to build, when PATH is a workspace.
    #[arg(long, short, value_name = "NAME")]
    pub package: Option<String>,
}

impl CrateArgs {
    pub fn location(&self) -> std::path::PathBuf {
        self.manifest_path.clone().or_else(|| self.path.clone()).unwrap_or_else(|| ".".into())
    }
}
