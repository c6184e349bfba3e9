//! The Hermit unikernel image of a function: the function's native
//! frame-protocol runner built for `x86_64-unknown-hermit` and linked with
//! the Hermit kernel into one ELF, plus limes' own boot loader
//! (`hermit-loader/`) that a hypervisor boots by PVH with that ELF as its
//! module.
//!
//! Owns: the pinned toolchain and kernel, building the kernel once per
//! toolchain (cached under [`crate::templates::sdk_home`]`/hermit`), building
//! the loader once per source digest, and the function's image (cargo's
//! own caching makes an unchanged rebuild cheap). Must not touch: how the
//! image is booted (the `limes` loader) or the manifest format.

use crate::compile::{self, CargoOptions, CompileError};
use crate::project::Project;
use sha2::Digest;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The toolchain the kernel 0.11.0 pins (its `rust-toolchain.toml`); the
/// function is built with it too, as `x86_64-unknown-hermit` has no
/// prebuilt standard library and needs `-Zbuild-std`.
pub const TOOLCHAIN: &str = "nightly-2025-03-15";
pub const TARGET: &str = "x86_64-unknown-hermit";
/// The last release that is the kernel's full source on crates.io.
pub const KERNEL_CRATE: &str = "hermit-kernel";
pub const KERNEL_VERSION: &str = "0.11.0";
/// Without `pci` and `acpi`: QEMU `-M microvm` and Firecracker have
/// neither, and with `acpi` the kernel refuses to start without it.
pub const KERNEL_FEATURES: &[&str] = &["fsgsbase"];
/// Kernel arguments before limes' own (`env=...` and `--`): the CPU
/// frequency, which the kernel cannot measure without a PIT.
pub const BOOT_ARGS: &str = "-freq 2600";
/// Library features stable on the default toolchain but not yet on the
/// pinned nightly, which crates a function depends on already use (image
/// 0.25.10: `as_chunks`, stable since 1.88). The nightly has them as
/// unstable features; every crate of the Hermit build gets them enabled.
pub const LATER_STABLE_FEATURES: &[&str] = &["slice_as_chunks"];
/// What installs the toolchain (also in `scripts/setup.sh`).
pub const INSTALL: &str = "rustup toolchain install nightly-2025-03-15 --profile minimal -c rust-src -c llvm-tools";

/// The loader's sources, embedded so `limes-pack` builds it with no
/// checkout of this repository.
const LOADER_FILES: &[(&str, &str)] = &[
    ("Cargo.toml", include_str!("../../../hermit-loader/Cargo.toml")),
    ("Cargo.lock", include_str!("../../../hermit-loader/Cargo.lock")),
    ("build.rs", include_str!("../../../hermit-loader/build.rs")),
    ("link.ld", include_str!("../../../hermit-loader/link.ld")),
    ("src/main.rs", include_str!("../../../hermit-loader/src/main.rs")),
    ("src/entry.s", include_str!("../../../hermit-loader/src/entry.s")),
];
/// The loader is ordinary `no_std` Rust for this tier-2 target (stable).
const LOADER_TARGET: &str = "x86_64-unknown-none";

