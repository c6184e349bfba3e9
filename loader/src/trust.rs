//! Trust anchors for loading: the keys a function's signed manifest is
//! checked against every time it is loaded (`run`, `serve`, each worker, the
//! shim), and the publisher pinned per function name.
//!
//! They live outside the store, in a trust directory (`--trust-dir`,
//! `$LIMES_TRUST_DIR`, else `$XDG_CONFIG_HOME/limes/trusted`, else
//! `~/.config/limes/trusted`) or in `--trust` files, so whoever can write the
//! store can swap bytes there but cannot add a key or move a pin: the loader
//! never maps native code that no trusted key signed. The directory is
//! checked like the store (no symlinks; owned by this user or root; nobody
//! else may write it) and may not lie inside the store.
//!
//! ```text
//! TRUST/<KEYID>.pub      a trusted minisign public key
//! TRUST/pins/<name>      the key id that publishes <name>
//! ```
//!
//! Must not touch: the store's contents (see [`crate::store`]).

use crate::store::{self, Owners, StoreError};
use limes_bundle::keys::{KeyId, PublicKey, SignatureInfo};
use limes_bundle::manifest::Manifest;
use limes_bundle::TrustedKeys;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// Overrides the default trust directory.
pub const TRUST_DIR_ENV: &str = "LIMES_TRUST_DIR";

/// The trust directory when none is given: `$LIMES_TRUST_DIR`, else
/// `$XDG_CONFIG_HOME/limes/trusted`, else `~/.config/limes/trusted`, else
/// `/etc/limes/trusted` (no home: a system service).
pub fn default_dir() -> PathBuf {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(d) = var(TRUST_DIR_ENV) {
        return d.into();
    }
    if let Some(x) = var("XDG_CONFIG_HOME") {
        return Path::new(&x).join("limes/trusted");
    }
    match var("HOME") {
        Some(h) => Path::new(&h).join(".config/limes/trusted"),
        None => PathBuf::from("/etc/limes/trusted"),
    }
}

/// What a load checks a function's signature against.
#[derive(Debug, Clone)]
pub struct Anchors {
    /// Given on the command line (or by the node, for the shim).
    explicit: TrustedKeys,
    /// `explicit` and the trust directory's, as last read.
    keys: TrustedKeys,
    /// The trust directory (pins live there), whether or not it exists yet.
    dir: PathBuf,
}

impl Anchors {
    /// The keys given explicitly (`--trust`, files or directories of `.pub`
    /// files) plus every key in the trust directory `dir`, which must not lie
    /// inside `store_root` and must be safe (see the module docs). A missing
    /// directory holds no keys.
    pub fn load(explicit: &[PathBuf], dir: PathBuf, store_root: &Path) -> Result<Anchors, StoreError> {
        if let (Ok(d), Ok(s)) = (dir.canonicalize(), store_root.canonicalize()) {
            if d.starts_with(&s) {
                return Err(StoreError::Unsafe {
                    path: dir,
                    problem: "is inside the store, whose writer could then choose the keys".into(),
                    fix: "keep trusted keys outside the store (--trust-dir)".into(),
                });
            }
        }
        let explicit = if explicit.is_empty() { TrustedKeys::default() } else { TrustedKeys::load(explicit)? };
        Anchors { keys: explicit.clone(), explicit, dir }.reload()
    }

    /// The same anchors with the trust directory read again (a long-running
    /// server picks up a key `limes install` added).
    pub fn reload(&self) -> Result<Anchors, StoreError> {
        let mut keys = self.explicit.clone();
        if !self.dir.as_os_str().is_empty() {
            if let Some(found) = keys_in(&self.dir)? {
                keys = keys.merged(&found);
            }
        }
        Ok(Anchors { explicit: self.explicit.clone(), keys, dir: self.dir.clone() })
    }

    /// Exactly these keys and no pins (the containerd shim: the node's keys,
    /// passed to its workers on their command line).
    pub fn from_keys(keys: TrustedKeys) -> Anchors {
        Anchors { explicit: keys.clone(), keys, dir: PathBuf::new() }
    }

    pub fn keys(&self) -> &TrustedKeys {
        &self.keys
    }

