//! Running cargo: the component build (`wasm32-wasip2`) and the native build
//! of the same function (the frame-protocol executable for microVM images).

use crate::project::Project;
use cargo_metadata::Message;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub const WASM_TARGET: &str = "wasm32-wasip2";
/// Code generation settings of every guest component build.
pub const GUEST_RUSTFLAGS: &str = "target.wasm32-wasip2.rustflags=[\"-Ctarget-feature=+simd128\"]";

/// Cargo flags forwarded from the command line.
#[derive(Debug, Clone, Default)]
pub struct CargoOptions {
    pub locked: bool,
    pub offline: bool,
    pub frozen: bool,
    pub features: Vec<String>,
    pub all_features: bool,
    pub no_default_features: bool,
    /// Cargo profile; `release` when unset.
    pub profile: Option<String>,
    /// Suppress cargo's own progress output (errors still show).
    pub quiet: bool,
}

impl CargoOptions {
    /// Flags understood by every cargo subcommand we run.
    pub fn global_flags(&self) -> Vec<String> {
        let mut v = Vec::new();
        if self.locked {
            v.push("--locked".into());
        }
        if self.offline {
            v.push("--offline".into());
        }
        if self.frozen {
            v.push("--frozen".into());
        }
        v
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("the Rust target `{target}` is not installed for the toolchain at {sysroot}; install it with:\n\n    rustup target add {target}\n")]
    MissingTarget { target: String, sysroot: String },
    #[error("could not run `{cmd}`")]
    Spawn { cmd: String, source: std::io::Error },
    #[error("`cargo build` of `{package}` for {target} failed (cargo's errors are above)")]
    CargoFailed { package: String, target: String },
    #[error("cargo built `{package}` for {target} but produced no {what}; is the crate a cdylib?")]
    NoArtifact { package: String, target: String, what: &'static str },
    #[error("{path}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// The cargo that runs us (`$CARGO` under cargo), else the one on PATH.
pub(crate) fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Fail early, with the exact fix, when `target` lacks its prebuilt library
/// (`core`: no-std targets have no `std`).
pub fn ensure_target_installed(target: &str, cwd: &Path) -> Result<(), CompileError> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(&rustc)
        .args(["--print", "target-libdir", "--target", target])
        .current_dir(cwd)
        .output()
        .map_err(|source| CompileError::Spawn { cmd: format!("{rustc} --print target-libdir"), source })?;
    let libdir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let present = out.status.success()
        && std::fs::read_dir(&libdir).map(|d| d.filter_map(|e| e.ok()).any(|e| e.file_name().to_string_lossy().starts_with("libcore-"))).unwrap_or(false);
    if present {
        return Ok(());
    }
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .current_dir(cwd)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    Err(CompileError::MissingTarget { target: target.into(), sysroot })
}

fn profile_args(opts: &CargoOptions) -> Vec<String> {
    match opts.profile.as_deref() {
        None | Some("release") => vec!["--release".into()],
        Some(p) => vec!["--profile".into(), p.into()],
    }
}

/// Run `cmd` (a cargo build with `--message-format json-render-diagnostics`),
/// letting cargo's diagnostics through on stderr, and return the files of
/// the compiler artifact of `package_id` whose names satisfy `want`.
fn run_cargo_json(
    mut cmd: Command,
    package: &str,
    target: &str,
    package_manifest: &Path,
    want: impl Fn(&Path) -> bool,
) -> Result<Option<PathBuf>, CompileError> {
    let shown = format!("{cmd:?}");
    tracing::debug!(command = %shown, "running cargo");
    // Cargo's diagnostics pass through, except its warning that a native
    // build drops the `cdylib` crate type: the function crate must declare
    // cdylib for its component, so the user cannot act on it.
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        cmd.args(["--color", "always"]);
    }
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().map_err(|source| CompileError::Spawn { cmd: shown.clone(), source })?;
    let stderr = child.stderr.take().expect("piped");
    let relay = std::thread::spawn(move || {
        use std::io::{BufRead, Write};
        let mut out = std::io::stderr();
        let mut dropped = 0;
        let mut skip_blank = false;
        for line in BufReader::new(stderr).split(b'\n').map_while(Result::ok) {
            let text = String::from_utf8_lossy(&line);
            if text.contains("dropping unsupported crate type `cdylib`") {
                dropped += 1;
                skip_blank = true;
                continue;
            }
            // The blank line that ends that warning's block.
            if std::mem::take(&mut skip_blank) && text.trim().is_empty() {
                continue;
            }
            // Cargo's summary that counted only that warning.
            if dropped > 0 && text.contains("(lib) generated 1 warning") {
                dropped -= 1;
                continue;
            }
            let _ = out.write_all(&line);
            let _ = out.write_all(b"\n");
        }
    });
    let stdout = child.stdout.take().expect("piped");
    let mut found = None;
    for msg in Message::parse_stream(BufReader::new(stdout)).flatten() {
        if let Message::CompilerArtifact(a) = msg {
            if a.manifest_path.as_std_path() == package_manifest {
                if let Some(f) = a.filenames.iter().find(|f| want(f.as_std_path())) {
                    found = Some(f.clone().into_std_path_buf());
                }
            }
        }
    }
    let status = child.wait().map_err(|source| CompileError::Spawn { cmd: shown, source })?;
    let _ = relay.join();
    if !status.success() {
        return Err(CompileError::CargoFailed { package: package.into(), target: target.into() });
    }
    Ok(found)
}

