//! limes bundles as OCI artifacts: the layout (one layer per file, media types by role, an
//! image config containerd accepts), registry credentials, `push`, and bounded, digest-checked
//! fetches ([`fetch`]) so a device downloads only the tier and backend it uses.
//! Must not touch: trust decisions or the store (the loader verifies the signature before it
//! asks for more than the manifest and signature, and installs), building bundles.

use limes_bundle::archive::{read_bundle, BundleLimits, InMemory, SignaturePolicy};
use limes_bundle::manifest::{Role, MANIFEST_PATH, SIGNATURE_PATH};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::{OciDescriptor, OciImageManifest, OciManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;

pub mod fetch;
mod tls;
pub use fetch::{Puller, Timeouts};
pub use oci_client::manifest::{OciDescriptor as Descriptor, OciImageManifest as ImageManifest};

pub const ARTIFACT_TYPE: &str = "application/vnd.limes.bundle.v1";
pub const MEDIA_MANIFEST: &str = "application/vnd.limes.manifest.v1+json";
pub const MEDIA_SIGNATURE: &str = "application/vnd.limes.signature.v1";
/// Plain `application/wasm`, so wasm-aware tools recognise the component.
pub const MEDIA_COMPONENT: &str = "application/wasm";
pub const MEDIA_CWASM: &str = "application/vnd.limes.cwasm.v1";
pub const MEDIA_INITRD: &str = "application/vnd.limes.microvm.initrd.v1";
pub const MEDIA_VM_CONFIG: &str = "application/vnd.limes.microvm.firecracker-config.v1+json";
pub const MEDIA_KERNEL: &str = "application/vnd.limes.microvm.kernel.v1";
pub const MEDIA_ROOTFS: &str = "application/vnd.limes.microvm.rootfs.v1";
/// The image config: an OCI image config (not the empty descriptor), so
/// containerd accepts the artifact as an image and runwasi-based shims read
/// its layers.
pub const MEDIA_IMAGE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// The config a pushed bundle carries. `architecture: wasm` is what
/// runwasi (and so `containerd-shim-limes-v1`) looks for before handing the
/// layers to the shim; `os: wasip2` names the component's world. The
/// container's command line is `limes run` unless a pod's `args` replace
/// the `run`. No layer is a filesystem, so there are no diff IDs.
///
/// The labels name the signed manifest: Kubernetes' CRI identifies an image
/// by its config's digest, so two bundles with one config would be one
/// image to it, and a pod could run the other function.
pub fn image_config(manifest: &limes_bundle::manifest::Manifest, manifest_bytes: &[u8]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "architecture": "wasm",
        "os": "wasip2",
        "config": {
            "Entrypoint": ["limes"],
            "Cmd": ["run"],
            "Labels": {
                "dev.limes.function": manifest.function.name,
                "dev.limes.version": manifest.function.version,
                "dev.limes.manifest.sha256": limes_bundle::sha256_hex(manifest_bytes),
            },
        },
        "rootfs": {"type": "layers", "diff_ids": []},
    }))
    .expect("JSON of strings")
}
pub const TITLE: &str = "org.opencontainers.image.title";
pub const TIER_ANNOTATION: &str = "org.limes.tier";

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("invalid reference {0:?}: {1}")]
    Reference(String, String),
    #[error("--insecure (plain HTTP) is only allowed for registries on loopback, not {0}")]
    InsecureRemote(String),
    #[error("registry {registry}: {message}")]
    Registry { registry: String, message: String },
    #[error("registry {registry} rejected the credentials: {message}")]
    Auth { registry: String, message: String },
    #[error("{0} is not a limes bundle artifact (artifactType {1:?})")]
    NotLimes(String, Option<String>),
    #[error("the artifact has no layer for {0}")]
    MissingLayer(String),
    #[error("{what} is over its {limit}-byte limit (the registry declared or sent more)")]
    TooLarge { what: String, limit: u64 },
    #[error("digest mismatch for {what}: expected {expected}, received {actual}")]
    Digest { what: String, expected: String, actual: String },
    #[error("cannot push an unsigned bundle; sign it first (`limes-pack sign`)")]
    Unsigned,
    #[error(transparent)]
    Bundle(#[from] limes_bundle::BundleError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl OciError {
    /// Whether a registry answered with bytes that fail verification.
    pub fn is_verification(&self) -> bool {
        match self {
            OciError::Digest { .. } | OciError::TooLarge { .. } => true,
            OciError::Bundle(b) => b.is_verification(),
            OciError::Reference(..)
            | OciError::InsecureRemote(_)
            | OciError::Registry { .. }
            | OciError::Auth { .. }
            | OciError::NotLimes(..)
            | OciError::MissingLayer(_)
            | OciError::Unsigned
            | OciError::Io(_) => false,
        }
    }
}

