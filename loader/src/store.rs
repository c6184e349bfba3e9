//! The local store of installed functions.
//!
//! ```text
//! ROOT/objects/<sha256 of manifest>/   verified bundle contents, read-only
//! ROOT/functions/<name>.json           which object a name points to
//! ROOT/tmp/                            staging; never read by the runtime
//! ROOT/lock                            serialises installs and removals
//! ```
//!
//! A bundle is streamed into a staging directory while every digest is
//! checked, and only renamed into `objects/` after the whole bundle verified
//! against a trusted key. The runtime maps native code only from `objects/`,
//! so no unverified byte is ever mapped. Every publication step is a rename,
//! so a crash at any point leaves either the old state or the new one.

use limes_bundle::archive::{read_bundle, BundleLimits, FileSink, SignaturePolicy, VerifiedBundle};
use limes_bundle::manifest::{FileEntry, Manifest, MANIFEST_PATH, SIGNATURE_PATH};
use limes_bundle::{BundleError, TrustedKeys};
use serde::{Deserialize, Serialize};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store I/O on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("no function named {0:?} is installed (see `limes list`)")]
    NotInstalled(String),
    #[error(
        "refusing to replace {name} {installed} with older version {offered} (rollback protection); \
         pass --allow-downgrade to do it anyway"
    )]
    Downgrade { name: String, installed: String, offered: String },
    #[error("store entry for {name} is corrupted: {detail}; reinstall it with `limes install`")]
    Corrupted { name: String, detail: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_path_buf(), source }
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
}

/// An installed function, resolved to its verified files.
#[derive(Debug, Clone)]
pub struct InstalledFunction {
    pub record: Installed,
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl InstalledFunction {
    pub fn path_of(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// Whether the object holds `rel` (partial pulls hold a subset).
    pub fn has(&self, rel: &str) -> bool {
        self.record.files.is_empty() || self.record.files.iter().any(|f| f == rel)
    }
}

pub struct Store {
    root: PathBuf,
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
            std::fs::create_dir_all(parent)?;
        }
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&path)?;
        io::copy(data, &mut f)?;
        f.sync_all()
    }
}

/// Compare dotted numeric versions (`1.2.10` > `1.2.9`); pre-release or
/// build suffixes compare as text after the numbers.
pub fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let split = |v: &str| -> (Vec<u64>, String) {
        let (core, rest) = v.split_once(['-', '+']).map(|(c, r)| (c, r.to_string())).unwrap_or((v, String::new()));
        (core.split('.').map(|p| p.parse().unwrap_or(0)).collect(), rest)
    };
    let (na, ra) = split(a);
    let (nb, rb) = split(b);
    na.cmp(&nb).then_with(|| match (ra.is_empty(), rb.is_empty()) {
        (true, false) => std::cmp::Ordering::Greater,
        (false, true) => std::cmp::Ordering::Less,
        _ => ra.cmp(&rb),
    })
}

fn make_read_only(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let p = e.path();
        if e.file_type()?.is_dir() {
            make_read_only(&p)?;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o555))?;
        } else {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o444))?;
        }
    }
    Ok(())
}

fn remove_tree(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fn writable(d: &Path) -> io::Result<()> {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))?;
        for e in std::fs::read_dir(d)? {
            let e = e?;
            if e.file_type()?.is_dir() {
                writable(&e.path())?;
            }
        }
        Ok(())
    }
    if !dir.exists() {
        return Ok(());
    }
    let _ = writable(dir);
    std::fs::remove_dir_all(dir)
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

