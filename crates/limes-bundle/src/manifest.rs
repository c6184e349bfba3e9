//! The bundle manifest (`manifest.json`), version 1.
//!
//! The manifest is the only thing that is signed; it lists every other file
//! of the bundle with its SHA-256 and size, so the signature covers them all.
//! Unknown fields are rejected: a loader must not run a bundle whose manifest
//! says something it does not understand.

use crate::profile::{EngineProfile, Tier};
use crate::BundleError;
use serde::{Deserialize, Serialize};

pub const SCHEMA: &str = "limes.bundle/v1";
pub const MANIFEST_PATH: &str = "manifest.json";
pub const SIGNATURE_PATH: &str = "manifest.json.minisig";
pub const COMPONENT_PATH: &str = "component.wasm";
/// Where `limes-pack` puts the microVM image's files (readers follow the
/// manifest's fields, not these paths).
pub const INITRD_PATH: &str = "microvm/initrd.cpio";
pub const FIRECRACKER_CONFIG_PATH: &str = "microvm/firecracker.json";
pub const KERNEL_PATH: &str = "microvm/vmlinux";
/// A Hermit image's files: the unikernel (kernel and function linked into
/// one ELF, handed to the boot loader as its module) and limes' PVH boot
/// loader, which the hypervisor boots.
pub const HERMIT_IMAGE_PATH: &str = "microvm/hermit-image.elf";
pub const HERMIT_LOADER_PATH: &str = "microvm/hermit-loader.elf";

/// Where `limes-pack` puts the precompiled artifact of `tier`.
pub fn aot_path(tier: &str) -> String {
    format!("aot/{tier}.cwasm")
}

/// What a file of a bundle is for: the one description of a bundle's files
/// that the packer, the registry layout (media types follow roles) and the
/// loader share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Manifest,
    Signature,
    Component,
    /// A precompiled CPU tier.
    Aot,
    MicrovmInitrd,
    MicrovmConfig,
    MicrovmKernel,
    MicrovmRootfs,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub schema: String,
    pub function: FunctionInfo,
    pub world: WorldInfo,
    pub engine: EngineInfo,
    pub limits: Limits,
    /// The request a device sends a new version before any traffic reaches
    /// it, and the answer it must give (`limes sync`). None: the version
    /// must load and instantiate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthCheck>,
    #[serde(default)]
    pub preopens: Vec<Preopen>,
    /// Origins (`scheme://host[:port]`, host may start with `*.`) the
    /// function may call through `wasi:http/outgoing-handler`; every other
    /// outbound request is denied. Empty: no outbound HTTP at all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_outbound_hosts: Vec<String>,
    /// Path of the component inside the bundle.
    pub component: String,
    /// One precompiled artifact per CPU tier.
    pub aot: Vec<AotArtifact>,
    /// The microVM image of the same function, when built.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub microvm: Option<MicroVm>,
    /// Every file of the bundle except the manifest and its signature, in
    /// archive order (sorted by path).
    pub files: Vec<FileEntry>,
    pub provenance: Provenance,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionInfo {
    pub name: String,
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// Which world the component exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WorldKind {
    /// `limes:function/handler@0.1.x`.
    Limes,
    /// The Limes study's `component:run/run` (`run: func(args: string) -> string`).
    ComponentRun,
    /// The standard `wasi:http/incoming-handler@0.2.x` (the `wasi:http/proxy`
    /// world): the whole HTTP request in, status, headers and body out.
    WasiHttp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorldInfo {
    pub kind: WorldKind,
    /// The exported interface, e.g. `limes:function/handler@0.1.0`.
    pub export: String,
    /// Interfaces the component imports (all WASI 0.2).
    pub imports: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineInfo {
    pub wasmtime: String,
    pub profile: EngineProfile,
    pub profile_digest: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest total linear memory of one instance (all its memories together).
    pub memory_bytes: u64,
    /// Wall-time limit of one invocation.
    pub timeout_ms: u64,
    /// Largest request body a host should accept.
    pub max_input_bytes: u64,
}

/// A health request declared by the function and signed with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// The request body (UTF-8).
    #[serde(default)]
    pub input: String,
    /// The request path, for a wasi:http function (default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The status a wasi:http function must answer (default: any 2xx).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The exact body the answer must have (default: any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<String>,
}

/// Largest health request or expected answer a manifest may declare.
pub const MAX_HEALTH_TEXT: usize = 64 << 10;

impl Default for Limits {
    fn default() -> Self {
        Limits { memory_bytes: 256 << 20, timeout_ms: 10_000, max_input_bytes: 32 << 20 }
    }
}

/// A directory the host may preopen for the function. The device operator
/// binds `name` to a host directory; the guest sees it at `guest_path`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preopen {
    pub name: String,
    pub guest_path: String,
    #[serde(default)]
    pub writable: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AotArtifact {
    pub tier: String,
    pub target: String,
    /// Cranelift ISA flags the artifact was compiled with.
    pub cpu_flags: Vec<String>,
    pub path: String,
    /// `Engine::precompile_compatibility_hash` of the compiling engine,
    /// SHA-256 of its `Hash` output: a cache key, not a load check.
    pub compat_hash: String,
}

/// What kind of image `microvm` describes; it decides how a hypervisor
/// boots it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ImageKind {
    /// A Linux kernel (`kernel`, or a device-side one) and a newc initrd
    /// whose `/init` is the function.
    #[default]
    Linux,
    /// A Hermit unikernel: `initrd` is the unikernel ELF (kernel and
    /// function in one), `kernel` is the PVH boot loader that loads it.
    Hermit,
}

