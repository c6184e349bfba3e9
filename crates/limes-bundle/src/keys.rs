//! Minisign-compatible Ed25519 keys and signatures.
//!
//! Bundles are signed in minisign's format so that the stock `minisign` tool
//! can check a bundle's manifest on its own (`minisign -Vm manifest.json`).
//! Verification uses the dependency-free `minisign-verify` crate. Signing
//! (feature `sign`) is implemented here with deterministic Ed25519 (RFC 8032)
//! so that a signed bundle is as reproducible as an unsigned one: the same
//! source and key always give the same bytes.

use crate::BundleError;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use std::fmt;
use std::path::{Path, PathBuf};

/// Minisign key id: 8 bytes, shown as 16 upper-case hex digits like the
/// `minisign` tool does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; 8]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016X}", u64::from_le_bytes(self.0))
    }
}

fn key_err(m: impl Into<String>) -> BundleError {
    BundleError::Key(m.into())
}

/// The base64 payload line of a minisign text file: the first non-empty line
/// that is not a comment.
fn payload_line(text: &str) -> Option<&str> {
    text.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with("untrusted comment:") && !l.starts_with("trusted comment:"))
}

/// A public key that may sign bundles.
#[derive(Clone)]
pub struct PublicKey {
    id: KeyId,
    raw: [u8; 32],
    /// Where it came from, for messages.
    pub source: String,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({} from {})", self.id, self.source)
    }
}

impl PublicKey {
    /// Parse a minisign public key: a `.pub` file's text or its bare base64 line.
    pub fn from_text(text: &str, source: &str) -> Result<PublicKey, BundleError> {
        let line = payload_line(text).ok_or_else(|| key_err(format!("{source}: no key in file")))?;
        let bytes = B64.decode(line).map_err(|_| key_err(format!("{source}: public key is not valid base64")))?;
        if bytes.len() > 42 && &bytes[..2] == b"Ed" && text.contains("secret key") {
            return Err(key_err(format!(
                "{source} is a secret key; pass the public key (the .pub file `limes-pack keygen` wrote beside it) and keep this one private"
            )));
        }
        if bytes.len() != 42 || &bytes[..2] != b"Ed" {
            return Err(key_err(format!("{source}: not a minisign Ed25519 public key (expected 42 bytes starting with \"Ed\")")));
        }
        // The format's own parser validates the line (its errors).
        minisign_verify::PublicKey::from_base64(line).map_err(|e| key_err(format!("{source}: {e}")))?;
        Ok(PublicKey { id: KeyId(bytes[2..10].try_into().unwrap()), raw: bytes[10..42].try_into().unwrap(), source: source.to_string() })
    }

    pub fn from_file(path: &Path) -> Result<PublicKey, BundleError> {
        let text = std::fs::read_to_string(path).map_err(|e| BundleError::io(path, e))?;
        PublicKey::from_text(&text, &path.display().to_string())
    }

    pub fn id(&self) -> KeyId {
        self.id
    }

    /// The `.pub` file text, readable by `minisign -p`.
    pub fn to_text(&self) -> String {
        format!("untrusted comment: limes-pack public key {}\n{}\n", self.id, self.to_base64())
    }

    /// The key's one base64 line (what [`PublicKey::from_text`] also reads).
    pub fn to_base64(&self) -> String {
        let mut b = Vec::with_capacity(42);
        b.extend_from_slice(b"Ed");
        b.extend_from_slice(&self.id.0);
        b.extend_from_slice(&self.raw);
        B64.encode(b)
    }
}

/// A parsed detached signature (`manifest.json.minisig`).
pub struct SignatureInfo {
    pub key_id: KeyId,
    pub trusted_comment: String,
    /// Ed25519 over BLAKE2b-512 of the signed data ("ED", prehashed).
    signature: [u8; 64],
    /// Ed25519 over `signature` and the trusted comment (minisign's global
    /// signature: the comment is signed too).
    global: [u8; 64],
}

