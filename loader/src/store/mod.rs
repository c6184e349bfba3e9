//! The local store of installed functions.
//!
//! ```text
//! ROOT/objects/<sha256 of manifest>/   verified bundle contents, read-only
//! ROOT/functions/<name>.json           which object a name points to, and
//!                                      the versions kept to roll back to
//! ROOT/candidates/<name>.json          a new version installed beside the
//!                                      current one, not yet switched to
//! ROOT/sync/<name>.json                what `limes sync` last did for <name>
//! ROOT/pins/<name>                     the key id that first installed <name>
//! ROOT/tmp/                            staging; never read by the runtime
//! ROOT/lock                            serialises installs and removals
//! ROOT/serve-state.json                how a running `limes serve` serves each function
//! ROOT/microvm-accel                   whether KVM runs guests here (the probe's answer)
//! ```
//!
//! A bundle is streamed into a staging directory while every digest is
//! checked, and only renamed into `objects/` after the whole bundle verified
//! against a trusted key. Every publication step is a rename, so a crash at
//! any point leaves either the old state or the new one. Nothing in the
//! store is trusted by itself: [`Store::load`] checks an object's signed
//! manifest against keys outside the store ([`crate::trust`]) before any of
//! its native code is mapped.

mod serve_state;
mod versions;

pub use serve_state::{AutoMedians, ServeState, ServedBy, ServedFunction, SERVE_STATE};

use limes_bundle::archive::{read_bundle, BundleLimits, FileSink, SignaturePolicy, VerifiedBundle};
use limes_bundle::manifest::{FileEntry, Manifest, MANIFEST_PATH, SIGNATURE_PATH};
use limes_bundle::{BundleError, TrustedKeys};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store I/O on {path}")]
    Io { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("no function named {name:?} is installed{}; see `limes list`", suggestion.as_ref().map(|s| format!(" (did you mean {s:?}?)")).unwrap_or_default())]
    NotInstalled { name: String, suggestion: Option<String> },
    #[error("{0} is not a function name (letters, digits, `.`, `_`, `-`; 1-64 characters, not starting with `.`)")]
    InvalidName(String),
    #[error(
        "refusing to replace {name} {installed} with older version {offered} (rollback protection); \
         pass --allow-downgrade to do it anyway"
    )]
    Downgrade { name: String, installed: String, offered: String },
    #[error(
        "{name} {version} is already installed with different content (object {installed}, offered {offered}); \
         a version names one build: publish a new version, or pass --force to replace it"
    )]
    SameVersionDiffers { name: String, version: String, installed: String, offered: String },
    #[error(
        "{name} was installed from key {pinned}, this bundle is signed by key {offered}; \
         refusing a change of publisher. If this is a planned key rotation, pass --rotate-key"
    )]
    SignerChanged { name: String, pinned: String, offered: String },
    #[error("store entry for {name} is corrupted: {detail}; reinstall it with `limes install`")]
    Corrupted { name: String, detail: String },
    #[error("{path} does not match the signed manifest ({detail}): the store was modified after install; reinstall the function with `limes install` and find out who can write to the store")]
    Tampered { path: PathBuf, detail: String },
    #[error("refusing to use the store: {path} {problem}; {fix}")]
    Unsafe { path: PathBuf, problem: String, fix: String },
    #[error(
        "no trusted key to check {name}'s signature against: pass --trust KEY|DIR, or put the publisher's .pub file in {} \
         (`limes install --trust KEY` does)", dir.display()
    )]
    NoTrust { name: String, dir: PathBuf },
    #[error("{name} has no staged candidate version (it was switched to, discarded, or replaced meanwhile)")]
    NoCandidate { name: String },
    #[error("{name} {version} has no earlier version kept to roll back to (kept: the versions it replaced, see `limes status`)")]
    NoPrevious { name: String, version: String },
    #[error("refusing to install: {detail}; rebuild it with this device's tiers (limes-pack builds every tier by default; `--tier {baseline}` at least)")]
    NoCodeForHost { detail: String, baseline: &'static str },
}

impl StoreError {
    /// What kind of failure this is (see [`crate::ErrorKind`]).
    pub fn kind(&self) -> crate::ErrorKind {
        match self {
            StoreError::NotInstalled { .. } => crate::ErrorKind::NotInstalled,
            StoreError::Bundle(b) => crate::error::bundle_kind(b),
            _ if self.is_verification() => crate::ErrorKind::Verification,
            _ => crate::ErrorKind::Other,
        }
    }

    /// Whether this error means bytes failed verification (a bundle, or a
    /// store object that no longer matches what was verified at install).
    pub fn is_verification(&self) -> bool {
        match self {
            StoreError::Bundle(b) => b.is_verification(),
            StoreError::Tampered { .. } | StoreError::Unsafe { .. } | StoreError::SignerChanged { .. } | StoreError::NoTrust { .. } => true,
            StoreError::Io { .. }
            | StoreError::NotInstalled { .. }
            | StoreError::InvalidName(_)
            | StoreError::Downgrade { .. }
            | StoreError::SameVersionDiffers { .. }
            | StoreError::NoCodeForHost { .. }
            | StoreError::NoCandidate { .. }
            | StoreError::NoPrevious { .. }
            | StoreError::Corrupted { .. } => false,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_path_buf(), source }
}

/// What an artifact's inode looked like right after it was verified and made
/// read-only. Any later write, chmod, chown or replacement changes the ctime
/// or the inode number (ctime cannot be set from user space), so an
/// unchanged stamp on a store the loader's user alone can write means the
/// bytes are the ones that were hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStamp {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub ctime: i64,
    pub ctime_nsec: i64,
}

impl FileStamp {
    fn of(m: &std::fs::Metadata) -> FileStamp {
        FileStamp { dev: m.dev(), ino: m.ino(), size: m.len(), ctime: m.ctime(), ctime_nsec: m.ctime_nsec() }
    }
}

/// The record `functions/<name>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Installed {
    pub name: String,
    pub version: String,
    pub object: String,
    pub signer: String,
    /// Files present in the object; empty means all the manifest lists (a
    /// registry pull fetches only what this host will run).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
    /// SHA-256 of the signed manifest.
    #[serde(default)]
    pub manifest_sha256: String,
    /// Stamps of the object's files taken at install.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub stamps: BTreeMap<String, FileStamp>,
    /// The versions this one replaced, newest first (at most
    /// [`InstallPolicy::keep`]); their objects are kept so that a rollback
    /// needs no download. Their own `previous` is empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous: Vec<Installed>,
}