impl ImageKind {
    pub fn name(self) -> &'static str {
        match self {
            ImageKind::Linux => "linux",
            ImageKind::Hermit => "hermit",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MicroVm {
    /// Which image this is (bundles from before Hermit images are Linux).
    #[serde(default)]
    pub kind: ImageKind,
    /// The native executable's target triple.
    pub target: String,
    /// The module the kernel or loader is given: for Linux a newc cpio
    /// whose /init is the function, for Hermit the unikernel ELF.
    pub initrd: String,
    /// Optional read-only root disk image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<String>,
    /// Kernel embedded in the bundle; otherwise a device-side setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// Firecracker `--config-file` JSON.
    pub firecracker_config: String,
    pub boot_args: String,
    pub vcpus: u32,
    pub memory_mib: u32,
}

impl MicroVm {
    /// The architecture the image boots on: its native build's signed
    /// target (`None`: one limes does not know).
    pub fn arch(&self) -> Option<crate::profile::Arch> {
        crate::profile::Arch::of_triple(&self.target)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub path: String,
    pub sha256: String,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    /// SHA-256 over the function crate's source files (paths and contents).
    pub source_digest: String,
    pub rustc: String,
    pub limes_pack: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_commit: Option<String>,
    /// `SOURCE_DATE_EPOCH` when set, else 0: builds are reproducible by default.
    pub source_date_epoch: u64,
    /// `name version` of the function crate's resolved dependencies.
    #[serde(default)]
    pub dependencies: Vec<String>,
    /// Where the component came from when it was not compiled from a crate
    /// by this build (`limes-pack build --component`): the file name given
    /// and the SHA-256 of its bytes. `None`: built from `source_digest`'s crate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prebuilt: Option<Prebuilt>,
}

/// A component built elsewhere (any language) and shipped as it was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prebuilt {
    /// The file name it was given as (no directories: those say nothing
    /// about the bytes and would make builds differ by checkout).
    pub file: String,
    pub sha256: String,
}

/// Whether `p` is a path limes writes into bundles: 1 to 3 components of
/// `[A-Za-z0-9._-]`, none `.` or `..`, at most 100 bytes (fits a ustar header).
pub fn is_safe_path(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 100
        && p.split('/').count() <= 3
        && p.split('/').all(|c| !c.is_empty() && c != "." && c != ".." && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-'))
}

/// A function name or version as it may become a file name: 1-64 of
/// `[A-Za-z0-9._-]`, not starting with `.` (so never `.` or `..`).
pub fn is_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && !s.starts_with('.') && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl Manifest {
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("manifest serializes");
        v.push(b'\n');
        v
    }

    /// Parse and check a manifest: syntax, then [`Manifest::validate`].
    pub fn from_json(bytes: &[u8]) -> Result<Manifest, BundleError> {
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| {
            // serde quotes what it read (an unknown field name, say): bound it.
            let msg = e.to_string();
            BundleError::Manifest(if msg.len() > 200 { crate::untrusted(&msg) } else { msg })
        })?;
        m.validate()?;
        Ok(m)
    }

    pub fn file(&self, path: &str) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.path == path)
    }

    /// What `path` is in this bundle; `None` for a path the manifest does
    /// not give a role (a reader refuses such a file).
    pub fn role_of(&self, path: &str) -> Option<Role> {
        match path {
            MANIFEST_PATH => return Some(Role::Manifest),
            SIGNATURE_PATH => return Some(Role::Signature),
            _ => {}
        }
        if path == self.component {
            return Some(Role::Component);
        }
        if self.aot.iter().any(|a| a.path == path) {
            return Some(Role::Aot);
        }
        let vm = self.microvm.as_ref()?;
        if path == vm.initrd {
            Some(Role::MicrovmInitrd)
        } else if path == vm.firecracker_config {
            Some(Role::MicrovmConfig)
        } else if vm.kernel.as_deref() == Some(path) {
            Some(Role::MicrovmKernel)
        } else if vm.rootfs.as_deref() == Some(path) {
            Some(Role::MicrovmRootfs)
        } else {
            None
        }
    }

    /// Why the bundle carries no microVM image (`None` when it does).
    pub fn why_no_microvm(&self) -> Option<&'static str> {
        if self.microvm.is_some() {
            None
        } else if self.provenance.prebuilt.is_some() {
            Some("a prebuilt component has no native build; run it as Wasm")
        } else if self.world.kind == WorldKind::WasiHttp {
            Some("a wasi:http function has no native build; run it as Wasm")
        } else {
            Some("it was built with --no-microvm")
        }
    }

    /// The AOT artifacts grouped by architecture (`x86_64`, `aarch64`, in
    /// the order they first appear; a target limes does not know is its own
    /// group): a device runs one group.
    pub fn tiers_by_arch(&self) -> Vec<(String, Vec<&AotArtifact>)> {
        let mut groups: Vec<(String, Vec<&AotArtifact>)> = Vec::new();
        for a in &self.aot {
            let arch = crate::profile::Arch::of_triple(&a.target).map_or_else(|| a.target.clone(), |x| x.name().to_string());
            match groups.iter_mut().find(|(g, _)| *g == arch) {
                Some((_, v)) => v.push(a),
                None => groups.push((arch, vec![a])),
            }
        }
        groups
    }

    /// The files of the microVM image (empty without one).
    pub fn microvm_files(&self) -> Vec<&str> {
        let Some(vm) = &self.microvm else { return Vec::new() };
        [Some(&vm.initrd), Some(&vm.firecracker_config), vm.kernel.as_ref(), vm.rootfs.as_ref()].into_iter().flatten().map(String::as_str).collect()
    }

    /// The signed one-line comment: what the bundle is, readable in
    /// `minisign -V`. Readers require exactly this text in a verified
    /// signature, so a signature cannot vouch for another name or version.
    pub fn trusted_comment(&self) -> String {
        format!("limes bundle {} {} schema {}", self.function.name, self.function.version, self.schema)
    }

    /// Bundle file name: `NAME-VERSION.limes`.
    pub fn bundle_file_name(&self) -> String {
        format!("{}-{}.limes", self.function.name, self.function.version)
    }

    /// Schema rules beyond what serde checks.
    pub fn validate(&self) -> Result<(), BundleError> {
        let bad = |m: String| Err(BundleError::Manifest(m));
        if self.schema != SCHEMA {
            return bad(format!("unsupported schema {:?} (this build reads {SCHEMA:?})", self.schema));
        }
        if !is_name(&self.function.name) {
            return bad(format!("function name {:?} is not [A-Za-z0-9._-]{{1,64}}", self.function.name));
        }
        if !is_name(&self.function.version) {
            return bad(format!("function version {:?} is not a plain version", self.function.version));
        }
        if self.engine.profile_digest != self.engine.profile.digest() {
            return bad("engine.profile_digest does not match engine.profile".into());
        }
        if self.limits.memory_bytes == 0 || self.limits.timeout_ms == 0 || self.limits.max_input_bytes == 0 {
            return bad("limits must be non-zero".into());
        }
        if let Some(h) = &self.health {
            if h.input.len() > MAX_HEALTH_TEXT || h.expect.as_ref().is_some_and(|e| e.len() > MAX_HEALTH_TEXT) {
                return bad(format!("health input and expect may hold at most {MAX_HEALTH_TEXT} bytes"));
            }
            if h.path.as_ref().is_some_and(|p| !p.starts_with('/') || p.len() > 2048 || p.chars().any(|c| c.is_control() || c == ' ')) {
                return bad("health path must be an absolute request path (`/...`)".into());
            }
            if h.status.is_some_and(|s| !(100..=599).contains(&s)) {
                return bad("health status must be an HTTP status (100-599)".into());
            }
        }
        let mut prev: Option<&str> = None;
        for f in &self.files {
            if !is_safe_path(&f.path) {
                return bad(format!("file path {:?} is not a safe relative path", f.path));
            }
            if f.path == MANIFEST_PATH || f.path == SIGNATURE_PATH {
                return bad(format!("{} may not be listed in files", f.path));
            }
            if let Some(p) = prev {
                if p >= f.path.as_str() {
                    return bad(format!("files are not sorted and unique at {:?}", f.path));
                }
            }
            prev = Some(&f.path);
            if !is_sha256(&f.sha256) {
                return bad(format!("sha256 of {:?} is not 64 lower-case hex digits", f.path));
            }
        }
        let listed = |p: &str, what: &str| -> Result<(), BundleError> {
            if self.file(p).is_none() {
                return Err(BundleError::Manifest(format!("{what} {p:?} is not listed in files")));
            }
            Ok(())
        };
        listed(&self.component, "component")?;
        let mut tiers = Vec::new();
        for a in &self.aot {
            listed(&a.path, "AOT artifact")?;
            if !is_name(&a.tier) {
                return bad(format!("CPU tier name {:?} is not [A-Za-z0-9._-]{{1,64}}", a.tier));
            }
            if tiers.contains(&a.tier) {
                return bad(format!("tier {} listed twice", a.tier));
            }
            tiers.push(a.tier.clone());
            // A tier this build does not know (a newer limes-pack's) is
            // never mapped (`select` skips it), so it does not make the
            // bundle unreadable: a device keeps installing new bundles.
            let Some(tier) = Tier::by_name(&a.tier) else { continue };
            if a.target != tier.target() {
                return bad(format!("tier {} is for {}, not {}", a.tier, tier.target(), a.target));
            }
            if tier.cranelift_flags.iter().map(|s| s.to_string()).collect::<Vec<_>>() != a.cpu_flags {
                return bad(format!("cpu_flags of tier {} do not match the tier's definition", a.tier));
            }
        }
        if let Some(vm) = &self.microvm {
            listed(&vm.initrd, "initrd")?;
            if vm.kind == ImageKind::Hermit && (vm.kernel.is_none() || vm.rootfs.is_some()) {
                return bad("a Hermit image carries its loader as `kernel` and no rootfs".into());
            }
            listed(&vm.firecracker_config, "firecracker config")?;
            if let Some(r) = &vm.rootfs {
                listed(r, "rootfs")?;
            }
            if let Some(k) = &vm.kernel {
                listed(k, "kernel")?;
            }
        }
        crate::outbound::parse_list(&self.allowed_outbound_hosts).map_err(BundleError::Manifest)?;
        for p in &self.preopens {
            if !is_name(&p.name) || !p.guest_path.starts_with('/') || p.guest_path.contains("..") {
                return bad(format!("preopen {:?} -> {:?} is invalid", p.name, p.guest_path));
            }
        }
        Ok(())
    }
}