/// Whether `text` (given where a bundle file is also accepted, as in
/// `limes install`) names a registry artifact rather than a file: it is no
/// existing path, has a registry host part (`host[:port]/...`) and a tag or
/// digest, and does not start like a relative or absolute path.
pub fn looks_like_reference(text: &str) -> bool {
    !Path::new(text).exists()
        && !text.starts_with('/')
        && !text.starts_with('.')
        && text.contains('/')
        && (text.rsplit('/').next().is_some_and(|last| last.contains(':')) || text.contains('@'))
        && text.parse::<Reference>().is_ok()
}

/// Credentials for one registry.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    pub username: Option<String>,
    pub password: Option<String>,
}

/// Resolve credentials: explicit, else `LIMES_REGISTRY_USERNAME` /
/// `LIMES_REGISTRY_PASSWORD`, else Docker's `config.json` (`$DOCKER_CONFIG`
/// or `~/.docker`), else anonymous.
pub fn registry_auth(registry: &str, explicit: &Credentials) -> RegistryAuth {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let user = explicit.username.clone().or_else(|| env("LIMES_REGISTRY_USERNAME"));
    let pass = explicit.password.clone().or_else(|| env("LIMES_REGISTRY_PASSWORD"));
    if let (Some(u), Some(p)) = (user, pass) {
        return RegistryAuth::Basic(u, p);
    }
    docker_config_auth(registry).unwrap_or(RegistryAuth::Anonymous)
}

fn docker_config_auth(registry: &str) -> Option<RegistryAuth> {
    use base64::Engine as _;
    let dir = std::env::var_os("DOCKER_CONFIG").map(std::path::PathBuf::from).or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".docker")))?;
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("config.json")).ok()?).ok()?;
    let auths = cfg.get("auths")?.as_object()?;
    let entry = auths.iter().find(|(k, _)| k.trim_start_matches("https://").trim_start_matches("http://").trim_end_matches('/') == registry)?.1;
    let raw = base64::engine::general_purpose::STANDARD.decode(entry.get("auth")?.as_str()?).ok()?;
    let (u, p) = String::from_utf8(raw).ok()?.split_once(':').map(|(u, p)| (u.to_string(), p.to_string()))?;
    Some(RegistryAuth::Basic(u, p))
}

/// `scheme://host[:port]` of a URL: what a message may show of it (paths
/// and queries can carry tokens).
pub(crate) fn host_only(url: &reqwest::Url) -> String {
    format!("{}://{}{}", url.scheme(), url.host_str().unwrap_or("?"), url.port().map(|p| format!(":{p}")).unwrap_or_default())
}

pub(crate) fn host_only_str(url: &str) -> String {
    reqwest::Url::parse(url).map(|u| host_only(&u)).unwrap_or_else(|_| "the registry".into())
}

pub(crate) fn is_loopback(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        registry.rsplit_once(':').map(|(h, _)| h).unwrap_or(registry)
    };
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A registry connection for one reference.
pub struct Registry {
    pub client: Client,
    pub reference: Reference,
    pub auth: RegistryAuth,
}