impl Store {
    pub fn open(root: impl Into<PathBuf>) -> Result<Store, StoreError> {
        let root = root.into();
        for d in ["objects", "functions", "tmp"] {
            let p = root.join(d);
            std::fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        Ok(Store { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn lock(&self) -> Result<std::fs::File, StoreError> {
        let p = self.root.join("lock");
        let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&p).map_err(io_err(&p))?;
        f.lock().map_err(io_err(&p))?;
        Ok(f)
    }

    /// Verify `bundle` against `keys` and unpack it into a fresh staging
    /// directory under `tmp/`. The directory is removed on any error.
    pub fn stage(&self, bundle: &Path, keys: &TrustedKeys, limits: &BundleLimits) -> Result<(tempfile::TempDir, VerifiedBundle), StoreError> {
        let tmp = self.root.join("tmp");
        let staging = tempfile::Builder::new().prefix("stage-").tempdir_in(&tmp).map_err(io_err(&tmp))?;
        let v = read_bundle(bundle, limits, SignaturePolicy::Require(keys), &mut DirSink { dir: staging.path() })?;
        let write = |name: &str, data: &[u8]| -> Result<(), StoreError> {
            let p = staging.path().join(name);
            let mut f = std::fs::File::create(&p).map_err(io_err(&p))?;
            f.write_all(data).and_then(|_| f.sync_all()).map_err(io_err(&p))
        };
        write(MANIFEST_PATH, &v.manifest_bytes)?;
        write(SIGNATURE_PATH, v.signature.as_deref().unwrap_or("").as_bytes())?;
        make_read_only(staging.path()).map_err(io_err(staging.path()))?;
        Ok((staging, v))
    }

    /// Remove a staging directory from [`Store::stage`] (its files are
    /// read-only, which a plain drop cannot remove as a non-root user).
    pub fn discard(&self, staging: tempfile::TempDir) {
        let _ = remove_tree(&staging.keep());
    }

    /// Verify and install `bundle`. Installing the same bundle twice is a
    /// no-op; an older version than the installed one is refused unless
    /// `allow_downgrade`.
    pub fn install(&self, bundle: &Path, keys: &TrustedKeys, allow_downgrade: bool) -> Result<InstalledFunction, StoreError> {
        let (staging, v) = self.stage(bundle, keys, &BundleLimits::default())?;
        let signer = v.signer.map(|k| k.to_string()).unwrap_or_default();
        self.publish(staging, &v.manifest, &v.manifest_bytes, signer, Vec::new(), allow_downgrade)
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
        allow_downgrade: bool,
    ) -> Result<InstalledFunction, StoreError> {
        let info = limes_bundle::keys::SignatureInfo::parse(signature)?;
        let signer = keys.verify(manifest_bytes, &info)?.id().to_string();
        let manifest = Manifest::from_json(manifest_bytes)?;
        let tmp = self.root.join("tmp");
        let staging = tempfile::Builder::new().prefix("stage-").tempdir_in(&tmp).map_err(io_err(&tmp))?;
        let mut present = Vec::new();
        for (path, data) in files {
            let entry = manifest.file(path).ok_or_else(|| BundleError::UnlistedFile(path.clone()))?;
            let actual = limes_bundle::sha256_hex(data);
            if actual != entry.sha256 || data.len() as u64 != entry.size {
                return Err(BundleError::DigestMismatch { path: path.clone(), expected: entry.sha256.clone(), actual }.into());
            }
            DirSink { dir: staging.path() }.file(entry, &mut &data[..]).map_err(io_err(staging.path()))?;
            present.push(path.clone());
        }
        for (name, data) in [(MANIFEST_PATH, manifest_bytes), (SIGNATURE_PATH, signature.as_bytes())] {
            let p = staging.path().join(name);
            std::fs::write(&p, data).map_err(io_err(&p))?;
        }
        make_read_only(staging.path()).map_err(io_err(staging.path()))?;
        present.sort();
        self.publish(staging, &manifest, manifest_bytes, signer, present, allow_downgrade)
    }

    /// Move a verified staging directory into `objects/` and point the
    /// function's record at it, under the store lock.
    fn publish(
        &self,
        staging: tempfile::TempDir,
        manifest: &Manifest,
        manifest_bytes: &[u8],
        signer: String,
        files: Vec<String>,
        allow_downgrade: bool,
    ) -> Result<InstalledFunction, StoreError> {
        // A partial object is named by what it holds too, so it never
        // shadows a complete one.
        let mut h = <sha2::Sha256 as sha2::Digest>::new();
        sha2::Digest::update(&mut h, manifest_bytes);
        for f in &files {
            sha2::Digest::update(&mut h, f.as_bytes());
        }
        let object = if files.is_empty() { limes_bundle::sha256_hex(manifest_bytes) } else { format!("{}-partial", hex::encode(sha2::Digest::finalize(h))) };
        let name = manifest.function.name.clone();
        let _guard = self.lock()?;
        if let Some(cur) = self.record(&name)? {
            if !allow_downgrade && version_cmp(&manifest.function.version, &cur.version).is_lt() {
                return Err(StoreError::Downgrade { name, installed: cur.version, offered: manifest.function.version.clone() });
            }
        }
        let dest = self.root.join("objects").join(&object);
        if dest.exists() {
            let _ = remove_tree(staging.path());
        } else {
            let kept = staging.keep();
            std::fs::rename(&kept, &dest).map_err(|e| {
                let _ = remove_tree(&kept);
                StoreError::Io { path: dest.clone(), source: e }
            })?;
        }
        let record = Installed { name: name.clone(), version: manifest.function.version.clone(), object, signer, files };
        let rec_path = self.root.join("functions").join(format!("{name}.json"));
        let mut tmp = tempfile::Builder::new().prefix(".rec-").tempfile_in(self.root.join("functions")).map_err(io_err(&rec_path))?;
        tmp.write_all(&serde_json::to_vec_pretty(&record).expect("record serializes"))
            .and_then(|_| tmp.as_file().sync_all())
            .map_err(io_err(&rec_path))?;
        tmp.persist(&rec_path).map_err(|e| StoreError::Io { path: rec_path.clone(), source: e.error })?;
        self.gc_locked()?;
        self.get(&name)
    }

    /// A verified copy of a file with this SHA-256 from any installed
    /// object (so a pull does not download what the device already has).
    pub fn find_blob(&self, sha256: &str) -> Option<Vec<u8>> {
        for r in self.list().ok()? {
            let Ok(f) = self.get(&r.name) else { continue };
            if let Some(e) = f.manifest.files.iter().find(|e| e.sha256 == sha256 && f.has(&e.path)) {
                if let Ok(data) = std::fs::read(f.path_of(&e.path)) {
                    if limes_bundle::sha256_hex(&data) == sha256 {
                        return Some(data);
                    }
                }
            }
        }
        None
    }

    fn record(&self, name: &str) -> Result<Option<Installed>, StoreError> {
        let p = self.root.join("functions").join(format!("{name}.json"));
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| StoreError::Corrupted {
                name: name.into(),
                detail: format!("{}: {e}", p.display()),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::Io { path: p, source: e }),
        }
    }

    /// Resolve an installed function, with cheap integrity checks (the
    /// manifest's digest is the object's name; artifact sizes match).
    pub fn get(&self, name: &str) -> Result<InstalledFunction, StoreError> {
        let valid_name = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) && !name.starts_with('.');
        if !valid_name {
            return Err(StoreError::NotInstalled(name.into()));
        }
        let record = self.record(name)?.ok_or_else(|| StoreError::NotInstalled(name.into()))?;
        let corrupted = |detail: String| StoreError::Corrupted { name: name.into(), detail };
        let dir = self.root.join("objects").join(&record.object);
        let bytes = std::fs::read(dir.join(MANIFEST_PATH)).map_err(|e| corrupted(format!("manifest unreadable: {e}")))?;
        if record.files.is_empty() && limes_bundle::sha256_hex(&bytes) != record.object {
            return Err(corrupted("manifest digest does not match the object name".into()));
        }
        let manifest = Manifest::from_json(&bytes).map_err(|e| corrupted(e.to_string()))?;
        for f in manifest.files.iter().filter(|f| record.files.is_empty() || record.files.contains(&f.path)) {
            let len = std::fs::metadata(dir.join(&f.path)).map(|m| m.len()).map_err(|e| corrupted(format!("{}: {e}", f.path)))?;
            if len != f.size {
                return Err(corrupted(format!("{} is {len} bytes, manifest says {}", f.path, f.size)));
            }
        }
        Ok(InstalledFunction { record, dir, manifest })
    }

    pub fn list(&self) -> Result<Vec<Installed>, StoreError> {
        let d = self.root.join("functions");
        let mut out = Vec::new();
        for e in std::fs::read_dir(&d).map_err(io_err(&d))? {
            let p = e.map_err(io_err(&d))?.path();
            let Some(stem) = p.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".json")) else { continue };
            if stem.starts_with('.') {
                continue;
            }
            if let Some(r) = self.record(stem)? {
                out.push(r);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub fn remove(&self, name: &str) -> Result<Installed, StoreError> {
        let _guard = self.lock()?;
        let rec = self.record(name)?.ok_or_else(|| StoreError::NotInstalled(name.into()))?;
        let p = self.root.join("functions").join(format!("{name}.json"));
        std::fs::remove_file(&p).map_err(io_err(&p))?;
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
            if e.metadata().and_then(|m| m.modified()).is_ok_and(|t| t < stale) {
                let _ = remove_tree(&e.path());
            }
        }
        let live: Vec<String> = self.list()?.into_iter().map(|r| r.object).collect();
        let objects = self.root.join("objects");
        for e in std::fs::read_dir(&objects).map_err(io_err(&objects))?.flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            if !live.contains(&n) {
                let _ = remove_tree(&e.path());
            }
        }
        Ok(())
    }
}