impl Manifest {
    /// A minimal valid manifest (a no-op with one component file), for
    /// tests in this and other crates.
    #[doc(hidden)]
    pub fn sample() -> Manifest {
        let profile = EngineProfile::default();
        Manifest {
            schema: SCHEMA.into(),
            function: FunctionInfo { name: "noop".into(), version: "0.1.0".into(), description: None },
            world: WorldInfo { kind: WorldKind::Limes, export: "limes:function/handler@0.1.0".into(), imports: vec![] },
            engine: EngineInfo { wasmtime: crate::profile::WASMTIME_VERSION.into(), profile_digest: profile.digest(), profile },
            limits: Limits::default(),
            health: None,
            preopens: vec![],
            component: COMPONENT_PATH.into(),
            aot: vec![],
            microvm: None,
            files: vec![FileEntry { path: COMPONENT_PATH.into(), sha256: crate::sha256_hex(b"x"), size: 1 }],
            provenance: Provenance {
                source_digest: "0".repeat(64),
                rustc: "rustc".into(),
                limes_pack: "0.1.0".into(),
                git_commit: None,
                source_date_epoch: 0,
                dependencies: vec![],
                prebuilt: None,
            },
            allowed_outbound_hosts: vec![],
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn sample() -> Manifest {
        Manifest::sample()
    }

    #[test]
    fn unknown_tiers_are_tolerated_known_ones_checked() {
        let mut m = sample();
        let art = |tier: &str, target: &str, flags: &[&str]| AotArtifact {
            tier: tier.into(),
            target: target.into(),
            cpu_flags: flags.iter().map(|s| s.to_string()).collect(),
            path: aot_path(tier),
            compat_hash: String::new(),
        };
        for a in [art("aarch64-lse", "aarch64-unknown-linux-gnu", &["has_lse"]), art("riscv64-v9", "riscv64gc-unknown-linux-gnu", &[])] {
            m.files.push(FileEntry { path: a.path.clone(), sha256: crate::sha256_hex(b"x"), size: 1 });
            m.aot.push(a);
        }
        m.files.sort_by(|a, b| a.path.cmp(&b.path));
        m.validate().expect("a newer limes-pack's tier does not make a bundle unreadable");
        let mut bad = m.clone();
        bad.aot[0].target = "x86_64-unknown-linux-gnu".into();
        assert!(bad.validate().unwrap_err().to_string().contains("tier aarch64-lse is for aarch64-unknown-linux-gnu"));
        let mut bad = m.clone();
        bad.aot[0].cpu_flags.clear();
        assert!(bad.validate().is_err());
        let mut bad = m.clone();
        bad.aot[1].tier = "aarch64-lse".into();
        assert!(bad.validate().unwrap_err().to_string().contains("listed twice"));
    }

    #[test]
    fn round_trip_and_rules() {
        let m = sample();
        assert_eq!(Manifest::from_json(&m.to_json()).unwrap(), m);

        let mut bad = m.clone();
        bad.files[0].path = "../x".into();
        assert!(bad.validate().is_err());
        let mut bad = m.clone();
        bad.schema = "limes.bundle/v9".into();
        assert!(bad.validate().unwrap_err().to_string().contains("unsupported schema"));
        let mut bad = m.clone();
        bad.component = "other.wasm".into();
        assert!(bad.validate().is_err());
        let mut bad = m.clone();
        bad.engine.profile.consume_fuel = true;
        assert!(bad.validate().is_err());

        let mut json: serde_json::Value = serde_json::from_slice(&m.to_json()).unwrap();
        json["surprise"] = 1.into();
        assert!(Manifest::from_json(&serde_json::to_vec(&json).unwrap()).is_err());
    }

    #[test]
    fn roles_come_from_the_manifest_fields() {
        let mut m = sample();
        m.microvm = Some(MicroVm {
            kind: ImageKind::Linux,
            target: "x86_64-unknown-linux-musl".into(),
            initrd: INITRD_PATH.into(),
            rootfs: None,
            kernel: Some(KERNEL_PATH.into()),
            firecracker_config: FIRECRACKER_CONFIG_PATH.into(),
            boot_args: String::new(),
            vcpus: 1,
            memory_mib: 128,
        });
        assert_eq!(m.role_of(COMPONENT_PATH), Some(Role::Component));
        assert_eq!(m.role_of(MANIFEST_PATH), Some(Role::Manifest));
        assert_eq!(m.role_of(KERNEL_PATH), Some(Role::MicrovmKernel));
        // Not by suffix: an unlisted file has no role.
        assert_eq!(m.role_of("microvm/other.cpio"), None);
        assert_eq!(m.role_of(&aot_path("x86-64-v3")), None);
        assert_eq!(m.microvm_files(), [INITRD_PATH, FIRECRACKER_CONFIG_PATH, KERNEL_PATH]);
    }

    #[test]
    fn safe_paths() {
        for ok in ["component.wasm", "aot/x86-64-v3.cwasm", "microvm/initrd.cpio.zst"] {
            assert!(is_safe_path(ok), "{ok}");
        }
        for bad in ["", "/etc/passwd", "../x", "a/../b", "a//b", "./a", "a\\b", "a b", "a/b/c/d"] {
            assert!(!is_safe_path(bad), "{bad}");
        }
    }
}
