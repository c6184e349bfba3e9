//! `limes-pack new`: a function crate from one of the templates in
//! `templates/`, embedded at compile time so the binary works anywhere.

use std::path::{Path, PathBuf};

struct Template {
    name: &'static str,
    files: &'static [(&'static str, &'static str)],
}

const TEMPLATES: &[Template] = &[
    Template {
        name: "blank",
        files: &[("Cargo.toml", include_str!("../../../templates/blank/Cargo.toml.tmpl")), ("src/lib.rs", include_str!("../../../templates/blank/src/lib.rs"))],
    },
    Template {
        name: "noop",
        files: &[("Cargo.toml", include_str!("../../../templates/noop/Cargo.toml.tmpl")), ("src/lib.rs", include_str!("../../../packs/noop/src/lib.rs"))],
    },
    Template {
        name: "mandelbrot",
        files: &[
            ("Cargo.toml", include_str!("../../../templates/mandelbrot/Cargo.toml.tmpl")),
            ("src/lib.rs", include_str!("../../../packs/mandelbrot/src/lib.rs")),
        ],
    },
    Template {
        name: "image",
        files: &[("Cargo.toml", include_str!("../../../templates/image/Cargo.toml.tmpl")), ("src/lib.rs", include_str!("../../../packs/image/src/lib.rs"))],
    },
    // A standard wasi:http function: no limes SDK, runs anywhere wasi:http does.
    Template {
        name: "http",
        files: &[("Cargo.toml", include_str!("../../../templates/http/Cargo.toml.tmpl")), ("src/lib.rs", include_str!("../../../packs/http/src/lib.rs"))],
    },
];

pub fn template_names() -> Vec<&'static str> {
    TEMPLATES.iter().map(|t| t.name).collect()
}

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("unknown template {0:?}; choose one of: {1}")]
    Unknown(String, String),
    #[error("{0:?} is not a valid crate name (use letters, digits, `-` and `_`, starting with a letter)")]
    BadName(String),
    #[error("{0} already exists; choose another name or remove it")]
    Exists(PathBuf),
    #[error("{path}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("no home for limes-pack's SDK and caches: set HOME, XDG_DATA_HOME or LIMES_PACK_HOME (there is no shared fallback: another user could plant code there)")]
    NoHome,
    #[error("refusing to use {path}: it {problem} (another user could have planted code there); {fix}")]
    Unsafe { path: PathBuf, problem: String, fix: String },
}

/// The SDK's sources and the WIT world, embedded in this binary, laid out
/// as in the repository (the SDK finds the WIT at `../../wit`).
const SDK_FILES: &[(&str, &str)] = &[
    ("crates/limes-sdk/src/lib.rs", include_str!("../../limes-sdk/src/lib.rs")),
    ("crates/limes-sdk/src/frame.rs", include_str!("../../limes-sdk/src/frame.rs")),
    ("crates/limes-sdk/src/native.rs", include_str!("../../limes-sdk/src/native.rs")),
    ("wit/function.wit", include_str!("../../../wit/function.wit")),
];

/// The SDK's manifest outside this workspace: every workspace-inherited
/// field made concrete, dependencies pinned to what the SDK is tested with.
fn sdk_manifest() -> String {
    format!(
        "# Materialised by limes-pack {v}: the limes SDK, so that a function crate\n\
         # builds with no checkout of limes-pack and no network beyond crates.io.\n\
         [package]\nname = \"limes-sdk\"\nversion = \"{v}\"\nedition = \"2021\"\nlicense = \"Apache-2.0\"\npublish = false\n\n\
         [dependencies]\n\n\
         [target.'cfg(target_os = \"linux\")'.dependencies]\nlibc = \"0.2\"\n\n\
         [target.'cfg(target_family = \"wasm\")'.dependencies]\n\
         wit-bindgen = {{ version = \"=0.61.1\", default-features = false, features = [\"macros\", \"realloc\", \"std\"] }}\n",
        v = env!("CARGO_PKG_VERSION")
    )
}