impl SignatureInfo {
    pub fn parse(text: &str) -> Result<SignatureInfo, BundleError> {
        let bad = |m: &str| BundleError::Signature(m.to_string());
        // The format's own parser first (its errors for malformed text).
        let parsed = minisign_verify::Signature::decode(text).map_err(|e| BundleError::Signature(e.to_string()))?;
        let line = payload_line(text).ok_or_else(|| bad("no signature line"))?;
        let bytes = B64.decode(line).map_err(|_| bad("signature is not valid base64"))?;
        if bytes.len() != 74 {
            return Err(bad("signature line has the wrong length"));
        }
        if &bytes[..2] != b"ED" {
            return Err(bad("signature is not a prehashed Ed25519 (\"ED\") signature"));
        }
        let global_line =
            text.lines().map(str::trim).skip_while(|l| !l.starts_with("trusted comment:")).nth(1).ok_or_else(|| bad("no global signature line"))?;
        let global = B64.decode(global_line).map_err(|_| bad("global signature is not valid base64"))?;
        Ok(SignatureInfo {
            key_id: KeyId(bytes[2..10].try_into().unwrap()),
            trusted_comment: parsed.trusted_comment().to_string(),
            signature: bytes[10..74].try_into().unwrap(),
            global: global.try_into().map_err(|_| bad("global signature has the wrong length"))?,
        })
    }
}

/// The set of public keys a verifier accepts, matched by key id.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    keys: Vec<PublicKey>,
}

impl TrustedKeys {
    pub fn new(keys: Vec<PublicKey>) -> Self {
        TrustedKeys { keys }
    }

    /// Load keys from files and directories (every `*.pub` file inside).
    pub fn load(paths: &[PathBuf]) -> Result<TrustedKeys, BundleError> {
        let mut keys = Vec::new();
        for p in paths {
            if p.is_dir() {
                let mut entries: Vec<_> = std::fs::read_dir(p)
                    .map_err(|e| BundleError::io(p, e))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "pub") && p.is_file())
                    .collect();
                entries.sort();
                for e in entries {
                    keys.push(PublicKey::from_file(&e)?);
                }
            } else {
                keys.push(PublicKey::from_file(p)?);
            }
        }
        if keys.is_empty() {
            return Err(key_err("no trusted public keys found (expected .pub files)"));
        }
        Ok(TrustedKeys { keys })
    }

    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }

    /// These keys and `other`'s, each once (by key id).
    pub fn merged(mut self, other: &TrustedKeys) -> TrustedKeys {
        for k in &other.keys {
            if !self.keys.iter().any(|m| m.id == k.id) {
                self.keys.push(k.clone());
            }
        }
        self
    }

    /// The trusted key with this id.
    pub fn key(&self, id: KeyId) -> Option<&PublicKey> {
        self.keys.iter().find(|k| k.id == id)
    }

    /// Verify `sig` over `data`, as minisign does for a prehashed ("ED")
    /// signature: Ed25519 over BLAKE2b-512 of `data`, and the global
    /// signature over the signature and its trusted comment. Returns the key
    /// that signed it. (ed25519-dalek: every load verifies, and it is about
    /// three times faster than minisign-verify's portable code.)
    pub fn verify(&self, data: &[u8], sig: &SignatureInfo) -> Result<&PublicKey, BundleError> {
        use blake2::Digest as _;
        let key = self.keys.iter().find(|k| k.id == sig.key_id).ok_or(BundleError::UntrustedKey(sig.key_id))?;
        let fail = |what: &str| BundleError::Signature(format!("does not match the manifest under key {} ({what})", key.id));
        let vk = ed25519_dalek::VerifyingKey::from_bytes(&key.raw).map_err(|_| fail("the public key is not a valid Ed25519 point"))?;
        let prehash = blake2::Blake2b512::digest(data);
        vk.verify_strict(&prehash, &ed25519_dalek::Signature::from_bytes(&sig.signature)).map_err(|_| fail("signature verification failed"))?;
        let mut global = Vec::with_capacity(64 + sig.trusted_comment.len());
        global.extend_from_slice(&sig.signature);
        global.extend_from_slice(sig.trusted_comment.as_bytes());
        vk.verify_strict(&global, &ed25519_dalek::Signature::from_bytes(&sig.global)).map_err(|_| fail("the trusted comment's signature does not verify"))?;
        Ok(key)
    }

    /// The one way a detached manifest becomes trusted: the signature must
    /// be by a trusted key, the manifest must parse and validate, and the
    /// signed trusted comment must name this manifest's function and
    /// version. Returns the signer and the manifest.
    pub fn verify_manifest(&self, manifest_bytes: &[u8], signature: &str) -> Result<(KeyId, crate::Manifest), BundleError> {
        let info = SignatureInfo::parse(signature)?;
        let signer = self.verify(manifest_bytes, &info)?.id;
        let manifest = crate::Manifest::from_json(manifest_bytes)?;
        crate::archive::check_trusted_comment(&manifest, &info.trusted_comment)?;
        Ok((signer, manifest))
    }
}