impl Installed {
    /// SHA-256 of the signed manifest (older records name it by object).
    pub fn manifest_digest(&self) -> String {
        if self.manifest_sha256.is_empty() {
            self.object.trim_end_matches("-partial").to_string()
        } else {
            self.manifest_sha256.clone()
        }
    }

    /// The objects this record keeps alive.
    fn objects(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.object.as_str()).chain(self.previous.iter().map(|p| p.object.as_str()))
    }
}

/// What [`Store::check`] found for one function.
#[derive(Debug, Clone)]
pub struct FunctionCheck {
    pub name: String,
    pub version: Option<String>,
    pub signer: Option<String>,
    /// Files re-hashed against the signed manifest.
    pub files_checked: usize,
    /// Why it cannot be loaded (`None`: it verified).
    pub problem: Option<(crate::ErrorKind, String)>,
}

/// What [`Store::check`] found.
#[derive(Debug, Clone)]
pub struct CheckReport {
    pub functions: Vec<FunctionCheck>,
    /// Objects no record names (collected by the next install or removal,
    /// or by `--repair`); never loaded.
    pub unreferenced_objects: Vec<String>,
    /// What killed processes left: staging directories, objects set aside
    /// for removal, temporary record files.
    pub leftovers: Vec<PathBuf>,
    /// Whether leftovers and unreferenced objects were removed.
    pub repaired: bool,
}

impl CheckReport {
    /// The worst kind among the functions (`None`: all verified).
    pub fn worst(&self) -> Option<crate::ErrorKind> {
        let kinds = self.functions.iter().filter_map(|f| f.problem.as_ref().map(|p| p.0));
        kinds.max_by_key(|k| (*k == crate::ErrorKind::Verification, k.exit_code()))
    }
}

/// An installed function, resolved to its verified files.
#[derive(Debug, Clone)]
pub struct InstalledFunction {
    pub record: Installed,
    pub dir: PathBuf,
    pub manifest: Manifest,
}

/// How much to trust an object's bytes before mapping them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Integrity {
    /// Hash the bytes against the signed manifest (serve: once per load).
    Rehash,
    /// Trust the install-time verification when the file's stamp is
    /// unchanged (the store's ownership was checked when it was opened);
    /// re-hash otherwise (`limes run`).
    Stamp,
}

impl InstalledFunction {
    pub fn path_of(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// Whether the object holds `rel` (partial pulls hold a subset).
    pub fn has(&self, rel: &str) -> bool {
        self.record.files.is_empty() || self.record.files.iter().any(|f| f == rel)
    }

    fn entry(&self, rel: &str) -> Result<&FileEntry, StoreError> {
        self.manifest.file(rel).ok_or_else(|| StoreError::Corrupted { name: self.record.name.clone(), detail: format!("{rel} is not listed in its manifest") })
    }

    fn open_checked(&self, rel: &str) -> Result<(File, std::fs::Metadata), StoreError> {
        open_checked(&self.path_of(rel))
    }

    /// Read `rel` and check its SHA-256 and size against the signed manifest
    /// (the bytes returned are the bytes that were hashed).
    pub fn read_verified(&self, rel: &str) -> Result<Vec<u8>, StoreError> {
        let entry = self.entry(rel)?;
        let (f, m) = self.open_checked(rel)?;
        let p = self.path_of(rel);
        // One byte past the manifest's size is enough to see a difference.
        let data = read_sized(f, &m, entry.size + 1).map_err(io_err(&p))?;
        let actual = limes_bundle::sha256_hex(&data);
        if data.len() as u64 != entry.size || actual != entry.sha256 {
            return Err(StoreError::Tampered {
                path: p,
                detail: format!("{} bytes with sha256 {actual}, manifest says {} bytes with sha256 {}", data.len(), entry.size, entry.sha256),
            });
        }
        Ok(data)
    }

    /// `rel`, opened, if it is still exactly the inode that was verified at
    /// install: the caller maps this descriptor, not the path again.
    pub fn open_if_unchanged(&self, rel: &str) -> Result<Option<File>, StoreError> {
        let (f, m) = self.open_checked(rel)?;
        Ok((self.record.stamps.get(rel) == Some(&FileStamp::of(&m))).then_some(f))
    }

    /// Check that the files the caller is about to hand to something that
    /// maps or boots them are the signed bytes, by `integrity`.
    pub fn check_files(&self, rels: &[&str], integrity: Integrity) -> Result<(), StoreError> {
        for rel in rels {
            if integrity == Integrity::Stamp && self.open_if_unchanged(rel)?.is_some() {
                continue;
            }
            self.read_verified(rel)?;
        }
        Ok(())
    }
}

/// Who may own a path limes reads: the store is the loader's user's alone;
/// a trust anchor ([`crate::trust`]) may also be root's (a device whose keys
/// the service's user cannot change).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Owners {
    Me,
    MeOrRoot,
}

/// Open a store file without following a symlink, and check it is a
/// regular file of this user that nobody else can write.
fn open_checked(p: &Path) -> Result<(File, std::fs::Metadata), StoreError> {
    open_checked_by(p, Owners::Me)
}

fn open_checked_by(p: &Path, owners: Owners) -> Result<(File, std::fs::Metadata), StoreError> {
    let f = open_nofollow(p)?;
    let m = f.metadata().map_err(io_err(p))?;
    check_owner(p, &m, false, owners)?;
    if !m.is_file() {
        return Err(unsafe_path(p, "is not a regular file", "reinstall the function"));
    }
    Ok((f, m))
}

fn unsafe_path(path: &Path, problem: &str, fix: &str) -> StoreError {
    StoreError::Unsafe { path: path.to_path_buf(), problem: problem.into(), fix: fix.into() }
}

/// This process's effective user, asked once: the store checks the owner of
/// every path it opens (25 `geteuid` calls in one `limes run`), and limes
/// never changes its user.
fn euid() -> u32 {
    static EUID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    // SAFETY: geteuid has no preconditions and cannot fail.
    *EUID.get_or_init(|| unsafe { libc::geteuid() })
}

/// Open a file for reading; a symlink in the last component is an error.
fn open_nofollow(p: &Path) -> Result<File, StoreError> {
    std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC).open(p).map_err(|e| {
        if e.raw_os_error() == Some(libc::ELOOP) {
            unsafe_path(p, "is a symlink", "remove it; nothing in the store may be a symlink")
        } else {
            StoreError::Io { path: p.to_path_buf(), source: e }
        }
    })
}

/// Who may write a store path: only the loader's user.
fn check_owned(p: &Path, m: &std::fs::Metadata, dir: bool) -> Result<(), StoreError> {
    check_owner(p, m, dir, Owners::Me)
}