/// Where SDK copies and the Hermit build cache live: `$LIMES_PACK_HOME`,
/// else `$XDG_DATA_HOME/limes-pack`, else `~/.local/share/limes-pack`.
/// With none of those set there is no home: never a shared directory such
/// as `/tmp`, where another user could plant a crate whose `build.rs` runs
/// as us. An existing home must be ours and writable by nobody else.
pub fn sdk_home() -> Result<PathBuf, TemplateError> {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    let home = if let Some(h) = var("LIMES_PACK_HOME") {
        PathBuf::from(h)
    } else if let Some(x) = var("XDG_DATA_HOME") {
        Path::new(&x).join("limes-pack")
    } else if let Some(h) = var("HOME") {
        Path::new(&h).join(".local/share/limes-pack")
    } else {
        return Err(TemplateError::NoHome);
    };
    if std::fs::symlink_metadata(&home).is_ok() {
        check_private(&home)?;
    }
    Ok(home)
}

/// `p` is no symlink, is owned by this user and nobody else may write it.
pub fn check_private(p: &Path) -> Result<(), TemplateError> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(p).map_err(|source| TemplateError::Io { path: p.into(), source })?;
    let unsafe_path = |problem: String, fix: String| TemplateError::Unsafe { path: p.into(), problem, fix };
    if m.file_type().is_symlink() {
        return Err(unsafe_path("is a symlink".into(), "remove it".into()));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if m.uid() != me {
        return Err(unsafe_path(
            format!("is owned by uid {}, not by this user (uid {me})", m.uid()),
            "remove it, or set LIMES_PACK_HOME to a directory of your own".into(),
        ));
    }
    if m.mode() & 0o022 != 0 {
        return Err(unsafe_path(format!("is writable by its group or others (mode {:o})", m.mode() & 0o7777), format!("`chmod go-w {}`", p.display())));
    }
    Ok(())
}