impl Registry {
    pub fn new(reference: &str, insecure: bool, creds: &Credentials) -> Result<Registry, OciError> {
        let reference: Reference = reference.parse().map_err(|e: oci_client::ParseError| OciError::Reference(reference.into(), e.to_string()))?;
        let registry = reference.resolve_registry().to_string();
        if insecure && !is_loopback(&registry) {
            return Err(OciError::InsecureRemote(registry));
        }
        tls::install_provider();
        let config = ClientConfig { protocol: if insecure { ClientProtocol::Http } else { ClientProtocol::Https }, ..Default::default() };
        Ok(Registry { client: Client::new(config), auth: registry_auth(&registry, creds), reference })
    }

    /// Classify a registry client error by its type (never by its text):
    /// rejected credentials, an unreachable registry, or anything else the
    /// registry said.
    fn err(&self, e: oci_client::errors::OciDistributionError) -> OciError {
        use oci_client::errors::{OciDistributionError as E, OciErrorCode};
        let registry = self.reference.resolve_registry().to_string();
        let message = e.to_string();
        match &e {
            E::AuthenticationFailure(_) | E::UnauthorizedError { .. } | E::ServerError { code: 401 | 403, .. } => OciError::Auth { registry, message },
            E::RegistryError { envelope, .. } if envelope.errors.iter().any(|x| matches!(x.code, OciErrorCode::Unauthorized | OciErrorCode::Denied)) => {
                OciError::Auth { registry, message }
            }
            E::RequestError(r) if matches!(r.status().map(|c| c.as_u16()), Some(401 | 403)) => OciError::Auth { registry, message },
            E::RequestError(r) if r.is_connect() || r.is_timeout() => {
                OciError::Registry { registry, message: format!("cannot reach the registry ({message})") }
            }
            _ => OciError::Registry { registry, message },
        }
    }
}

/// The media type of a bundle file as a layer: it follows the file's role
/// (`limes-pack push` and the containerd shim's layer filter agree through
/// this).
pub fn media_type(role: Role) -> &'static str {
    match role {
        Role::Manifest => MEDIA_MANIFEST,
        Role::Signature => MEDIA_SIGNATURE,
        Role::Component => MEDIA_COMPONENT,
        Role::Aot => MEDIA_CWASM,
        Role::MicrovmInitrd => MEDIA_INITRD,
        Role::MicrovmConfig => MEDIA_VM_CONFIG,
        Role::MicrovmKernel => MEDIA_KERNEL,
        Role::MicrovmRootfs => MEDIA_ROOTFS,
    }
}

fn descriptor(path: &str, role: Role, data: &[u8], tier: Option<&str>) -> OciDescriptor {
    let mut annotations = BTreeMap::new();
    annotations.insert(TITLE.to_string(), path.to_string());
    if let Some(t) = tier {
        annotations.insert(TIER_ANNOTATION.to_string(), t.to_string());
    }
    OciDescriptor {
        media_type: media_type(role).into(),
        digest: format!("sha256:{}", hex::encode(Sha256::digest(data))),
        size: data.len() as i64,
        urls: None,
        annotations: Some(annotations),
        artifact_type: None,
    }
}

#[derive(Debug, Clone)]
pub struct PushReport {
    pub reference: String,
    pub manifest_url: String,
    pub uploaded: Vec<String>,
    pub skipped: Vec<String>,
}

