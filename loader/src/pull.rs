//! Installing from an OCI registry: fetch the manifest and its signature,
//! verify them against the trusted keys, and only then fetch the files this
//! host will run (the component, the best CPU tier, the microVM image on
//! request), each checked against the signed manifest's digest.

use crate::select;
use crate::store::{InstalledFunction, Store, StoreError};
use limes_bundle::manifest::{MANIFEST_PATH, SIGNATURE_PATH};
use limes_bundle::TrustedKeys;
use limes_oci::{Credentials, OciError, Puller, Timeouts, TITLE};

#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    pub insecure: bool,
    pub credentials: Credentials,
    /// Also fetch the microVM image.
    pub with_microvm: bool,
    /// Fetch every tier, not only the best for this host.
    pub all_tiers: bool,
    pub policy: crate::store::InstallPolicy,
    pub timeouts: Timeouts,
}

#[derive(Debug)]
pub struct PullReport {
    pub function: InstalledFunction,
    pub oci_digest: String,
    pub downloaded: Vec<String>,
    pub reused: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Oci(#[from] OciError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Bundle(#[from] limes_bundle::BundleError),
    #[error("registry layer for {path} does not match the signed manifest (layer {layer}, manifest sha256:{signed})")]
    LayerMismatch { path: String, layer: String, signed: String },
    #[error("the pull did not finish within {} ms (--pull-timeout-ms); nothing was installed", .0.as_millis())]
    Deadline(std::time::Duration),
}

impl PullError {
    pub fn kind(&self) -> crate::ErrorKind {
        match self {
            PullError::Store(s) => s.kind(),
            _ if self.is_verification() => crate::ErrorKind::Verification,
            _ => crate::ErrorKind::Other,
        }
    }

    /// Whether the registry served bytes that failed verification.
    pub fn is_verification(&self) -> bool {
        match self {
            PullError::Oci(o) => o.is_verification(),
            PullError::Store(s) => s.is_verification(),
            PullError::Bundle(b) => b.is_verification(),
            PullError::LayerMismatch { .. } => true,
            PullError::Deadline(_) => false,
        }
    }
}

/// Pull `reference` and install it, all within `opts.timeouts.total`
/// (nothing is installed when the deadline passes first).
pub async fn pull(store: &Store, reference: &str, keys: &TrustedKeys, opts: &PullOptions) -> Result<PullReport, PullError> {
    let total = opts.timeouts.total;
    tokio::time::timeout(total, pull_within(store, reference, keys, opts)).await.unwrap_or(Err(PullError::Deadline(total)))
}

async fn pull_within(store: &Store, reference: &str, keys: &TrustedKeys, opts: &PullOptions) -> Result<PullReport, PullError> {
    let remote = Remote::open(reference, opts).await?;
    let signed = remote.signed_manifest(keys).await?;
    let parts = remote.files(store, &signed, opts, None).await?;
    let function = store.install_parts(&signed.bytes, &signed.signature, &parts.files, keys, opts.policy)?;
    Ok(PullReport { function, oci_digest: remote.digest, downloaded: parts.downloaded, reused: parts.reused })
}

/// A tag or digest in a registry, resolved to its OCI manifest.
pub struct Remote {
    reg: Puller,
    oci: limes_oci::ImageManifest,
    /// The OCI manifest's digest: it changes whenever the tag moves.
    pub digest: String,
}

/// A bundle manifest whose signature verified against the trusted keys.
pub struct SignedManifest {
    pub bytes: Vec<u8>,
    pub signature: String,
    pub manifest: limes_bundle::Manifest,
    /// SHA-256 of `bytes` (the digest a store names a version by).
    pub sha256: String,
}

/// The files this device runs, each checked against the signed manifest.
pub struct Parts {
    pub files: Vec<(String, Vec<u8>)>,
    pub downloaded: Vec<String>,
    pub reused: Vec<String>,
}

impl Remote {
    /// Fetch `reference`'s OCI manifest (small: a poll costs this alone).
    pub async fn open(reference: &str, opts: &PullOptions) -> Result<Remote, PullError> {
        let reg = Puller::new(reference, opts.insecure, &opts.credentials, opts.timeouts)?;
        let (oci, digest) = reg.manifest().await?;
        Ok(Remote { reg, oci, digest })
    }