/// Where the SDK a crate asks for by version is (see
/// [`crate::templates::sdk_patch`]), for every cargo command that builds it.
fn sdk_patch_args(project: &Project) -> Vec<String> {
    project.sdk_patch.iter().flat_map(|p| ["--config".to_string(), p.clone()]).collect()
}

/// Build the function's component; returns the path cargo wrote it to and
/// its bytes (read before another build sharing the directory can replace
/// it: see [`crate::shared`]).
pub fn build_component(project: &Project, opts: &CargoOptions) -> Result<(PathBuf, Vec<u8>), CompileError> {
    ensure_target_installed(WASM_TARGET, &project.package_dir)?;
    let io = |(path, source): (PathBuf, std::io::Error)| CompileError::Io { path, source };
    // In the home's shared target directory: take turns, and never take
    // another same-named crate's output for ours.
    let shared = match &project.shared_target {
        Some(dir) => {
            let lock = crate::shared::BuildLock::take(dir, opts.quiet).map_err(|e| io((dir.join(".build.lock"), e)))?;
            let owner = format!(
                "{}\nfeatures {:?} {:?} all {} no-default {}",
                project.manifest_path.display(),
                project.meta.features,
                opts.features,
                opts.all_features,
                opts.no_default_features
            );
            let claim = crate::shared::Claim::new(dir, WASM_TARGET, profile_dir(opts), &project.lib_name, owner);
            claim.take().map_err(io)?;
            Some((lock, claim))
        }
        None => None,
    };
    let mut cmd = Command::new(cargo());
    cmd.current_dir(&project.package_dir)
        .arg("build")
        .arg("--lib")
        .args(["--target", WASM_TARGET])
        .arg("--manifest-path")
        .arg(&project.manifest_path)
        .args(["--message-format", "json-render-diagnostics"])
        .args(project.shared_target.iter().flat_map(|d| [std::ffi::OsStr::new("--target-dir"), d.as_os_str()]))
        // Wasm SIMD for the function and every dependency: Cranelift lowers
        // it on every tier (SSE2 upwards), and codecs and pixel loops
        // vectorize. Merged with the user's config; `RUSTFLAGS`, when set,
        // replaces it (cargo's precedence).
        .args(["--config", GUEST_RUSTFLAGS])
        .args(sdk_patch_args(project))
        .args(profile_args(opts))
        .args(opts.global_flags());
    if opts.quiet {
        cmd.arg("--quiet");
    }
    let mut features = project.meta.features.clone();
    features.extend(opts.features.iter().cloned());
    if !features.is_empty() {
        cmd.args(["--features", &features.join(",")]);
    }
    if opts.all_features {
        cmd.arg("--all-features");
    }
    if opts.no_default_features {
        cmd.arg("--no-default-features");
    }
    let path = run_cargo_json(cmd, &project.package_name, WASM_TARGET, &project.manifest_path, |p| p.extension().is_some_and(|e| e == "wasm"))?
        .ok_or(CompileError::NoArtifact { package: project.package_name.clone(), target: WASM_TARGET.into(), what: ".wasm component" })?;
    let bytes = std::fs::read(&path).map_err(|e| io((path.clone(), e)))?;
    if let Some((_lock, claim)) = &shared {
        claim.record().map_err(io)?;
    }
    Ok((path, bytes))
}