/// `p` (a directory if `dir`) is no symlink, is owned by `owners` and
/// nobody else can write it.
pub(crate) fn check_owner(p: &Path, m: &std::fs::Metadata, dir: bool, owners: Owners) -> Result<(), StoreError> {
    if m.file_type().is_symlink() {
        return Err(unsafe_path(p, "is a symlink", "remove it; limes follows no symlink in its store or trust directory"));
    }
    if dir && !m.is_dir() {
        return Err(unsafe_path(p, "is not a directory", "remove it"));
    }
    let me = euid();
    if m.uid() != me && !(owners == Owners::MeOrRoot && m.uid() == 0) {
        return Err(unsafe_path(
            p,
            &format!("is owned by uid {}, not by this user (uid {me})", m.uid()),
            &format!("run limes as the store's owner, or `chown -R {me} {}`", p.display()),
        ));
    }
    if m.mode() & 0o022 != 0 {
        return Err(unsafe_path(p, &format!("is writable by its group or others (mode {:o})", m.mode() & 0o7777), &format!("`chmod -R go-w {}`", p.display())));
    }
    Ok(())
}

/// Check a directory tree of the store: no symlinks, everything owned by
/// this user and writable by nobody else. Returns the metadata of every
/// file in it, by path, for callers that check more (sizes).
fn check_tree(dir: &Path) -> Result<std::collections::HashMap<PathBuf, std::fs::Metadata>, StoreError> {
    fn walk(dir: &Path, files: &mut std::collections::HashMap<PathBuf, std::fs::Metadata>) -> Result<(), StoreError> {
        let m = std::fs::symlink_metadata(dir).map_err(io_err(dir))?;
        check_owned(dir, &m, true)?;
        for e in std::fs::read_dir(dir).map_err(io_err(dir))? {
            let p = e.map_err(io_err(dir))?.path();
            let m = std::fs::symlink_metadata(&p).map_err(io_err(&p))?;
            if m.is_dir() {
                walk(&p, files)?;
            } else {
                check_owned(&p, &m, false)?;
                files.insert(p, m);
            }
        }
        Ok(())
    }
    let mut files = std::collections::HashMap::new();
    walk(dir, &mut files)?;
    Ok(files)
}

/// Write `data` to `dest` atomically: temp file + rename, so a symlink
/// planted at the destination is replaced, never written through.
pub fn write_atomic(dest: &Path, data: &[u8]) -> Result<(), StoreError> {
    let dir = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir).map_err(io_err(dir))?;
    tmp.write_all(data).and_then(|_| tmp.as_file().sync_all()).map_err(io_err(dest))?;
    if dest.file_name().is_some_and(|n| n.to_string_lossy().ends_with(".json")) {
        crash_point("record-tmp-written");
    }
    tmp.persist(dest).map_err(|e| StoreError::Io { path: dest.to_path_buf(), source: e.error })?;
    sync_dir(dir)
}

/// Read at most `limit` bytes of a store file this user owns and nobody
/// else can write (`None` if absent), never through a symlink.
pub fn read_nofollow(p: &Path, limit: u64) -> Result<Option<Vec<u8>>, StoreError> {
    read_nofollow_by(p, limit, Owners::Me)
}

pub(crate) fn read_nofollow_by(p: &Path, limit: u64, owners: Owners) -> Result<Option<Vec<u8>>, StoreError> {
    let (f, m) = match open_checked_by(p, owners) {
        Ok(opened) => opened,
        Err(StoreError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    read_sized(f, &m, limit).map(Some).map_err(io_err(p))
}

/// Read at most `limit` bytes of the file opened with metadata `m`, into
/// one buffer sized for it: two `read` calls, where `read_to_end` into an
/// empty `Vec` grows from 32 bytes with a call per doubling (ten for a
/// 5 KB manifest). The buffer never exceeds `limit` + 1 bytes, whatever
/// the file claims.
fn read_sized(f: File, m: &std::fs::Metadata, limit: u64) -> io::Result<Vec<u8>> {
    let mut v = Vec::with_capacity(m.len().min(limit) as usize + 1);
    f.take(limit).read_to_end(&mut v)?;
    Ok(v)
}

/// A function name as records and manifests spell it; anything else never
/// becomes a path.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && !name.starts_with('.') && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// The name prefix of this process's staging directories: the PID lets
/// recovery tell a live install's directory from a killed one's.
fn staging_prefix() -> String {
    format!("stage-{}-", std::process::id())
}

/// The PID a `tmp/` entry names: `stage-PID-*`, `gone-PID-*`, `bad-OBJECT-PID`.
fn leftover_pid(name: &str) -> Option<i32> {
    let field = if let Some(rest) = name.strip_prefix("stage-").or_else(|| name.strip_prefix("gone-")) {
        rest.split('-').next()?
    } else {
        name.strip_prefix("bad-")?.rsplit('-').next()?
    };
    field.parse().ok().filter(|p| *p > 0)
}

/// Whether process `pid` exists (a reused PID only keeps a leftover longer).
pub(crate) fn process_alive(pid: i32) -> bool {
    // SAFETY: kill(2) with signal 0 only checks that the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Writes each verified-as-it-streams file under a staging directory.
struct DirSink<'a> {
    dir: &'a Path,
}

impl FileSink for DirSink<'_> {
    fn file(&mut self, entry: &FileEntry, data: &mut dyn Read) -> io::Result<()> {
        // Paths were checked by the reader (`is_safe_path`): relative, no `..`.
        let path = self.dir.join(&entry.path);
        if let Some(parent) = path.parent() {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(parent)?;
        }
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).custom_flags(libc::O_NOFOLLOW).open(&path)?;
        io::copy(data, &mut f)?;
        f.sync_all()
    }
}

