//! One file per subcommand.

mod build;
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
    Build(build::BuildCommand),
    Run(run::RunCommand),
    Native(native::NativeCommand),
    Keygen(keygen::KeygenCommand),
    Sign(sign::SignCommand),
    Verify(verify::VerifyCommand),
    Inspect(inspect::InspectCommand),
    Push(push::PushCommand),
}

impl Command {
    pub fn execute(self, ui: &Ui) -> anyhow::Result<std::process::ExitCode> {
        let done = |r: anyhow::Result<()>| r.map(|()| std::process::ExitCode::SUCCESS);
        match self {
            Command::Run(c) => c.execute(ui),
            Command::New(c) => done(c.execute(ui)),
            Command::Build(c) => done(c.execute(ui)),
            Command::Native(c) => done(c.execute(ui)),
            Command::Keygen(c) => done(c.execute(ui)),
            Command::Sign(c) => done(c.execute(ui)),
            Command::Verify(c) => done(c.execute(ui)),
            Command::Inspect(c) => done(c.execute(ui)),
            Command::Push(c) => done(c.execute(ui)),
        }
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

/// Read a signing key from `SPEC`: a file path, or `env:VAR` for a variable
/// holding the key file's text (CI secrets).
pub fn load_secret_key(spec: &str) -> anyhow::Result<limes_bundle::keys::SecretKey> {
    use anyhow::Context;
    if let Some(var) = spec.strip_prefix("env:") {
        let text = std::env::var(var)
            .with_context(|| format!("signing key variable {var} is not set (or not UTF-8)"))?;
        // Cargo, rustc and every build script run as children of this
        // process: they must not inherit the secret. Key loading happens
        // before any thread is spawned, so changing the environment is sound.
        std::env::remove_var(var);
        Ok(limes_bundle::keys::SecretKey::from_text(&text, &format!("${var}"))?)
    } else {
        Ok(limes_bundle::keys::SecretKey::from_file(std::path::Path::new(spec))?)
    }
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