/// Whether the SDK copy at `root` is exactly the embedded one, in files of
/// this user that nobody else can write (anything else is refused or
/// replaced, never built).
fn sdk_copy_intact(root: &Path, manifest: &str) -> Result<bool, TemplateError> {
    for dir in [root.parent().expect("root has a parent"), root] {
        check_private(dir)?;
    }
    for (p, text) in SDK_FILES.iter().copied().chain([("crates/limes-sdk/Cargo.toml", manifest)]) {
        let f = root.join(p);
        if std::fs::symlink_metadata(&f).is_err() {
            return Ok(false);
        }
        check_private(&f)?;
        if std::fs::read(&f).map_err(|source| TemplateError::Io { path: f.clone(), source })? != text.as_bytes() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Write the embedded SDK into `home/sdk/VERSION-DIGEST/` (once: the
/// directory is named by its content and published by a rename) and
/// return the SDK crate's directory.
pub fn materialize_sdk(home: &Path) -> Result<PathBuf, TemplateError> {
    use sha2::Digest;
    let manifest = sdk_manifest();
    let mut h = sha2::Sha256::new();
    for (p, text) in SDK_FILES.iter().copied().chain([("crates/limes-sdk/Cargo.toml", manifest.as_str())]) {
        h.update(p.as_bytes());
        h.update([0]);
        h.update(text.as_bytes());
        h.update([0]);
    }
    let digest = hex::encode(h.finalize());
    let root = home.join("sdk").join(format!("{}-{}", env!("CARGO_PKG_VERSION"), &digest[..16]));
    let krate = root.join("crates/limes-sdk");
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TemplateError::Io { path, source }
    };
    if std::fs::symlink_metadata(&root).is_ok() {
        if sdk_copy_intact(&root, &manifest)? {
            return Ok(krate);
        }
        // Ours but changed (an edit, a crash): replaced by a fresh copy.
        tracing::warn!(path = %root.display(), "the SDK copy differs from the one limes-pack carries; writing it again");
        let aside = root.with_extension(format!("stale-{}", std::process::id()));
        std::fs::rename(&root, &aside).map_err(io(&root))?;
        let _ = std::fs::remove_dir_all(&aside);
    }
    let parent = root.parent().expect("root has a parent");
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    check_private(parent)?;
    let tmp = tempfile::Builder::new().prefix(".sdk-").tempdir_in(parent).map_err(io(parent))?;
    for (p, text) in SDK_FILES.iter().copied().chain([("crates/limes-sdk/Cargo.toml", manifest.as_str())]) {
        let f = tmp.path().join(p);
        std::fs::create_dir_all(f.parent().expect("file has a parent")).map_err(io(&f))?;
        std::fs::write(&f, text).map_err(io(&f))?;
    }
    match std::fs::rename(tmp.path(), &root) {
        Ok(()) => {
            let _ = tmp.keep();
        }
        // Another limes-pack published the same content first.
        Err(_) if krate.join("Cargo.toml").is_file() => {}
        Err(e) => return Err(TemplateError::Io { path: root, source: e }),
    }
    Ok(krate)
}

/// The version requirement a function crate puts on the SDK
/// (`"MAJOR.MINOR"` of this limes-pack): what `limes-pack new` writes and
/// what the "not a limes crate" error asks for. No path: the crate builds
/// under any home and on any machine (see [`sdk_patch`]).
pub fn sdk_requirement() -> String {
    let v = env!("CARGO_PKG_VERSION");
    let mut parts = v.split('.');
    format!("{}.{}", parts.next().unwrap_or("0"), parts.next().unwrap_or("0"))
}

/// How `limes-pack new` makes the generated crate depend on the SDK, as a
/// TOML value: `"MAJOR.MINOR"`.
pub fn default_sdk_dependency() -> String {
    toml::Value::String(sdk_requirement()).to_string()
}

/// First line of the `.cargo/config.toml` limes-pack writes; a file that
/// starts otherwise is the user's and is left alone.
const LOCAL_CONFIG_MARK: &str = "# Written by limes-pack";

/// The SDK is not on crates.io: a crate's `limes-sdk = "0.1"` resolves to
/// the copy this limes-pack carries through cargo's `[patch.crates-io]`.
/// Returns the `--config` value every cargo command of limes-pack passes
/// (so it holds wherever cargo runs), after materialising the SDK, and
/// writes the same patch to `crate_dir/.cargo/config.toml` (git-ignored),
/// so that plain `cargo` and rust-analyzer resolve the crate too. Run on
/// every build: a crate copied to another machine or home is repaired
/// there.
pub fn sdk_patch(crate_dir: &Path) -> Result<String, TemplateError> {
    Ok(link_sdk(crate_dir, &materialize_sdk(&sdk_home()?)?))
}

/// [`sdk_patch`] with the SDK already materialised at `krate`.
pub fn link_sdk(crate_dir: &Path, krate: &Path) -> String {
    let path = toml::Value::String(krate.display().to_string()).to_string();
    write_local_config(crate_dir, &path);
    format!("patch.crates-io.limes-sdk.path={path}")
}

/// Best effort: a crate that cannot hold the file still builds through
/// limes-pack (it passes the patch itself).
fn write_local_config(crate_dir: &Path, path: &str) {
    let dir = crate_dir.join(".cargo");
    let file = dir.join("config.toml");
    let text = format!(
        "{LOCAL_CONFIG_MARK} (rewritten on every build; not for version control):\n\
         # where this machine's copy of the limes SDK is, for cargo and rust-analyzer.\n\
         [patch.crates-io]\nlimes-sdk = {{ path = {path} }}\n"
    );
    match std::fs::read_to_string(&file) {
        Ok(old) if old == text => return,
        Ok(old) if !old.starts_with(LOCAL_CONFIG_MARK) => {
            tracing::debug!(path = %file.display(), "a cargo config of the user's: left alone");
            return;
        }
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return,
        _ => {}
    }
    let written = std::fs::create_dir_all(&dir).and_then(|_| crate::aot::write_atomic(&file, text.as_bytes()));
    if let Err(e) = written {
        tracing::warn!(path = %file.display(), error = %e, "cannot write the SDK's location for cargo and rust-analyzer");
    }
}

/// The root of `manifest`'s workspace when any of its packages asks for the
/// SDK by version (from crates.io, where only [`sdk_patch`] can find it), not
/// by path or git: a `limes-pack new` crate, or a workspace of them (the
/// patch and the local cargo config then belong to the root). Read without
/// resolving (`cargo metadata --no-deps`), so it needs neither the patch nor
/// the network; when cargo cannot read the workspace, the crate's own
/// manifest decides and cargo's error comes with the build.
pub fn workspace_wanting_sdk_by_version(manifest: &Path) -> Option<PathBuf> {
    let md = cargo_metadata::MetadataCommand::new().manifest_path(manifest).no_deps().exec();
    let Ok(md) = md else {
        return wants_sdk_by_version(manifest).then(|| manifest.parent().expect("a manifest has a parent").to_path_buf());
    };
    let by_version = |d: &cargo_metadata::Dependency| {
        d.name == "limes-sdk"
            && d.path.is_none()
            && d.registry.is_none()
            && d.source.as_ref().is_some_and(|s| s.repr.starts_with("registry+") || s.repr.starts_with("sparse+"))
    };
    md.workspace_packages().iter().any(|p| p.dependencies.iter().any(by_version)).then(|| md.workspace_root.into_std_path_buf())
}

/// Whether `manifest` itself asks for the SDK by version (see
/// [`workspace_wanting_sdk_by_version`]).
pub fn wants_sdk_by_version(manifest: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(manifest) else { return false };
    let Ok(doc) = text.parse::<toml::Table>() else { return false };
    match doc.get("dependencies").and_then(|d| d.get("limes-sdk")) {
        Some(toml::Value::String(_)) => true,
        Some(toml::Value::Table(t)) => t.contains_key("version") && !["path", "git", "workspace", "registry"].iter().any(|k| t.contains_key(*k)),
        _ => false,
    }
}

/// Create crate `name` in `parent/name` from template `template`.
/// `sdk` is the dependency spec for `limes-sdk` (TOML value).
pub fn generate(parent: &Path, name: &str, template: &str, sdk: &str) -> Result<PathBuf, TemplateError> {
    let t = TEMPLATES.iter().find(|t| t.name == template).ok_or_else(|| TemplateError::Unknown(template.into(), template_names().join(", ")))?;
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        return Err(TemplateError::BadName(name.into()));
    }
    let dir = parent.join(name);
    if dir.exists() {
        return Err(TemplateError::Exists(dir));
    }
    // Build in a sibling temp dir and rename: a failure leaves nothing behind.
    let tmp = tempfile::Builder::new().prefix(".limes-new-").tempdir_in(parent).map_err(|source| TemplateError::Io { path: parent.into(), source })?;
    for (rel, text) in t.files {
        let text = text.replace("{{name}}", name).replace("{{crate_name}}", &name.replace('-', "_")).replace("{{sdk}}", sdk);
        let p = tmp.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).and_then(|_| std::fs::write(&p, text)).map_err(|source| TemplateError::Io { path: p.clone(), source })?;
    }
    // `.cargo/config.toml` holds this machine's SDK path (see [`sdk_patch`]).
    let _ = std::fs::write(tmp.path().join(".gitignore"), "/target\n/.cargo/config.toml\n");
    let kept = tmp.keep();
    std::fs::rename(&kept, &dir).map_err(|source| {
        let _ = std::fs::remove_dir_all(&kept);
        TemplateError::Io { path: dir.clone(), source }
    })?;
    Ok(dir)
}