/// Semantic-version order (semver.org, section 11): numeric core parts
/// compare as numbers; a pre-release sorts before its release; pre-release
/// identifiers compare numerically when both are numeric (`rc.9` < `rc.10`),
/// numbers before words, and a longer list wins a tie; build metadata is
/// ignored.
pub fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let split = |v: &str| -> (Vec<u64>, Option<String>) {
        let v = v.split_once('+').map(|(c, _)| c).unwrap_or(v);
        let (core, pre) = match v.split_once('-') {
            Some((c, p)) => (c, Some(p.to_string())),
            None => (v, None),
        };
        (core.split('.').map(|p| p.parse().unwrap_or(0)).collect(), pre)
    };
    let ident = |x: &str, y: &str| -> Ordering {
        match (x.parse::<u64>(), y.parse::<u64>()) {
            (Ok(a), Ok(b)) => a.cmp(&b),
            (Ok(_), Err(_)) => Ordering::Less,
            (Err(_), Ok(_)) => Ordering::Greater,
            (Err(_), Err(_)) => x.cmp(y),
        }
    };
    let (mut na, pa) = split(a);
    let (mut nb, pb) = split(b);
    let len = na.len().max(nb.len());
    na.resize(len, 0);
    nb.resize(len, 0);
    na.cmp(&nb).then_with(|| match (pa, pb) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Greater,
        (Some(_), None) => Ordering::Less,
        (Some(x), Some(y)) => {
            let (xs, ys): (Vec<&str>, Vec<&str>) = (x.split('.').collect(), y.split('.').collect());
            xs.iter().zip(&ys).map(|(p, q)| ident(p, q)).find(|o| o.is_ne()).unwrap_or_else(|| xs.len().cmp(&ys.len()))
        }
    })
}

/// Open a directory without following a symlink (for fd-based chmod).
fn open_dir_nofollow(p: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_DIRECTORY | libc::O_CLOEXEC).open(p)
}

/// Make a staged tree read-only. The walk runs on descriptors
/// (`limes::tree`): each entry is opened from its directory's descriptor
/// without following it, so a symlink planted or swapped in is refused,
/// never `chmod`ed through.
fn make_read_only(dir: &Path) -> io::Result<()> {
    seal(&open_dir_nofollow(dir)?, dir, 0)
}

fn seal(dir: &File, path: &Path, depth: usize) -> io::Result<()> {
    use limes_runtime::tree;
    if depth >= tree::MAX_DEPTH {
        return Err(io::Error::other(format!("{} is nested too deeply", path.display())));
    }
    for name in tree::names(dir.as_fd()).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))? {
        let p = path.join(std::ffi::OsStr::from_bytes(name.to_bytes()));
        let f = tree::open_file_or_dir_at(dir.as_fd(), &name).map_err(|e| match e.kind() {
            io::ErrorKind::InvalidInput => io::Error::other(format!("{} is not a regular file or directory", p.display())),
            k => io::Error::new(k, format!("{}: {e}", p.display())),
        })?;
        if f.metadata()?.is_dir() {
            seal(&f, &p, depth + 1)?;
        } else {
            f.set_permissions(std::fs::Permissions::from_mode(0o400))?;
        }
    }
    dir.set_permissions(std::fs::Permissions::from_mode(0o500))?;
    // The staged tree's entries reach the disk before the rename that
    // publishes it (its files were synced as they were written).
    dir.sync_all()
}

/// Make the entries of `dir` (a rename or unlink in it) durable: after a
/// power cut the directory shows the new state, and an object renamed into
/// `objects/` is on disk before the record that names it.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    open_dir_nofollow(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))
}