/// Cargo's output directory for the build's profile.
fn profile_dir(opts: &CargoOptions) -> &str {
    match opts.profile.as_deref() {
        None | Some("release") | Some("bench") => "release",
        Some("dev") | Some("test") => "debug",
        Some(p) => p,
    }
}

/// Where native shim builds put their output: apart from the function's
/// workspace target directory (see [`build_native`]).
pub fn native_target_dir(project: &Project) -> PathBuf {
    project.target_dir.join("limes").join("native-target")
}

/// Build the function natively: a small generated crate whose `main` serves
/// the frame protocol with the function's handler. `target` of `None` means
/// the host. Returns the executable's path.
pub fn build_native(project: &Project, target: Option<&str>, opts: &CargoOptions) -> Result<PathBuf, CompileError> {
    if let Some(t) = target {
        ensure_target_installed(t, &project.package_dir)?;
    }
    let mut cmd = Command::new(cargo());
    if let Some(t) = target {
        cmd.envs(cross_toolchain(t, |v| std::env::var_os(v).is_some(), crate::doctor::on_path));
    }
    build_native_with(project, target, opts, cmd, &native_target_dir(project), &[])
}

/// The C cross compiler and linker for a static Linux `target` of another
/// architecture (`aarch64-unknown-linux-musl` from x86_64), as cargo
/// environment settings: Debian's `ARCH-linux-gnu-gcc` (gcc-aarch64-linux-gnu)
/// when it is installed and nothing is configured. Rust's musl targets link
/// their own libc and start files, so a glibc cross gcc links a static
/// executable; without a setting cargo would run the host's `cc`, which
/// cannot link aarch64 objects. A variable already set in the environment
/// is left alone (another cross toolchain: set `CARGO_TARGET_..._LINKER`,
/// which cargo prefers to any config file).
pub fn cross_toolchain(target: &str, is_set: impl Fn(&str) -> bool, on_path: impl Fn(&str) -> bool) -> Vec<(String, String)> {
    let arch = target.split('-').next().unwrap_or_default();
    if !target.ends_with("-linux-musl") || arch == std::env::consts::ARCH {
        return Vec::new();
    }
    let gcc = format!("{arch}-linux-gnu-gcc");
    if !on_path(&gcc) {
        return Vec::new();
    }
    let t = target.replace('-', "_");
    let linker = format!("CARGO_TARGET_{}_LINKER", t.to_uppercase());
    [(linker, gcc.clone()), (format!("CC_{t}"), gcc), (format!("AR_{t}"), format!("{arch}-linux-gnu-ar"))].into_iter().filter(|(k, _)| !is_set(k)).collect()
}