#[derive(Debug, thiserror::Error)]
pub enum HermitError {
    #[error(
        "the Hermit toolchain {TOOLCHAIN} (with rust-src and llvm-tools) is not installed; install it with:\n\n    {INSTALL}\n\n\
         or build without the unikernel image: --no-microvm, or --image linux (stable Rust, x86_64-unknown-linux-musl). \
         `limes-pack doctor` lists everything a build needs"
    )]
    MissingToolchain,
    #[error(transparent)]
    Compile(#[from] CompileError),
    #[error(transparent)]
    Home(#[from] crate::templates::TemplateError),
    #[error("could not run `{cmd}`")]
    Spawn { cmd: String, source: std::io::Error },
    #[error("`{cmd}` failed: {stderr}")]
    Failed { cmd: String, stderr: String },
    #[error("{path}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not an ar archive of ELF objects: {reason}")]
    BadArchive { path: PathBuf, reason: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> HermitError + '_ {
    move |source| HermitError::Io { path: path.to_path_buf(), source }
}

/// The pinned nightly's tools.
#[derive(Debug, Clone)]
pub struct Toolchain {
    cargo: PathBuf,
    rustc: PathBuf,
    /// `llvm-tools`' binaries (llvm-nm, llvm-objcopy for the kernel's symbols).
    llvm_bin: PathBuf,
}

impl Toolchain {
    /// Find the pinned toolchain through rustup, with the components the
    /// builds need; a clear error with the fix when any is missing.
    pub fn find() -> Result<Toolchain, HermitError> {
        let which = |tool: &str| -> Option<PathBuf> {
            let o = Command::new("rustup").args(["which", "--toolchain", TOOLCHAIN, tool]).output().ok()?;
            o.status.success().then(|| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        };
        let (Some(cargo), Some(rustc)) = (which("cargo"), which("rustc")) else {
            return Err(HermitError::MissingToolchain);
        };
        let sysroot = rustc.parent().and_then(Path::parent).ok_or(HermitError::MissingToolchain)?.to_path_buf();
        let host = Command::new(&rustc)
            .arg("-vV")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).lines().find_map(|l| l.strip_prefix("host: ").map(str::to_string)))
            .ok_or(HermitError::MissingToolchain)?;
        let llvm_bin = sysroot.join("lib/rustlib").join(host).join("bin");
        let rust_src = sysroot.join("lib/rustlib/src/rust/library/std");
        if !llvm_bin.join("llvm-objcopy").is_file() || !llvm_bin.join("llvm-nm").is_file() || !rust_src.is_dir() {
            return Err(HermitError::MissingToolchain);
        }
        Ok(Toolchain { cargo, rustc, llvm_bin })
    }

    /// Cargo of this toolchain; the user's flags for their stable builds
    /// are not ours to pass on.
    fn cargo(&self) -> Command {
        let mut c = Command::new(&self.cargo);
        c.env("RUSTC", &self.rustc)
            .env("RUSTUP_TOOLCHAIN", TOOLCHAIN)
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("RUSTC_WRAPPER")
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("CARGO_BUILD_TARGET");
        c
    }

    fn llvm(&self, tool: &str) -> PathBuf {
        self.llvm_bin.join(tool)
    }
}

fn run(mut cmd: Command) -> Result<Vec<u8>, HermitError> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().map_err(|source| HermitError::Spawn { cmd: shown.clone(), source })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(30).collect();
        return Err(HermitError::Failed { cmd: shown, stderr: tail.into_iter().rev().collect::<Vec<_>>().join("\n") });
    }
    Ok(out.stdout)
}

/// [`run`] for a long build step whose output is captured: unless quiet,
/// say what it is and that it happens once, then a heartbeat every 15 s
/// until it ends, so a first build never waits in silence.
fn run_long(cmd: Command, what: &str, quiet: bool) -> Result<Vec<u8>, HermitError> {
    if quiet {
        return run(cmd);
    }
    eprintln!("limes-pack: building {what}: first time only, several minutes, once per toolchain (--no-microvm or --image linux skip it)");
    let started = std::time::Instant::now();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let what = what.to_string();
    let beat = std::thread::spawn(move || {
        while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(std::time::Duration::from_secs(15)) {
            eprintln!("limes-pack: still building {what} ({} s)", started.elapsed().as_secs());
        }
    });
    let r = run(cmd);
    drop(tx);
    let _ = beat.join();
    r
}

/// Write `bytes` to `path` by temp file and rename.
fn publish(path: &Path, bytes: &[u8]) -> Result<(), HermitError> {
    crate::aot::write_atomic(path, bytes).map_err(io(path))
}