/// Crash-test hook: `LIMES_CRASH_AT=POINT` makes the process SIGKILL itself
/// when it reaches that point of a store update, so the crash test can stop
/// an install, a switch or a collection exactly between two of its steps.
/// Unset (always, outside tests), this is one cached environment lookup.
pub(crate) fn crash_point(point: &str) {
    static AT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    if AT.get_or_init(|| std::env::var("LIMES_CRASH_AT").ok()).as_deref() == Some(point) {
        // SAFETY: kill(2) on this process with a constant signal; nothing
        // is read or written through pointers.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

/// Every [`crash_point`] of the store, in the order an install meets them.
pub const CRASH_POINTS: &[&str] = &[
    "staged",
    "object-published",
    "record-tmp-written",
    "record-published",
    "pin-published",
    "collecting",
    "collected",
    "record-removed",
    "promoted",
    "rolled-back",
];

/// Remove a tree of the store. Nothing is followed: the walk runs on
/// directory descriptors from the tree's parent (`limes::tree`), so a
/// symlink, planted or swapped in while the tree goes, is unlinked itself.
fn remove_tree(path: &Path) -> io::Result<()> {
    match limes_runtime::tree::Entry::of(path) {
        Ok(e) => e.remove(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Stamps of every file in a published object.
fn stamps(dir: &Path, files: impl Iterator<Item = String>) -> Result<BTreeMap<String, FileStamp>, StoreError> {
    let mut out = BTreeMap::new();
    for rel in files {
        let p = dir.join(&rel);
        let m = std::fs::symlink_metadata(&p).map_err(io_err(&p))?;
        out.insert(rel, FileStamp::of(&m));
    }
    Ok(out)
}

/// Check every file an existing object should hold against the manifest;
/// `Err` describes the first difference.
fn verify_object(dir: &Path, manifest_bytes: &[u8], manifest: &Manifest, files: &[String]) -> Result<(), String> {
    check_tree(dir).map_err(|e| e.to_string())?;
    // One byte past the expected size is enough to see a difference.
    let read = |rel: &str, expected: u64| -> Result<Vec<u8>, String> {
        let p = dir.join(rel);
        let f = open_nofollow(&p).map_err(|e| e.to_string())?;
        let m = f.metadata().map_err(|e| format!("{}: {e}", p.display()))?;
        read_sized(f, &m, expected + 1).map_err(|e| format!("{}: {e}", p.display()))
    };
    if read(MANIFEST_PATH, manifest_bytes.len() as u64)? != manifest_bytes {
        return Err("its manifest differs".into());
    }
    for e in manifest.files.iter().filter(|e| files.is_empty() || files.contains(&e.path)) {
        let data = read(&e.path, e.size)?;
        if data.len() as u64 != e.size || limes_bundle::sha256_hex(&data) != e.sha256 {
            return Err(format!("{} does not match its digest", e.path));
        }
    }
    Ok(())
}

/// Levenshtein distance (names are short).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// What an install may override.
#[derive(Debug, Clone, Copy)]
pub struct InstallPolicy {
    /// Replace an installed function with an older version.
    pub allow_downgrade: bool,
    /// Replace the installed build of the same version with other content.
    pub force: bool,
    /// Accept a signer other than the one pinned for this function name.
    pub rotate_key: bool,
    /// How many replaced versions to keep for a rollback.
    pub keep: usize,
}

/// Replaced versions kept by default: enough to step back twice without a
/// network (a bad version, then a bad rollback target).
pub const KEEP_PREVIOUS: usize = 2;

impl Default for InstallPolicy {
    fn default() -> Self {
        InstallPolicy { allow_downgrade: false, force: false, rotate_key: false, keep: KEEP_PREVIOUS }
    }
}

/// What a verified staging directory is published as.
struct Publication<'a> {
    manifest: &'a Manifest,
    manifest_bytes: &'a [u8],
    signer: String,
    /// The files present (a partial install), or empty for all.
    files: Vec<String>,
    policy: InstallPolicy,
    /// Published beside the current version (`candidates/`), not switched to.
    candidate: bool,
}

/// A verified bundle unpacked in the store's `tmp/` (see
/// [`Store::stage_function`]); the directory goes when this is dropped.
pub struct Staged {
    dir: PathBuf,
    function: InstalledFunction,
}

impl Staged {
    pub fn function(&self) -> &InstalledFunction {
        &self.function
    }

    /// The directory, for removing it from a process about to exit.
    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        let _ = remove_tree(&self.dir);
    }
}

/// The record of `new` replacing `current`: the replaced version goes to
/// the front of the kept ones (unless it is the same object), and at most
/// `keep` are kept.
fn succeed(current: Option<Installed>, mut new: Installed, keep: usize) -> Installed {
    if let Some(mut cur) = current {
        let mut kept = std::mem::take(&mut cur.previous);
        if cur.object != new.object {
            kept.insert(0, cur);
        }
        kept.retain(|k| k.object != new.object);
        kept.truncate(keep);
        new.previous = kept;
    }
    new
}

/// Default store location: `$LIMES_HOME`, else `$XDG_DATA_HOME/limes`, else
/// `~/.local/share/limes`.
pub fn default_root() -> PathBuf {
    if let Some(h) = std::env::var_os("LIMES_HOME") {
        return h.into();
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME") {
        return Path::new(&x).join("limes");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/var/lib".into());
    Path::new(&home).join(".local/share/limes")
}

const SUBDIRS: [&str; 6] = ["objects", "functions", "pins", "tmp", "candidates", "sync"];

impl Store {
    /// Open (creating it `0700` if needed) the store at `root`, and refuse it
    /// unless the root and its directories are real directories owned by
    /// this user that no one else can write.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store, StoreError> {
        let root = root.into();
        if !root.exists() {
            if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(io_err(parent))?;
            }
        }
        for p in std::iter::once(root.clone()).chain(SUBDIRS.iter().map(|d| root.join(d))) {
            // Look first and create only what is missing: an existing store
            // (every run) costs one `lstat` per directory, not a failing
            // `mkdir` too.
            let m = match std::fs::symlink_metadata(&p) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    match std::fs::DirBuilder::new().mode(0o700).create(&p) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                        Err(e) => return Err(StoreError::Io { path: p, source: e }),
                    }
                    std::fs::symlink_metadata(&p).map_err(io_err(&p))?
                }
                Err(e) => return Err(StoreError::Io { path: p, source: e }),
            };
            check_owned(&p, &m, true)?;
        }
        Ok(Store { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn lock(&self) -> Result<File, StoreError> {
        let p = self.root.join("lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&p)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP) => unsafe_path(&p, "is a symlink", "remove it"),
                _ => StoreError::Io { path: p.clone(), source: e },
            })?;
        f.lock().map_err(io_err(&p))?;
        Ok(f)
    }

    /// Write `data` to `ROOT/rel` atomically (see [`write_atomic`]).
    pub fn write_file(&self, rel: &str, data: &[u8]) -> Result<(), StoreError> {
        write_atomic(&self.root.join(rel), data)
    }

    /// Read a small file of the store (see [`read_nofollow`]).
    pub fn read_file(&self, rel: &str, limit: u64) -> Result<Option<Vec<u8>>, StoreError> {
        read_nofollow(&self.root.join(rel), limit)
    }

    /// Verify `bundle` against `keys` and unpack it into a fresh staging
    /// directory under `tmp/`. The directory is removed on any error.
    pub fn stage(&self, bundle: &Path, keys: &TrustedKeys, limits: &BundleLimits) -> Result<(tempfile::TempDir, VerifiedBundle), StoreError> {
        let tmp = self.root.join("tmp");
        let staging = tempfile::Builder::new().prefix(&staging_prefix()).tempdir_in(&tmp).map_err(io_err(&tmp))?;
        let v = match read_bundle(bundle, limits, SignaturePolicy::Require(keys), &mut DirSink { dir: staging.path() }) {
            Ok(v) => v,
            Err(e) => {
                let _ = remove_tree(&staging.keep());
                return Err(e.into());
            }
        };
        let write = |name: &str, data: &[u8]| -> Result<(), StoreError> {
            let p = staging.path().join(name);
            let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&p).map_err(io_err(&p))?;
            f.write_all(data).and_then(|_| f.sync_all()).map_err(io_err(&p))
        };
        write(MANIFEST_PATH, &v.manifest_bytes)?;
        write(SIGNATURE_PATH, v.signature.as_deref().unwrap_or("").as_bytes())?;
        make_read_only(staging.path()).map_err(io_err(staging.path()))?;
        Ok((staging, v))
    }

    /// Verify `bundle` and unpack it into `tmp/` as a function that runs
    /// without being installed (`limes run BUNDLE`); its stamps are taken
    /// right after verification. Removed when the [`Staged`] is dropped.
    pub fn stage_function(&self, bundle: &Path, keys: &TrustedKeys) -> Result<Staged, StoreError> {
        let (staging, v) = self.stage(bundle, keys, &BundleLimits::default())?;
        let dir = staging.keep();
        let stamps = match stamps(&dir, v.manifest.files.iter().map(|f| f.path.clone())) {
            Ok(s) => s,
            Err(e) => {
                let _ = remove_tree(&dir);
                return Err(e);
            }
        };
        let manifest_sha256 = limes_bundle::sha256_hex(&v.manifest_bytes);
        let record = Installed {
            name: v.manifest.function.name.clone(),
            version: v.manifest.function.version.clone(),
            object: manifest_sha256.clone(),
            signer: v.signer.map(|k| k.to_string()).unwrap_or_default(),
            files: Vec::new(),
            manifest_sha256,
            stamps,
            previous: Vec::new(),
        };
        Ok(Staged { function: InstalledFunction { record, dir: dir.clone(), manifest: v.manifest }, dir })
    }

    /// Verify and install `bundle`. Installing the same bundle twice is a
    /// no-op (after re-verifying the installed copy); see [`InstallPolicy`]
    /// for what else is refused.
    pub fn install(&self, bundle: &Path, keys: &TrustedKeys, policy: InstallPolicy) -> Result<InstalledFunction, StoreError> {
        let (staging, v) = self.stage(bundle, keys, &BundleLimits::default())?;
        let signer = v.signer.map(|k| k.to_string()).unwrap_or_default();
        self.publish(staging, Publication { manifest: &v.manifest, manifest_bytes: &v.manifest_bytes, signer, files: Vec::new(), policy, candidate: false })
    }

    /// Install a subset of a bundle's files fetched separately (a registry
    /// pull). The signature and every given file are verified here again,
    /// whatever the caller checked.
    pub fn install_parts(
        &self,
        manifest_bytes: &[u8],
        signature: &str,
        files: &[(String, Vec<u8>)],
        keys: &TrustedKeys,
        policy: InstallPolicy,
    ) -> Result<InstalledFunction, StoreError> {
        self.publish_parts(manifest_bytes, signature, files, keys, policy, false)
    }

    /// [`Store::install_parts`], or with `candidate` beside the current
    /// version (see [`Store::promote`]).
    pub(crate) fn publish_parts(
        &self,
        manifest_bytes: &[u8],
        signature: &str,
        files: &[(String, Vec<u8>)],
        keys: &TrustedKeys,
        policy: InstallPolicy,
        candidate: bool,
    ) -> Result<InstalledFunction, StoreError> {
        let (signer, manifest) = keys.verify_manifest(manifest_bytes, signature)?;
        let tmp = self.root.join("tmp");
        let staging = tempfile::Builder::new().prefix(&staging_prefix()).tempdir_in(&tmp).map_err(io_err(&tmp))?;
        let mut present = Vec::new();
        for (path, data) in files {
            let entry = manifest.file(path).ok_or_else(|| BundleError::UnlistedFile(limes_bundle::untrusted(path)))?;
            let actual = limes_bundle::sha256_hex(data);
            if actual != entry.sha256 || data.len() as u64 != entry.size {
                return Err(BundleError::DigestMismatch { path: path.clone(), expected: entry.sha256.clone(), actual }.into());
            }
            DirSink { dir: staging.path() }.file(entry, &mut &data[..]).map_err(io_err(staging.path()))?;
            present.push(path.clone());
        }
        for (name, data) in [(MANIFEST_PATH, manifest_bytes), (SIGNATURE_PATH, signature.as_bytes())] {
            let p = staging.path().join(name);
            let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&p).map_err(io_err(&p))?;
            f.write_all(data).and_then(|_| f.sync_all()).map_err(io_err(&p))?;
        }
        make_read_only(staging.path()).map_err(io_err(staging.path()))?;
        present.sort();
        self.publish(staging, Publication { manifest: &manifest, manifest_bytes, signer: signer.to_string(), files: present, policy, candidate })
    }

    /// Move a verified staging directory into `objects/` and point the
    /// function's record at it, under the store lock.
    fn publish(&self, staging: tempfile::TempDir, p: Publication<'_>) -> Result<InstalledFunction, StoreError> {
        let staging = staging.keep();
        let r = self.publish_locked(&staging, p);
        // Gone on success (renamed into place or a duplicate) and on error.
        let _ = remove_tree(&staging);
        r
    }

    fn publish_locked(&self, staging: &Path, p: Publication<'_>) -> Result<InstalledFunction, StoreError> {
        let Publication { manifest, manifest_bytes, signer, files, policy, candidate } = p;
        // A device refuses a bundle it could never run (an x86_64-only bundle
        // on an aarch64 device), naming the tiers the bundle has.
        if let Err(detail) = crate::select::check_host_arch(manifest) {
            let baseline = limes_bundle::profile::TIERS.iter().find(|t| Some(t.arch) == limes_bundle::profile::Arch::host()).map_or("?", |t| t.name);
            return Err(StoreError::NoCodeForHost { detail, baseline });
        }
        // A partial object is named by what it holds too, so it never
        // shadows a complete one.
        let mut h = <sha2::Sha256 as sha2::Digest>::new();
        sha2::Digest::update(&mut h, manifest_bytes);
        for f in &files {
            sha2::Digest::update(&mut h, f.as_bytes());
        }
        let manifest_sha256 = limes_bundle::sha256_hex(manifest_bytes);
        let object = if files.is_empty() { manifest_sha256.clone() } else { format!("{}-partial", hex::encode(sha2::Digest::finalize(h))) };
        let name = manifest.function.name.clone();
        let version = manifest.function.version.clone();
        crash_point("staged");
        let _guard = self.lock()?;
        self.recover_locked();

        // Identity: one publisher per name, unless rotated on purpose.
        let pin_rel = format!("pins/{name}");
        let pinned = self.read_file(&pin_rel, 64)?.map(|b| String::from_utf8_lossy(&b).trim().to_string());
        if let Some(p) = pinned.as_ref().filter(|p| **p != signer) {
            if !policy.rotate_key {
                return Err(StoreError::SignerChanged { name, pinned: p.clone(), offered: signer });
            }
        }
        let current = self.record(&name)?;
        if let Some(cur) = &current {
            let order = version_cmp(&version, &cur.version);
            if !policy.allow_downgrade && order.is_lt() {
                return Err(StoreError::Downgrade { name, installed: cur.version.clone(), offered: version });
            }
            let cur_manifest = cur.manifest_digest();
            if !policy.force && order.is_eq() && cur.version == version && cur_manifest != manifest_sha256 {
                return Err(StoreError::SameVersionDiffers { name, version, installed: cur_manifest, offered: manifest_sha256 });
            }
        }

        let dest = self.root.join("objects").join(&object);
        if std::fs::symlink_metadata(&dest).is_ok() {
            // Reuse an existing object only if it still holds exactly the
            // verified bytes; otherwise the fresh copy replaces it.
            if let Err(why) = verify_object(&dest, manifest_bytes, manifest, &files) {
                tracing::warn!(object = %object, reason = %why, "installed object does not match its manifest; replacing it");
                let aside = self.root.join("tmp").join(format!("bad-{object}-{}", std::process::id()));
                std::fs::rename(&dest, &aside).map_err(io_err(&dest))?;
                let _ = remove_tree(&aside);
            }
        }
        if std::fs::symlink_metadata(&dest).is_err() {
            std::fs::rename(staging, &dest).map_err(io_err(&dest))?;
            // On disk before any record names it.
            sync_dir(&self.root.join("objects"))?;
        }
        crash_point("object-published");
        let all_files: Vec<String> = if files.is_empty() { manifest.files.iter().map(|f| f.path.clone()).collect() } else { files.clone() };
        let record = Installed {
            name: name.clone(),
            version,
            object,
            signer: signer.clone(),
            files,
            manifest_sha256,
            stamps: stamps(&dest, all_files.into_iter())?,
            previous: Vec::new(),
        };
        if candidate {
            // Beside the current version: nothing serves it until
            // `promote` switches to it (the pin moves then too).
            self.write_file(&format!("candidates/{name}.json"), &serde_json::to_vec_pretty(&record).expect("record serializes"))?;
            self.gc_locked()?;
            return self.get_record(record);
        }
        let record = succeed(current, record, policy.keep);
        self.write_file(&format!("functions/{name}.json"), &serde_json::to_vec_pretty(&record).expect("record serializes"))?;
        crash_point("record-published");
        if pinned.as_deref() != Some(signer.as_str()) {
            self.write_file(&pin_rel, format!("{signer}\n").as_bytes())?;
        }
        crash_point("pin-published");
        self.gc_locked()?;
        self.get(&name)
    }

    /// A verified copy of a file with this SHA-256 from any installed
    /// object (so a pull does not download what the device already has).
    pub fn find_blob(&self, sha256: &str) -> Option<Vec<u8>> {
        for r in self.list().ok()? {
            let Ok(f) = self.get(&r.name) else { continue };
            if let Some(e) = f.manifest.files.iter().find(|e| e.sha256 == sha256 && f.has(&e.path)) {
                if let Ok(data) = f.read_verified(&e.path) {
                    return Some(data);
                }
            }
        }
        None
    }

    fn record(&self, name: &str) -> Result<Option<Installed>, StoreError> {
        if !is_valid_name(name) {
            return Err(StoreError::InvalidName(limes_bundle::untrusted(name)));
        }
        let rel = format!("functions/{name}.json");
        let Some(b) = self.read_file(&rel, 1 << 20)? else { return Ok(None) };
        serde_json::from_slice(&b).map(Some).map_err(|e| StoreError::Corrupted { name: name.into(), detail: format!("{}: {e}", self.root.join(rel).display()) })
    }

    /// Resolve an installed function: the object directory must be a real
    /// directory tree of this user that nobody else can write, its manifest
    /// must be the one the record names, and artifact sizes must match.
    /// Callers check artifact bytes with [`InstalledFunction::check_files`]
    /// before mapping or booting them.
    ///
    /// This does not check the signature: the record and the manifest are
    /// only checked against each other, and both live in the store. Anything
    /// that maps or boots a function loads it with [`Store::load`].
    pub fn get(&self, name: &str) -> Result<InstalledFunction, StoreError> {
        self.get_with_manifest(name).map(|(f, _)| f)
    }

    /// Resolve an installed function as [`Store::get`] does, then check its
    /// manifest's signature against `anchors`, which live outside the store:
    /// a store writer who rewrites an artifact, the manifest that hashes it
    /// and the record that names it still has no trusted signature for it.
    /// The record's signer must be the key that signed (so `limes list` can
    /// not be told another name).
    pub fn load(&self, name: &str, anchors: &crate::trust::Anchors) -> Result<InstalledFunction, StoreError> {
        let record = self.record(name)?.ok_or_else(|| self.not_installed(name))?;
        self.load_record(record, anchors)
    }

    /// [`Store::load`] of a given record (a candidate, a kept version).
    pub(crate) fn load_record(&self, record: Installed, anchors: &crate::trust::Anchors) -> Result<InstalledFunction, StoreError> {
        let name = record.name.clone();
        let name = name.as_str();
        let (f, manifest_bytes) = self.record_with_manifest(record)?;
        let sig_path = f.path_of(SIGNATURE_PATH);
        let (sf, sm) = open_checked(&sig_path)?;
        let sig = read_sized(sf, &sm, 64 << 10).map_err(io_err(&sig_path))?;
        let signer = anchors.verify(name, &f.path_of(MANIFEST_PATH), &manifest_bytes, &f.manifest, &String::from_utf8_lossy(&sig))?;
        if f.record.signer != signer.to_string() {
            return Err(StoreError::Tampered {
                path: self.root.join(format!("functions/{name}.json")),
                detail: format!("the record names signer {} but key {signer} signed the manifest", limes_bundle::untrusted(&f.record.signer)),
            });
        }
        Ok(f)
    }

    /// [`Store::get`] of a given record.
    pub(crate) fn get_record(&self, record: Installed) -> Result<InstalledFunction, StoreError> {
        self.record_with_manifest(record).map(|(f, _)| f)
    }

    fn get_with_manifest(&self, name: &str) -> Result<(InstalledFunction, Vec<u8>), StoreError> {
        let record = self.record(name)?.ok_or_else(|| self.not_installed(name))?;
        self.record_with_manifest(record)
    }

    fn record_with_manifest(&self, record: Installed) -> Result<(InstalledFunction, Vec<u8>), StoreError> {
        let name = record.name.clone();
        let name = name.as_str();
        let corrupted = |detail: String| StoreError::Corrupted { name: name.into(), detail };
        if record.object.contains('/') || record.object.starts_with('.') {
            return Err(corrupted(format!("object name {:?} is not a digest", record.object)));
        }
        let dir = self.root.join("objects").join(&record.object);
        let present = check_tree(&dir)?;
        let mpath = dir.join(MANIFEST_PATH);
        let (mf, mm) = open_checked(&mpath)?;
        let bytes = read_sized(mf, &mm, 1 << 20).map_err(io_err(&mpath))?;
        let digest = limes_bundle::sha256_hex(&bytes);
        let want = if record.manifest_sha256.is_empty() { record.object.clone() } else { record.manifest_sha256.clone() };
        if (record.files.is_empty() || !record.manifest_sha256.is_empty()) && digest != want {
            return Err(StoreError::Tampered { path: mpath, detail: "manifest digest does not match the installed record".into() });
        }
        let manifest = Manifest::from_json(&bytes).map_err(|e| corrupted(e.to_string()))?;
        let f = InstalledFunction { record, dir, manifest };
        // Sizes from the walk above (the artifact itself is checked again,
        // by stamp or hash, when it is mapped).
        for e in f.manifest.files.iter().filter(|e| f.has(&e.path)) {
            let p = f.path_of(&e.path);
            let m = present.get(&p).ok_or_else(|| StoreError::Io { path: p.clone(), source: io::ErrorKind::NotFound.into() })?;
            if !m.is_file() {
                return Err(unsafe_path(&p, "is not a regular file", "reinstall the function"));
            }
            if m.len() != e.size {
                return Err(StoreError::Tampered { path: f.path_of(&e.path), detail: format!("{} bytes, manifest says {}", m.len(), e.size) });
            }
        }
        Ok((f, bytes))
    }

    /// The error for a name that is not installed, with the closest
    /// installed name when one is near (a typo).
    fn not_installed(&self, name: &str) -> StoreError {
        let suggestion = self
            .list()
            .ok()
            .into_iter()
            .flatten()
            .map(|r| (edit_distance(name, &r.name), r.name))
            .filter(|(d, n)| *d <= 2 && *d < n.len())
            .min()
            .map(|(_, n)| n);
        StoreError::NotInstalled { name: name.into(), suggestion }
    }

    pub fn list(&self) -> Result<Vec<Installed>, StoreError> {
        let d = self.root.join("functions");
        let mut out = Vec::new();
        for e in std::fs::read_dir(&d).map_err(io_err(&d))? {
            let p = e.map_err(io_err(&d))?.path();
            let Some(stem) = p.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".json")) else { continue };
            if !is_valid_name(stem) {
                continue;
            }
            if let Some(r) = self.record(stem)? {
                out.push(r);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Remove a function. Its publisher stays pinned (see `--rotate-key`).
    pub fn remove(&self, name: &str) -> Result<Installed, StoreError> {
        if !is_valid_name(name) {
            return Err(StoreError::InvalidName(limes_bundle::untrusted(name)));
        }
        let _guard = self.lock()?;
        self.recover_locked();
        let rec = self.record(name)?.ok_or_else(|| self.not_installed(name))?;
        let p = self.root.join("functions").join(format!("{name}.json"));
        std::fs::remove_file(&p).map_err(io_err(&p))?;
        sync_dir(&self.root.join("functions"))?;
        crash_point("record-removed");
        self.gc_locked()?;
        Ok(rec)
    }

    /// Remove objects no record points to, and staging directories left by
    /// killed installs (old enough that no live install can own them).
    /// Callers hold the lock.
    fn gc_locked(&self) -> Result<(), StoreError> {
        let tmp = self.root.join("tmp");
        let stale = std::time::SystemTime::now() - std::time::Duration::from_secs(15 * 60);
        for e in std::fs::read_dir(&tmp).map_err(io_err(&tmp))?.flatten() {
            // DirEntry::metadata does not follow symlinks.
            if e.metadata().and_then(|m| m.modified()).is_ok_and(|t| t < stale) {
                let _ = remove_tree(&e.path());
            }
        }
        let live = self.live_objects()?;
        let objects = self.root.join("objects");
        crash_point("collecting");
        for e in std::fs::read_dir(&objects).map_err(io_err(&objects))?.flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            if !live.contains(&n) {
                // Renamed aside first: an object is either whole in
                // `objects/` or gone from it, never half-removed there.
                let aside = self.root.join("tmp").join(format!("gone-{}-{n}", std::process::id()));
                if std::fs::rename(e.path(), &aside).is_ok() {
                    let _ = remove_tree(&aside);
                }
            }
        }
        crash_point("collected");
        Ok(())
    }

    /// Every object a record, a kept version or a candidate names.
    fn live_objects(&self) -> Result<Vec<String>, StoreError> {
        let mut live: Vec<String> = Vec::new();
        for r in self.list()? {
            live.extend(r.objects().map(String::from));
        }
        for r in self.candidates()? {
            live.push(r.object);
        }
        Ok(live)
    }

    /// Check the whole store (`limes check`): every function's record,
    /// object tree, signed manifest (against `anchors`) and the bytes of
    /// every file it holds (re-hashed), plus what a killed process left
    /// behind and objects no record names. With `repair`, the leftovers and
    /// unreferenced objects are removed (under the lock); a function that
    /// fails its check is reported, never changed: reinstall it.
    pub fn check(&self, anchors: &crate::trust::Anchors, repair: bool) -> Result<CheckReport, StoreError> {
        let mut functions = Vec::new();
        let d = self.root.join("functions");
        let mut names: Vec<String> = std::fs::read_dir(&d)
            .map_err(io_err(&d))?
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_suffix(".json")).filter(|n| is_valid_name(n)).map(String::from))
            .collect();
        names.sort();
        let mut live = Vec::new();
        for name in names {
            let checked = self.load(&name, anchors).and_then(|f| {
                let present: Vec<&str> = f.manifest.files.iter().map(|e| e.path.as_str()).filter(|p| f.has(p)).collect();
                f.check_files(&present, Integrity::Rehash)?;
                Ok((f.record.version.clone(), f.record.object.clone(), f.record.signer.clone(), present.len()))
            });
            functions.push(match checked {
                Ok((version, object, signer, files)) => {
                    live.push(object);
                    FunctionCheck { name, version: Some(version), signer: Some(signer), files_checked: files, problem: None }
                }
                Err(e) => {
                    if let Ok(Some(r)) = self.record(&name) {
                        live.push(r.object);
                    }
                    FunctionCheck { name, version: None, signer: None, files_checked: 0, problem: Some((e.kind(), e.to_string())) }
                }
            });
        }
        // Kept versions and candidates are referenced too.
        live.extend(self.live_objects()?);
        let objects = self.root.join("objects");
        let mut unreferenced: Vec<String> = std::fs::read_dir(&objects)
            .map_err(io_err(&objects))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| !live.contains(n))
            .collect();
        unreferenced.sort();
        let leftovers = self.leftovers();
        if repair && (!leftovers.is_empty() || !unreferenced.is_empty()) {
            let _guard = self.lock()?;
            self.recover_locked();
            self.gc_locked()?;
        }
        Ok(CheckReport { functions, unreferenced_objects: unreferenced, leftovers, repaired: repair })
    }

    /// What killed processes left behind, sorted: staging directories
    /// (`stage-PID-*`) and objects set aside for removal (`gone-PID-*`,
    /// `bad-*-PID`) of processes that no longer run, and temporary files of
    /// interrupted record writes in `functions/` and `pins/` (written only
    /// under the lock, so, seen under it, none is live). Nothing here is
    /// ever loaded: records name only whole objects.
    fn leftovers(&self) -> Vec<PathBuf> {
        let dead = |n: &str| leftover_pid(n).is_some_and(|pid| !process_alive(pid));
        let interrupted = |n: &str| n.starts_with(".tmp-");
        let mut found = Vec::new();
        let dirs = [
            ("tmp", &dead as &dyn Fn(&str) -> bool),
            ("functions", &interrupted),
            ("pins", &interrupted),
            ("candidates", &interrupted),
            ("sync", &interrupted),
        ];
        for (dir, is_leftover) in dirs {
            for e in std::fs::read_dir(self.root.join(dir)).into_iter().flatten().flatten() {
                if is_leftover(&e.file_name().to_string_lossy()) {
                    found.push(e.path());
                }
            }
        }
        found.sort();
        found
    }

    /// Start-up recovery, under the lock: remove the [`Store::leftovers`].
    fn recover_locked(&self) {
        for p in self.leftovers() {
            let _ = remove_tree(&p);
        }
    }
}