    /// These anchors with `keys` trusted too.
    pub fn with_keys(mut self, keys: &TrustedKeys) -> Anchors {
        self.explicit = self.explicit.merged(keys);
        self.keys = self.keys.merged(keys);
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The key id pinned as `name`'s publisher, if any.
    pub fn pin(&self, name: &str) -> Result<Option<String>, StoreError> {
        if self.dir.as_os_str().is_empty() || !store::is_valid_name(name) {
            return Ok(None);
        }
        let pins = self.dir.join("pins");
        if !exists_checked(&pins)? {
            return Ok(None);
        }
        Ok(read_checked(&pins.join(name), 64)?.map(|b| String::from_utf8_lossy(&b).trim().to_string()))
    }

    /// Check a manifest and its signature as found in the store: signed by a
    /// trusted key, for the function `name`, by its pinned publisher.
    /// `m` is `manifest` already parsed (by the store, from these bytes), so
    /// a load parses it once. Returns the signer.
    pub fn verify(&self, name: &str, manifest_path: &Path, manifest: &[u8], m: &Manifest, signature: &str) -> Result<KeyId, StoreError> {
        if self.keys.keys().is_empty() {
            return Err(StoreError::NoTrust { name: name.into(), dir: self.dir.clone() });
        }
        // What `TrustedKeys::verify_manifest` checks, on the parsed manifest.
        let info = SignatureInfo::parse(signature)?;
        let signer = self.keys.verify(manifest, &info)?.id();
        limes_bundle::archive::check_trusted_comment(m, &info.trusted_comment)?;
        if m.function.name != name {
            return Err(StoreError::Tampered {
                path: manifest_path.to_path_buf(),
                detail: format!("the record is for {name} but the signed manifest is for {}", limes_bundle::untrusted(&m.function.name)),
            });
        }
        if let Some(pinned) = self.pin(name)?.filter(|p| *p != signer.to_string()) {
            return Err(StoreError::SignerChanged { name: name.into(), pinned, offered: signer.to_string() });
        }
        Ok(signer)
    }

    /// [`Anchors::adopt`] for `f`, just installed from `keys`: the key among
    /// them that signed it. False when none did.
    pub fn adopt_signer(&self, keys: &TrustedKeys, f: &store::InstalledFunction, rotate: bool) -> Result<bool, StoreError> {
        let Some(signer) = keys.keys().iter().find(|k| k.id().to_string() == f.record.signer) else { return Ok(false) };
        self.adopt(&f.record.name, signer, rotate)?;
        Ok(true)
    }

    /// After an install by `signer`: keep its key and pin it as `name`'s
    /// publisher in the trust directory, so later loads accept exactly it.
    /// A pin to another key moves only with `rotate`.
    pub fn adopt(&self, name: &str, signer: &PublicKey, rotate: bool) -> Result<(), StoreError> {
        if self.dir.as_os_str().is_empty() {
            return Ok(());
        }
        let pins = self.dir.join("pins");
        for d in [&self.dir, &pins] {
            match std::fs::DirBuilder::new().recursive(true).mode(0o700).create(d) {
                Ok(()) => {}
                Err(e) => return Err(StoreError::Io { path: d.clone(), source: e }),
            }
            exists_checked(d)?;
        }
        let id = signer.id().to_string();
        if let Some(p) = self.pin(name)?.filter(|p| *p != id) {
            if !rotate {
                return Err(StoreError::SignerChanged { name: name.into(), pinned: p, offered: id });
            }
        }
        let key_file = self.dir.join(format!("{id}.pub"));
        if read_checked(&key_file, 4096)?.is_none() {
            store::write_atomic(&key_file, signer.to_text().as_bytes())?;
        }
        if self.pin(name)?.as_deref() != Some(id.as_str()) {
            store::write_atomic(&pins.join(name), format!("{id}\n").as_bytes())?;
        }
        Ok(())
    }
}

/// Keys given as base64 lines on a worker's command line.
pub fn keys_from_args(lines: &[String]) -> Result<TrustedKeys, StoreError> {
    let keys = lines.iter().map(|l| PublicKey::from_text(l, "--trusted-key")).collect::<Result<Vec<_>, _>>()?;
    Ok(TrustedKeys::new(keys))
}

/// Whether the directory `p` exists (and is a safe anchor).
fn exists_checked(p: &Path) -> Result<bool, StoreError> {
    match std::fs::symlink_metadata(p) {
        Ok(m) => store::check_owner(p, &m, true, Owners::MeOrRoot).map(|_| true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(StoreError::Io { path: p.to_path_buf(), source: e }),
    }
}

/// Read at most `limit` bytes of a safe anchor file (`None` if absent).
fn read_checked(p: &Path, limit: u64) -> Result<Option<Vec<u8>>, StoreError> {
    store::read_nofollow_by(p, limit, Owners::MeOrRoot)
}

/// The `.pub` keys of the trust directory `dir` (`None` if it does not exist).
fn keys_in(dir: &Path) -> Result<Option<TrustedKeys>, StoreError> {
    if !exists_checked(dir)? {
        return Ok(None);
    }
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| StoreError::Io { path: dir.to_path_buf(), source: e })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "pub"))
        .collect();
    names.sort();
    let mut keys = Vec::new();
    for p in names {
        let Some(bytes) = read_checked(&p, 4096)? else { continue };
        keys.push(PublicKey::from_text(&String::from_utf8_lossy(&bytes), &p.display().to_string())?);
    }
    Ok(Some(TrustedKeys::new(keys)))
}