/// The kernel as a static library for linking functions against, built
/// once per toolchain and feature set: `HOME/hermit/kernel-.../libhermit.a`.
/// Returns the archive's path.
pub fn kernel(home: &Path, tc: &Toolchain, quiet: bool) -> Result<PathBuf, HermitError> {
    let dir = home.join("hermit").join(format!("kernel-{KERNEL_VERSION}-{TOOLCHAIN}-{}", KERNEL_FEATURES.join("+")));
    let lib = dir.join("libhermit.a");
    if lib.is_file() {
        return Ok(lib);
    }
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let source = kernel_source(home, quiet)?;
    let target = home.join("hermit").join("kernel-target");
    let mut cmd = tc.cargo();
    cmd.current_dir(&source)
        .args(["rustc", "--locked", "--release", "--crate-type=staticlib", "--target", LOADER_TARGET])
        .args(["-Zbuild-std=core,alloc", "-Zbuild-std-features=compiler-builtins-mem", "--no-default-features"])
        .args(["--features", &KERNEL_FEATURES.join(",")])
        .arg("--manifest-path")
        .arg(source.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target)
        // Only errors on the console: the serial port carries our frames,
        // and every line printed under emulation costs boot time.
        .env("HERMIT_LOG_LEVEL_FILTER", "error")
        .env("NO_COLOR", "1");
    if quiet {
        cmd.arg("--quiet");
    }
    run_long(cmd, "the Hermit kernel", quiet)?;
    let built = target.join(LOADER_TARGET).join("release").join("libhermit.a");
    // Post-processed in a private copy: a concurrent build never links a
    // half-renamed archive.
    let work = tempfile::Builder::new().prefix(".kernel-").tempdir_in(&dir).map_err(io(&dir))?;
    let tmp = work.path().join("libhermit.a");
    std::fs::copy(&built, &tmp).map_err(io(&built))?;
    export_only_syscalls(tc, &tmp)?;
    let mut bytes = std::fs::read(&tmp).map_err(io(&tmp))?;
    set_standalone_osabi(&mut bytes).map_err(|reason| HermitError::BadArchive { path: tmp.clone(), reason })?;
    publish(&lib, &bytes)?;
    Ok(lib)
}

/// The kernel crate's source, fetched by cargo from crates.io (checksum
/// verified against the index) through a throwaway manifest.
fn kernel_source(home: &Path, quiet: bool) -> Result<PathBuf, HermitError> {
    let probe = home.join("hermit").join("fetch");
    std::fs::create_dir_all(probe.join("src")).map_err(io(&probe))?;
    let manifest = format!(
        "# Generated by limes-pack: makes cargo fetch the Hermit kernel's source.\n\
         [package]\nname = \"limes-hermit-fetch\"\nversion = \"0.0.0\"\nedition = \"2021\"\npublish = false\n\n\
         [dependencies]\n{KERNEL_CRATE} = {{ version = \"={KERNEL_VERSION}\", default-features = false }}\n\n[workspace]\n"
    );
    publish(&probe.join("Cargo.toml"), manifest.as_bytes())?;
    publish(&probe.join("src/lib.rs"), b"")?;
    let mut cmd = Command::new(compile::cargo());
    cmd.current_dir(&probe).args(["metadata", "--format-version", "1", "--manifest-path"]).arg(probe.join("Cargo.toml"));
    if quiet {
        cmd.arg("--quiet");
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&run(cmd)?).map_err(|e| HermitError::Failed { cmd: "cargo metadata".into(), stderr: e.to_string() })?;
    meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == KERNEL_CRATE && p["version"] == KERNEL_VERSION)
        .and_then(|p| p["manifest_path"].as_str())
        .and_then(|m| Path::new(m).parent().map(Path::to_path_buf))
        .ok_or_else(|| HermitError::Failed { cmd: "cargo metadata".into(), stderr: format!("{KERNEL_CRATE} {KERNEL_VERSION} is not in the resolved packages") })
}

/// Keep only the kernel's ABI (`sys_*`, `_start`, `runtime_entry` and a few
/// linker symbols) global and give every other symbol a `hermit` prefix, so
/// the kernel's own copies of core and alloc never meet the function's.
fn export_only_syscalls(tc: &Toolchain, lib: &Path) -> Result<(), HermitError> {
    let mut nm = Command::new(tc.llvm("llvm-nm"));
    nm.arg("--export-symbols").arg(lib);
    let symbols = String::from_utf8_lossy(&run(nm)?).to_string();
    let keep = ["_start", "__bss_start", "mcount", "runtime_entry"];
    let mut renames = String::new();
    for s in symbols.lines().map(str::trim).filter(|s| !s.is_empty()) {
        if keep.contains(&s) || s.starts_with("sys_") {
            continue;
        }
        if s.starts_with("_R") {
            renames += &format!("{s} {s}.hermit\n");
        } else if let Some(rest) = s.strip_prefix("_ZN") {
            renames += &format!("{s} _ZN6hermit{rest}\n");
        } else {
            renames += &format!("{s} hermit_{s}\n");
        }
    }
    let list = lib.with_extension("redefine-syms");
    std::fs::write(&list, renames).map_err(io(&list))?;
    let mut objcopy = Command::new(tc.llvm("llvm-objcopy"));
    objcopy.arg(format!("--redefine-syms={}", list.display())).arg(lib);
    let r = run(objcopy);
    let _ = std::fs::remove_file(&list);
    r.map(|_| ())
}