    /// Response body bytes received from the registry so far.
    pub fn received(&self) -> u64 {
        self.reg.received()
    }

    fn layer(&self, title: &str) -> Result<&limes_oci::Descriptor, OciError> {
        self.oci
            .layers
            .iter()
            .find(|l| l.annotations.as_ref().and_then(|a| a.get(TITLE)).map(String::as_str) == Some(title))
            .ok_or_else(|| OciError::MissingLayer(title.to_string()))
    }

    /// The bundle manifest and its signature, verified against `keys`
    /// before anything else is fetched.
    pub async fn signed_manifest(&self, keys: &TrustedKeys) -> Result<SignedManifest, PullError> {
        let mut bytes = Vec::new();
        self.reg.fetch(self.layer(MANIFEST_PATH)?, 1 << 20, &mut bytes).await?;
        let mut sig = Vec::new();
        self.reg.fetch(self.layer(SIGNATURE_PATH)?, 4 << 10, &mut sig).await?;
        let signature = String::from_utf8(sig).map_err(|_| limes_bundle::BundleError::Signature("signature is not UTF-8".into()))?;
        let (_, manifest) = keys.verify_manifest(&bytes, &signature)?;
        let sha256 = limes_bundle::sha256_hex(&bytes);
        Ok(SignedManifest { bytes, signature, manifest, sha256 })
    }

    /// Fetch what this host runs of `signed` (the component, the best tier,
    /// the microVM image on request); files the store holds are reused.
    /// With `resume_dir`, downloads go through partial files there and an
    /// interrupted one continues where it stopped.
    pub async fn files(&self, store: &Store, signed: &SignedManifest, opts: &PullOptions, resume_dir: Option<&std::path::Path>) -> Result<Parts, PullError> {
        let manifest = &signed.manifest;
        let mut wanted = vec![manifest.component.clone()];
        if opts.all_tiers {
            wanted.extend(manifest.aot.iter().map(|a| a.path.clone()));
        } else if let (Some(best), _) = select::best_tier(manifest) {
            wanted.push(best.path.clone());
        }
        if opts.with_microvm {
            // Only an image this device can boot: the x86_64 images stay in the
            // registry when an aarch64 device pulls (it serves the function as
            // Wasm, and `--backend microvm` says why).
            let image_arch = manifest.microvm.as_ref().and_then(|vm| vm.arch());
            if image_arch.is_some() && image_arch == limes_bundle::profile::Arch::host() {
                wanted.extend(manifest.microvm_files().into_iter().map(String::from));
            } else if let Some(vm) = &manifest.microvm {
                tracing::warn!(target_triple = %vm.target, "not fetching the microVM image: it is not for this device's architecture");
            }
        }
        let mut parts = Parts { files: Vec::new(), downloaded: Vec::new(), reused: Vec::new() };
        for path in wanted {
            let entry = manifest.file(&path).expect("validated manifest lists its artifacts");
            if let Some(data) = store.find_blob(&entry.sha256) {
                parts.reused.push(path.clone());
                parts.files.push((path, data));
                continue;
            }
            let l = self.layer(&path)?;
            let signed_digest = format!("sha256:{}", entry.sha256);
            if l.digest != signed_digest || l.size as u64 != entry.size {
                return Err(PullError::LayerMismatch { path, layer: l.digest.clone(), signed: entry.sha256.clone() });
            }
            let data = match resume_dir {
                Some(dir) => self.reg.fetch_resumable(l, entry.size, &dir.join(format!("{}.part", entry.sha256))).await?.0,
                None => {
                    let mut data = Vec::new();
                    self.reg.fetch(l, entry.size, &mut data).await?;
                    data
                }
            };
            parts.downloaded.push(path.clone());
            parts.files.push((path, data));
        }
        Ok(parts)
    }
}