/// [`build_native`] with a given cargo command (another toolchain), target
/// directory and extra arguments (the Hermit build: `-Zbuild-std`).
pub fn build_native_with(
    project: &Project,
    target: Option<&str>,
    opts: &CargoOptions,
    mut cmd: Command,
    target_dir: &Path,
    extra: &[&str],
) -> Result<PathBuf, CompileError> {
    let shim_dir = project.target_dir.join("limes").join("native-shim").join(&project.package_name);
    let write = |name: &str, text: &str| -> Result<(), CompileError> {
        let p = shim_dir.join(name);
        // Rewrite only on change, so cargo's fingerprints stay valid.
        if std::fs::read_to_string(&p).ok().as_deref() != Some(text) {
            std::fs::create_dir_all(&shim_dir)
                .and_then(|_| std::fs::write(&p, text))
                .map_err(|source| CompileError::Spawn { cmd: format!("write {}", p.display()), source })?;
        }
        Ok(())
    };
    let bin = format!("{}-native", project.function_name);
    write(
        "Cargo.toml",
        &format!(
            "# Generated by limes-pack: the native frame-protocol executable of `{pkg}`.\n\
             [package]\nname = \"limes-native-{pkg}\"\nversion = \"0.0.0\"\nedition = \"2021\"\npublish = false\n\n\
             [[bin]]\nname = \"{bin}\"\npath = \"main.rs\"\n\n\
             [dependencies]\nfunction = {{ package = \"{pkg}\", path = {dir:?} }}\n\n\
             [workspace]\n\n\
             [profile.release]\nopt-level = 3\ncodegen-units = 1\nlto = \"thin\"\ndebug = false\nstrip = \"debuginfo\"\npanic = \"unwind\"\n",
            pkg = project.package_name,
            dir = project.package_dir.display().to_string(),
        ),
    )?;
    write(
        "main.rs",
        "// Generated by limes-pack.\n\
         // The function's memory limit holds natively too (LIMES_MEMORY_LIMIT).\n\
         #[cfg(any(target_os = \"linux\", target_os = \"hermit\"))]\n\
         #[global_allocator]\n\
         static ALLOC: function::__limes_native::LimitedAlloc = function::__limes_native::LimitedAlloc;\n\n\
         fn main() {\n    function::__limes_native_main()\n}\n",
    )?;
    // Same dependency versions as the function's own workspace.
    let lock = project.workspace_root.join("Cargo.lock");
    if let Ok(text) = std::fs::read_to_string(&lock) {
        if !shim_dir.join("Cargo.lock").exists() {
            write("Cargo.lock", &text)?;
        }
    }
    let manifest = shim_dir.join("Cargo.toml");
    // The shim is another workspace: it resolves the function and its SDK
    // with another profile and feature set, yet cargo gives some of those
    // units the same file names as the function's own workspace does. In a
    // shared target directory one build then overwrites the other's rlibs
    // and fingerprints (two `limes_sdk` meet: E0308). So it gets its own.
    // Run from the function's own directory, as its Wasm build is: rustup
    // picks the toolchain (rust-toolchain.toml) and cargo its config from
    // there. From the shim's directory, inside a target directory that may
    // lie outside the project (CARGO_TARGET_DIR), rustup took the default
    // toolchain instead and met the function's rlib built by the pinned one
    // (E0514), and the project's `.cargo/config.toml` was not read.
    cmd.current_dir(&project.package_dir)
        .arg("build")
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(target_dir)
        .args(sdk_patch_args(project))
        .args(["--message-format", "json-render-diagnostics"])
        .args(profile_args(opts))
        .args(extra);
    if opts.offline {
        cmd.arg("--offline");
    }
    if opts.quiet {
        cmd.arg("--quiet");
    }
    if let Some(t) = target {
        cmd.args(["--target", t]);
    }
    let target_name = target.unwrap_or("host").to_string();
    run_cargo_json(cmd, &project.package_name, &target_name, &manifest, |p| p.file_name().is_some_and(|n| n.to_string_lossy() == bin))?
        .ok_or(CompileError::NoArtifact { package: project.package_name.clone(), target: target_name, what: "native executable" })
}

#[cfg(test)]
mod tests {
    use super::cross_toolchain;

    #[test]
    fn cross_toolchain_for_aarch64_musl_only_when_installed_and_unset() {
        if std::env::consts::ARCH != "x86_64" {
            return;
        }
        let all = cross_toolchain("aarch64-unknown-linux-musl", |_| false, |c| c == "aarch64-linux-gnu-gcc");
        assert_eq!(
            all,
            [
                ("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER".to_string(), "aarch64-linux-gnu-gcc".to_string()),
                ("CC_aarch64_unknown_linux_musl".into(), "aarch64-linux-gnu-gcc".into()),
                ("AR_aarch64_unknown_linux_musl".into(), "aarch64-linux-gnu-ar".into()),
            ]
        );
        let some = cross_toolchain("aarch64-unknown-linux-musl", |v| v.starts_with("CARGO_TARGET_"), |_| true);
        assert_eq!(some.len(), 2, "a linker set by the user is kept: {some:?}");
        assert!(cross_toolchain("aarch64-unknown-linux-musl", |_| false, |_| false).is_empty(), "no cross gcc, nothing set");
        assert!(cross_toolchain("x86_64-unknown-linux-musl", |_| false, |_| true).is_empty(), "the host's own architecture");
        assert!(cross_toolchain("aarch64-unknown-linux-gnu", |_| false, |_| true).is_empty(), "glibc targets need a sysroot");
    }
}