/// Mark every ELF member of an ar archive as standalone (OSABI 255), as
/// the Hermit linker setup expects of the kernel's objects.
pub fn set_standalone_osabi(ar: &mut [u8]) -> Result<(), String> {
    if !ar.starts_with(b"!<arch>\n") {
        return Err("no ar magic".into());
    }
    let mut at = 8;
    while at + 60 <= ar.len() {
        let size: usize =
            std::str::from_utf8(&ar[at + 48..at + 58]).ok().and_then(|s| s.trim().parse().ok()).ok_or_else(|| format!("bad member size at offset {at}"))?;
        let data = at + 60;
        if data + size > ar.len() {
            return Err(format!("member at offset {at} runs past the end"));
        }
        if size >= 8 && ar[data..data + 4] == *b"\x7fELF" {
            ar[data + 7] = 255;
        }
        at = data + size + (size & 1);
    }
    Ok(())
}

/// limes' boot loader (a 64-bit ELF with a PVH entry note, which QEMU and
/// Firecracker both boot), built once per source digest.
pub fn loader(home: &Path, quiet: bool) -> Result<PathBuf, HermitError> {
    let mut h = sha2::Sha256::new();
    for (p, text) in LOADER_FILES {
        h.update(p.as_bytes());
        h.update([0]);
        h.update(text.as_bytes());
        h.update([0]);
    }
    let digest = hex::encode(h.finalize());
    let dir = home.join("hermit").join(format!("loader-{}", &digest[..16]));
    let out = dir.join("limes-hermit-loader.elf");
    if out.is_file() {
        return Ok(out);
    }
    let src = dir.join("src-tree");
    std::fs::create_dir_all(&src).map_err(io(&src))?;
    for (p, text) in LOADER_FILES {
        let path = src.join(p);
        std::fs::create_dir_all(path.parent().expect("has a parent")).map_err(io(&path))?;
        publish(&path, text.as_bytes())?;
    }
    compile::ensure_target_installed(LOADER_TARGET, &src)?;
    let target = dir.join("target");
    let mut cmd = Command::new(compile::cargo());
    cmd.current_dir(&src)
        .args(["build", "--locked", "--release", "--target", LOADER_TARGET])
        .args(["--config", "build.rustflags=[\"-C\", \"relocation-model=static\"]"])
        .arg("--manifest-path")
        .arg(src.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    if quiet {
        cmd.arg("--quiet");
    }
    run_long(cmd, "limes' Hermit boot loader", quiet)?;
    let built = target.join(LOADER_TARGET).join("release").join("limes-hermit-loader");
    let bytes = std::fs::read(&built).map_err(io(&built))?;
    publish(&out, &bytes)?;
    Ok(out)
}

/// Firecracker `--config-file` JSON for the Hermit image: the loader is
/// booted by PVH, the protocol QEMU uses for it too; see docs/hermit.md for
/// what was and was not verified.
fn hermit_firecracker_config(memory_mib: u32) -> Vec<u8> {
    use limes_bundle::manifest::{HERMIT_IMAGE_PATH, HERMIT_LOADER_PATH};
    crate::microvm::config_json(HERMIT_LOADER_PATH, HERMIT_IMAGE_PATH, &format!("{BOOT_ARGS} --"), 1, memory_mib)
}

/// What a Hermit build produced.
#[derive(Debug, Clone)]
pub struct HermitImage {
    /// The unikernel: the function's runner linked with the kernel.
    pub image: Vec<u8>,
    pub loader: Vec<u8>,
    pub firecracker_config: Vec<u8>,
    pub memory_mib: u32,
}

/// A `RUSTC_WRAPPER` that enables [`LATER_STABLE_FEATURES`] for every crate
/// of a Hermit build except the standard library's own (which declares
/// them: enabling one twice is an error).
fn features_wrapper(home: &Path) -> Result<PathBuf, HermitError> {
    let attrs: String = LATER_STABLE_FEATURES.iter().map(|f| format!(" '-Zcrate-attr=feature({f})'")).collect();
    let script = r#"#!/bin/sh
# Generated by limes-pack: see LATER_STABLE_FEATURES in limes-build's hermit.rs.
for a in "$@"; do
  case "$a" in
    */lib/rustlib/src/rust/library/*) exec "$@" ;;
  esac
done
for a in "$@"; do
  case "$a" in
    x86_64-unknown-hermit|--target=x86_64-unknown-hermit) exec "$@" ATTRS ;;
  esac
done
exec "$@"
"#
    .replace(" ATTRS", &attrs);
    let path = home.join("hermit").join(format!("rustc-wrapper-{}.sh", &hex::encode(sha2::Sha256::digest(script.as_bytes()))[..12]));
    if !path.is_file() {
        std::fs::create_dir_all(path.parent().expect("has a parent")).map_err(io(&path))?;
        publish(&path, script.as_bytes())?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).map_err(io(&path))?;
    }
    Ok(path)
}

/// Where Hermit builds of every function share one target directory (the
/// standard library is built from source once, not per function).
pub fn target_dir(home: &Path) -> PathBuf {
    home.join("hermit").join("target")
}

/// Build `project`'s Hermit image (kernel and loader from the cache).
pub fn build_image(project: &Project, opts: &CargoOptions) -> Result<HermitImage, HermitError> {
    let tc = Toolchain::find()?;
    let home = crate::templates::sdk_home()?;
    // Everything below shares HOME/hermit (kernel, loader, one target
    // directory for every function): two builds at once (two CI jobs, two
    // checkouts) would overwrite each other's outputs, so they take turns.
    let hermit_dir = home.join("hermit");
    let _turn = crate::shared::BuildLock::take(&hermit_dir, opts.quiet).map_err(|source| HermitError::Io { path: hermit_dir.join(".build.lock"), source })?;
    let lib = kernel(&home, &tc, opts.quiet)?;
    let loader_path = loader(&home, opts.quiet)?;
    let mut cmd = tc.cargo();
    // The kernel is linked into the final executable only: a link argument,
    // not `-l` (which would bundle the archive into every rlib).
    cmd.env("CARGO_TARGET_X86_64_UNKNOWN_HERMIT_RUSTFLAGS", format!("-C link-arg={}", lib.display()));
    cmd.env("RUSTC_WRAPPER", features_wrapper(&home)?);
    let extra = [
        "-Zbuild-std=std,panic_abort",
        "-Zbuild-std-features=compiler-builtins-mem",
        // The function's lock file was resolved for the stable toolchain;
        // crates that declare a newer MSRV still build on this nightly.
        "--ignore-rust-version",
        "--config",
        "profile.release.strip=true",
    ];
    if !opts.quiet && !target_dir(&home).join(TARGET).exists() {
        eprintln!("limes-pack: compiling Rust's std for Hermit with the function: first time only, several minutes (later builds take seconds)");
    }
    let exe = compile::build_native_with(project, Some(TARGET), opts, cmd, &target_dir(&home), &extra)?;
    let image = std::fs::read(&exe).map_err(io(&exe))?;
    let loader = std::fs::read(&loader_path).map_err(io(&loader_path))?;
    // The unikernel needs little beyond the function's own limit.
    let default_mem = ((project.limits().memory_bytes >> 20) as u32 + 32).max(64);
    let memory_mib = project.meta.microvm.as_ref().and_then(|m| m.memory_mib).unwrap_or(default_mem);
    Ok(HermitImage { image, loader, firecracker_config: hermit_firecracker_config(memory_mib), memory_mib })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn osabi_is_set_on_every_elf_member_only() {
        let member = |name: &str, data: &[u8]| {
            let mut m = format!("{name:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n", 0, 0, 0, 644, data.len()).into_bytes();
            m.extend_from_slice(data);
            if data.len() % 2 == 1 {
                m.push(b'\n');
            }
            m
        };
        let mut ar = b"!<arch>\n".to_vec();
        ar.extend(member("a.o/", b"\x7fELF\x02\x01\x01\x00rest"));
        ar.extend(member("sym/", b"odd"));
        ar.extend(member("b.o/", b"\x7fELF\x02\x01\x01\x03more!"));
        set_standalone_osabi(&mut ar).unwrap();
        let elf: Vec<usize> = ar.windows(4).enumerate().filter(|(_, w)| *w == b"\x7fELF").map(|(i, _)| i).collect();
        assert_eq!(elf.len(), 2);
        for i in elf {
            assert_eq!(ar[i + 7], 255);
        }
        assert!(ar.windows(3).any(|w| w == b"odd"));
        assert!(set_standalone_osabi(&mut b"not an archive".to_vec()).is_err());
        let mut truncated = b"!<arch>\n".to_vec();
        truncated.extend(&member("a.o/", b"\x7fELF....")[..64]);
        assert!(set_standalone_osabi(&mut truncated).is_err());
    }
}