#[cfg(feature = "sign")]
pub use signing::SecretKey;

#[cfg(feature = "sign")]
mod signing {
    use super::*;
    use blake2::digest::consts::U32;
    use blake2::{Blake2b, Blake2b512, Digest};
    use ed25519_dalek::{Signer, SigningKey};

    /// A minisign secret key without password protection (`minisign -G -W`
    /// or `limes-pack keygen`). CI keeps it in a secret; the packer never
    /// writes it anywhere but the keygen output.
    pub struct SecretKey {
        id: KeyId,
        signing: SigningKey,
    }

    impl fmt::Debug for SecretKey {
        // Never print key material.
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "SecretKey({})", self.id)
        }
    }

    const SK_LEN: usize = 2 + 2 + 2 + 32 + 8 + 8 + 8 + 64 + 32;

    fn checksum(id: &KeyId, sk64: &[u8]) -> [u8; 32] {
        let mut h = Blake2b::<U32>::new();
        h.update(b"Ed");
        h.update(id.0);
        h.update(sk64);
        h.finalize().into()
    }

    impl SecretKey {
        pub fn generate() -> Result<SecretKey, BundleError> {
            let mut seed = [0u8; 32];
            let mut id = [0u8; 8];
            getrandom::fill(&mut seed).map_err(|e| key_err(format!("no randomness: {e}")))?;
            getrandom::fill(&mut id).map_err(|e| key_err(format!("no randomness: {e}")))?;
            Ok(SecretKey { id: KeyId(id), signing: SigningKey::from_bytes(&seed) })
        }

        /// Parse a minisign secret key file's text.
        pub fn from_text(text: &str, source: &str) -> Result<SecretKey, BundleError> {
            let line = payload_line(text).ok_or_else(|| key_err(format!("{source}: no key in file")))?;
            let b = B64.decode(line).map_err(|_| key_err(format!("{source}: secret key is not valid base64")))?;
            if b.len() != SK_LEN || &b[..2] != b"Ed" {
                return Err(key_err(format!("{source}: not a minisign Ed25519 secret key (is this the .pub file?)")));
            }
            if b[2..4] != [0, 0] {
                return Err(key_err(format!(
                    "{source}: secret key is password-protected; limes-pack needs an unencrypted key \
                     (create one with `limes-pack keygen` or `minisign -G -W`)"
                )));
            }
            if &b[4..6] != b"B2" {
                return Err(key_err(format!("{source}: unknown checksum algorithm in secret key")));
            }
            let id = KeyId(b[54..62].try_into().unwrap());
            let sk64 = &b[62..126];
            // `minisign -G -W` (0.11) leaves the checksum of unencrypted keys
            // zeroed; the halves check below still catches corruption.
            let stored = &b[126..158];
            if checksum(&id, sk64) != stored && stored.iter().any(|&x| x != 0) {
                return Err(key_err(format!("{source}: secret key checksum mismatch (corrupted key)")));
            }
            let signing = SigningKey::from_bytes(sk64[..32].try_into().unwrap());
            if signing.verifying_key().to_bytes() != sk64[32..] {
                return Err(key_err(format!("{source}: secret key halves do not match")));
            }
            Ok(SecretKey { id, signing })
        }

        pub fn from_file(path: &Path) -> Result<SecretKey, BundleError> {
            let text = std::fs::read_to_string(path).map_err(|e| BundleError::io(path, e))?;
            SecretKey::from_text(&text, &path.display().to_string())
        }

        pub fn id(&self) -> KeyId {
            self.id
        }

        fn sk64(&self) -> [u8; 64] {
            self.signing.to_keypair_bytes()
        }

        /// The secret key file text (`minisign -s` compatible).
        pub fn to_text(&self) -> String {
            let sk64 = self.sk64();
            let mut b = Vec::with_capacity(SK_LEN);
            b.extend_from_slice(b"Ed");
            b.extend_from_slice(&[0, 0]);
            b.extend_from_slice(b"B2");
            b.extend_from_slice(&[0u8; 32 + 8 + 8]);
            b.extend_from_slice(&self.id.0);
            b.extend_from_slice(&sk64);
            b.extend_from_slice(&checksum(&self.id, &sk64));
            format!("untrusted comment: limes-pack secret key {} (unencrypted)\n{}\n", self.id, B64.encode(b))
        }

        pub fn public(&self) -> PublicKey {
            let mut b = Vec::with_capacity(42);
            b.extend_from_slice(b"Ed");
            b.extend_from_slice(&self.id.0);
            b.extend_from_slice(&self.signing.verifying_key().to_bytes());
            PublicKey::from_text(&B64.encode(b), "generated").expect("own public key parses")
        }

        /// A minisign detached signature of `data` (prehashed, "ED").
        pub fn sign(&self, data: &[u8], trusted_comment: &str) -> String {
            assert!(!trusted_comment.contains('\n'), "trusted comment must be one line");
            let hash = Blake2b512::digest(data);
            let sig = self.signing.sign(&hash).to_bytes();
            let mut line = Vec::with_capacity(74);
            line.extend_from_slice(b"ED");
            line.extend_from_slice(&self.id.0);
            line.extend_from_slice(&sig);
            let mut global = sig.to_vec();
            global.extend_from_slice(trusted_comment.as_bytes());
            let global_sig = self.signing.sign(&global).to_bytes();
            format!(
                "untrusted comment: signature from limes-pack key {}\n{}\ntrusted comment: {}\n{}\n",
                self.id,
                B64.encode(line),
                trusted_comment,
                B64.encode(global_sig)
            )
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn sign_verify_round_trip() {
            let sk = SecretKey::generate().unwrap();
            let sk2 = SecretKey::from_text(&sk.to_text(), "t").unwrap();
            assert_eq!(sk2.id(), sk.id());
            let pk = PublicKey::from_text(&sk.public().to_text(), "t").unwrap();
            let trusted = TrustedKeys::new(vec![pk]);
            let sig = sk.sign(b"hello", "limes test");
            assert_eq!(sig, sk2.sign(b"hello", "limes test"), "signing is deterministic");
            let info = SignatureInfo::parse(&sig).unwrap();
            assert_eq!(info.trusted_comment, "limes test");
            trusted.verify(b"hello", &info).unwrap();
            assert!(matches!(trusted.verify(b"hellO", &info), Err(BundleError::Signature(_))));
            let other = SecretKey::generate().unwrap();
            let info = SignatureInfo::parse(&other.sign(b"hello", "x")).unwrap();
            assert!(matches!(trusted.verify(b"hello", &info), Err(BundleError::UntrustedKey(_))));
        }

        #[test]
        fn rejects_bad_keys() {
            let sk = SecretKey::generate().unwrap();
            let pub_text = sk.public().to_text();
            assert!(SecretKey::from_text(&pub_text, "k").unwrap_err().to_string().contains(".pub"));
            let mut text = sk.to_text();
            // Flip a character in the checksum region of the base64 line.
            let line_start = text.find('\n').unwrap() + 1;
            let pos = line_start + 200;
            let c = text.as_bytes()[pos];
            text.replace_range(pos..pos + 1, if c == b'A' { "B" } else { "A" });
            assert!(SecretKey::from_text(&text, "k").is_err());
            assert!(PublicKey::from_text("untrusted comment: x\nnot base64!\n", "k").is_err());
        }
    }
}