/// Push a signed bundle as an OCI artifact. The bundle is verified first
/// (digests, sizes, schema); layers already in the registry are skipped.
pub async fn push(bundle: &Path, reference: &str, insecure: bool, creds: &Credentials) -> Result<PushReport, OciError> {
    let reg = Registry::new(reference, insecure, creds)?;
    let mut mem = InMemory::default();
    let v = read_bundle(bundle, &BundleLimits::default(), SignaturePolicy::Unverified, &mut mem)?;
    let sig = v.signature.clone().ok_or(OciError::Unsigned)?;
    let mut files: Vec<(String, Vec<u8>, Option<String>)> =
        vec![(MANIFEST_PATH.into(), v.manifest_bytes.clone(), None), (SIGNATURE_PATH.into(), sig.into_bytes(), None)];
    for (path, data) in mem.0 {
        let tier = v.manifest.aot.iter().find(|a| a.path == path).map(|a| a.tier.clone());
        files.push((path, data, tier));
    }
    let roles = files
        .iter()
        .map(|(path, ..)| {
            v.manifest
                .role_of(path)
                .ok_or_else(|| limes_bundle::BundleError::Manifest(format!("{} is listed in files but has no role", limes_bundle::untrusted(path))))
        })
        .collect::<Result<Vec<Role>, _>>()?;
    // Authenticate for push up front so a bad password fails clearly.
    reg.client
        .auth(&reg.reference, &reg.auth, oci_client::RegistryOperation::Push)
        .await
        .map_err(|e| OciError::Auth { registry: reg.reference.resolve_registry().into(), message: e.to_string() })?;
    let mut layers = Vec::new();
    let (mut uploaded, mut skipped) = (Vec::new(), Vec::new());
    let image_config = image_config(&v.manifest, &v.manifest_bytes);
    let config = OciDescriptor {
        media_type: MEDIA_IMAGE_CONFIG.into(),
        digest: format!("sha256:{}", hex::encode(Sha256::digest(&image_config))),
        size: image_config.len() as i64,
        urls: None,
        annotations: None,
        artifact_type: None,
    };
    let mut blobs: Vec<(String, OciDescriptor, Vec<u8>)> = vec![("(config)".into(), config.clone(), image_config)];
    for ((path, data, tier), role) in files.into_iter().zip(roles) {
        let d = descriptor(&path, role, &data, tier.as_deref());
        layers.push(d.clone());
        blobs.push((path, d, data));
    }
    for (path, d, data) in blobs {
        let exists = reg.client.blob_exists(&reg.reference, &d.digest).await.map_err(|e| reg.err(e))?;
        if exists {
            skipped.push(path);
        } else {
            reg.client.push_blob(&reg.reference, data, &d.digest).await.map_err(|e| reg.err(e))?;
            uploaded.push(path);
        }
    }
    let mut annotations = BTreeMap::new();
    annotations.insert(TITLE.to_string(), format!("{} {}", v.manifest.function.name, v.manifest.function.version));
    annotations.insert("org.opencontainers.image.version".to_string(), v.manifest.function.version.clone());
    let manifest = OciImageManifest {
        schema_version: 2,
        media_type: Some("application/vnd.oci.image.manifest.v1+json".into()),
        artifact_type: Some(ARTIFACT_TYPE.into()),
        config,
        layers,
        subject: None,
        annotations: Some(annotations),
    };
    let url = reg.client.push_manifest(&reg.reference, &OciManifest::Image(manifest)).await.map_err(|e| reg.err(e))?;
    uploaded.retain(|p| p != "(config)");
    skipped.retain(|p| p != "(config)");
    Ok(PushReport { reference: reg.reference.to_string(), manifest_url: url, uploaded, skipped })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_only_for_insecure() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("localhost:5000"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("registry.example.com:5000"));
        assert!(!is_loopback("10.0.0.1:5000"));
        assert!(matches!(Registry::new("example.com/x:1", true, &Credentials::default()), Err(OciError::InsecureRemote(_))));
    }

    #[test]
    fn references_and_files_are_told_apart() {
        assert!(looks_like_reference("registry.example.com/fns/hello:0.1.0"));
        assert!(looks_like_reference("127.0.0.1:5000/fns/hello@sha256:0123456789012345678901234567890123456789012345678901234567890123"));
        assert!(!looks_like_reference("hello-0.1.0.limes"));
        assert!(!looks_like_reference("./dist/hello-0.1.0.limes"));
        assert!(!looks_like_reference("/srv/b/hello:1.limes"));
        assert!(!looks_like_reference("dist/hello-0.1.0.limes"));
    }

    #[test]
    fn media_types_follow_roles() {
        assert_eq!(media_type(Role::Component), "application/wasm");
        assert_eq!(media_type(Role::Aot), MEDIA_CWASM);
        assert_eq!(media_type(Role::Manifest), MEDIA_MANIFEST);
        assert_ne!(media_type(Role::MicrovmRootfs), media_type(Role::MicrovmKernel));
    }
}
