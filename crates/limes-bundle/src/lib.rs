//! The bundle format shared by `limes-pack` and `limes`: the manifest and the file layout
//! ([`manifest`]), the engine profile and CPU tiers ([`profile`]), deterministic writing and
//! bounded, verifying reading ([`archive`]), minisign-compatible keys ([`keys`]).
//! Must not touch: any compiler (the thin loader links this crate), the network, paths it is
//! not given. Signing is behind the `sign` feature; verifying is always on.

pub mod archive;
pub mod keys;
pub mod manifest;
pub mod outbound;
pub mod profile;

pub use archive::{BundleLimits, VerifiedBundle};
pub use keys::{KeyId, PublicKey, TrustedKeys};
pub use manifest::Manifest;
pub use profile::{EngineProfile, Tier};

use sha2::{Digest, Sha256};

/// Lower-case hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// How much of an attacker-controlled string an error message quotes.
const QUOTE_LIMIT: usize = 64;

/// A short, escaped, quoted prefix of an untrusted string, safe to put in an
/// error message or on a terminal (no control characters, bounded length).
pub fn untrusted(s: &str) -> String {
    untrusted_bytes(s.as_bytes())
}

/// [`untrusted`] for bytes that may not be UTF-8.
pub fn untrusted_bytes(b: &[u8]) -> String {
    let cut = &b[..b.len().min(QUOTE_LIMIT)];
    let text: String = String::from_utf8_lossy(cut).escape_debug().collect();
    if b.len() > QUOTE_LIMIT {
        format!("\"{text}\"... ({} bytes)", b.len())
    } else {
        format!("\"{text}\"")
    }
}

/// Everything that can go wrong reading, verifying or writing a bundle.
/// Every variant names what broke, so a CI log says where to look.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("cannot read or write {path}")]
    Io { path: String, source: std::io::Error },
    #[error("not a limes bundle: the file is {0} (a bundle is NAME-VERSION.limes, written by `limes-pack build`)")]
    NotABundle(String),
    #[error("{0} is a directory, not a bundle (a bundle is NAME-VERSION.limes, written by `limes-pack build`)")]
    IsDirectory(String),
    #[error("bundle is not a valid zstd stream: {0}")]
    Compression(String),
    #[error("bundle archive is malformed: {0}")]
    Archive(String),
    #[error("bundle exceeds a size limit: {0}")]
    TooLarge(String),
    #[error("unsafe entry in bundle: {0}")]
    UnsafeEntry(String),
    #[error("manifest is invalid: {0}")]
    Manifest(String),
    #[error("bundle is not signed (no manifest.json.minisig); sign it with `limes-pack sign`")]
    Unsigned,
    #[error("signature is invalid: {0}")]
    Signature(String),
    #[error("bundle is signed by key {0}, which is not trusted")]
    UntrustedKey(KeyId),
    #[error("digest mismatch for {path}: manifest says sha256 {expected}, content is {actual}")]
    DigestMismatch { path: String, expected: String, actual: String },
    #[error("size mismatch for {path}: manifest says {expected} bytes, entry has {actual}")]
    SizeMismatch { path: String, expected: u64, actual: u64 },
    #[error("file {0} is listed in the manifest but missing from the bundle")]
    MissingFile(String),
    #[error("entry {0} is not listed in the manifest")]
    UnlistedFile(String),
    #[error("key error: {0}")]
    Key(String),
}

impl BundleError {
    /// Whether the bytes failed verification (as opposed to the reader
    /// failing to read them, or a key that could not be loaded).
    pub fn is_verification(&self) -> bool {
        match self {
            BundleError::Io { .. } | BundleError::Key(_) | BundleError::IsDirectory(_) => false,
            BundleError::NotABundle(_)
            | BundleError::Compression(_)
            | BundleError::Archive(_)
            | BundleError::TooLarge(_)
            | BundleError::UnsafeEntry(_)
            | BundleError::Manifest(_)
            | BundleError::Unsigned
            | BundleError::Signature(_)
            | BundleError::UntrustedKey(_)
            | BundleError::DigestMismatch { .. }
            | BundleError::SizeMismatch { .. }
            | BundleError::MissingFile(_)
            | BundleError::UnlistedFile(_) => true,
        }
    }

    pub(crate) fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        BundleError::Io { path: path.as_ref().display().to_string(), source }
    }
}
