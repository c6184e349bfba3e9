//! `limes-pack build`: crate -> component -> validated -> AOT tiers -> signed
//! bundle. Each step is content-addressed, so a build with no change
//! recompiles nothing and rewrites nothing.

use crate::aot::{self, AotError, AotOutput};
use crate::compile::{self, CargoOptions, CompileError};
use crate::project::{Project, ProjectError};
use crate::validate::{self, ValidateError};
use limes_bundle::archive::{self, BundleLimits, Discard, SignaturePolicy, Source};
use limes_bundle::keys::{KeyId, SecretKey};
use limes_bundle::manifest::{AotArtifact, EngineInfo, FunctionInfo, ImageKind, Manifest, Provenance, WorldInfo, COMPONENT_PATH, SCHEMA};
use limes_bundle::profile::{EngineProfile, WASMTIME_VERSION};
use limes_bundle::BundleError;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Receives progress messages (a spinner on a TTY, nothing in CI).
pub trait Progress: Sync {
    fn step(&self, msg: &str);
    /// Run `f` (a cargo build, whose output goes to the terminal) with any
    /// progress display hidden, so the two never interleave.
    fn suspend(&self, f: &mut dyn FnMut()) {
        f()
    }
}

pub struct NoProgress;
impl Progress for NoProgress {
    fn step(&self, _msg: &str) {}
}

/// The key a build signs with. A key from a file or a variable is read only
/// in the signing phase, after every process the build started has ended
/// (see [`crate::isolate`]).
// One per build: the size of the key variant does not matter.
#[allow(clippy::large_enum_variant)]
pub enum SigningKey {
    /// Already in memory (library callers that hold their own key).
    Key(SecretKey),
    /// Read when the signing phase starts.
    Deferred(Box<dyn Fn() -> Result<SecretKey, BundleError> + Send + Sync>),
}

impl From<SecretKey> for SigningKey {
    fn from(k: SecretKey) -> Self {
        SigningKey::Key(k)
    }
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SigningKey::Key(k) => write!(f, "{k:?}"),
            SigningKey::Deferred(_) => f.write_str("SigningKey(deferred)"),
        }
    }
}

#[derive(Default)]
pub struct BuildOptions {
    /// Crate directory or Cargo.toml.
    pub path: PathBuf,
    pub package: Option<String>,
    pub cargo: CargoOptions,
    /// Tier names; empty means metadata or the defaults.
    pub tiers: Vec<String>,
    pub out_dir: Option<PathBuf>,
    /// Sign with this key. A signed build never takes native code from the
    /// AOT cache (a dependency's build script could have written it).
    pub signing_key: Option<SigningKey>,
    /// This process runs this one build and nothing else (the `limes-pack`
    /// CLI): before a signed build reads its key, end every process the
    /// build left running and stop being dumpable (see [`crate::isolate`]).
    /// Never in a process with other children (a test harness, a server):
    /// they would be killed as strays.
    pub isolate: bool,
    /// Overrides `SOURCE_DATE_EPOCH` from the environment.
    pub source_date_epoch: Option<u64>,
    /// Recompile every tier instead of reusing the AOT cache.
    pub no_cache: bool,
    /// Also build the microVM image (static native build, initramfs,
    /// Firecracker config).
    pub microvm: bool,
    /// Embed this kernel in the bundle (else the kernel is a device setting).
    /// Linux images only.
    pub kernel: Option<PathBuf>,
    /// Which microVM image to build.
    pub image: ImageKind,
}

/// The microVM image a build produced.
enum BuiltImage {
    Linux(crate::microvm::Image),
    Hermit(crate::hermit::HermitImage),
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Timings {
    pub cargo: Duration,
    pub microvm: Duration,
    pub validate: Duration,
    pub aot: Duration,
    pub bundle: Duration,
    pub total: Duration,
}

#[derive(Debug)]
pub struct BuildOutput {
    pub project: Project,
    pub bundle: PathBuf,
    pub component: PathBuf,
    pub manifest: Manifest,
    pub aot: Vec<AotOutput>,
    pub signed_by: Option<KeyId>,
    /// The bundle on disk already had exactly these contents.
    pub bundle_unchanged: bool,
    pub bundle_size: u64,
    pub timings: Timings,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Project(#[from] ProjectError),
    #[error(transparent)]
    Compile(#[from] CompileError),
    #[error(transparent)]
    Validate(#[from] ValidateError),
    #[error(transparent)]
    Aot(#[from] AotError),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("I/O on {path}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    MicroVm(#[from] crate::microvm::MicroVmError),
    #[error(transparent)]
    Hermit(#[from] crate::hermit::HermitError),
    #[error("--kernel embeds a Linux kernel; a Hermit image carries its own (use --image linux)")]
    KernelForHermit,
    #[error("SOURCE_DATE_EPOCH={0:?} is not a non-negative integer")]
    BadEpoch(String),
    #[error("{} holds a signed bundle; an unsigned build would replace it. Sign this build (--sign KEY), write it elsewhere (--out-dir), or use `limes-pack run` for local runs", .0.display())]
    WouldUnsign(PathBuf),
    #[error("isolating the build from the signing phase")]
    Isolate(#[source] std::io::Error),
    #[error(
        "refusing to sign {bundle}: its {tier} tier is not what this limes-pack compiles from the bundle's own component \
         (sha256 {actual}, compiled {expected}); something changed the native code after it was built. Rebuild it"
    )]
    ForeignNativeCode { bundle: PathBuf, tier: String, actual: String, expected: String },
    #[error(
        "refusing to sign {bundle}: it was built for Wasmtime {wasmtime} with engine profile {profile}, and this limes-pack \
         can only vouch for native code it compiles itself; rebuild it with this limes-pack"
    )]
    ForeignEngine { bundle: PathBuf, wasmtime: String, profile: String },
}

impl BuildError {
    /// Whether a bundle failed verification (exit 3), as opposed to the
    /// build failing.
    pub fn is_verification(&self) -> bool {
        match self {
            BuildError::Bundle(b) => b.is_verification(),
            BuildError::Project(_)
            | BuildError::Compile(_)
            | BuildError::Validate(_)
            | BuildError::Aot(_)
            | BuildError::Io { .. }
            | BuildError::MicroVm(_)
            | BuildError::Hermit(_)
            | BuildError::KernelForHermit
            | BuildError::BadEpoch(_)
            | BuildError::WouldUnsign(_)
            | BuildError::Isolate(_)
            | BuildError::ForeignEngine { .. } => false,
            BuildError::ForeignNativeCode { .. } => true,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> BuildError + '_ {
    move |source| BuildError::Io { path: path.to_path_buf(), source }
}

pub fn source_date_epoch(explicit: Option<u64>) -> Result<u64, BuildError> {
    if let Some(e) = explicit {
        return Ok(e);
    }
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().map_err(|_| BuildError::BadEpoch(v)),
        _ => Ok(0),
    }
}

/// SHA-256 over the crate's files (relative path, NUL, content), skipping
/// build output and VCS metadata.
pub fn source_digest(dir: &Path) -> Result<String, BuildError> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name == "target" || name.starts_with('.') {
                continue;
            }
            let ty = e.file_type()?;
            if ty.is_dir() {
                walk(root, &e.path(), out)?;
            } else if ty.is_file() {
                out.push(e.path().strip_prefix(root).unwrap().to_path_buf());
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(dir, dir, &mut files).map_err(io_err(dir))?;
    files.sort();
    let mut h = Sha256::new();
    for f in files {
        let data = std::fs::read(dir.join(&f)).map_err(io_err(&f))?;
        h.update(f.to_string_lossy().as_bytes());
        h.update([0]);
        h.update((data.len() as u64).to_le_bytes());
        h.update(&data);
    }
    Ok(hex::encode(h.finalize()))
}

fn command_line(cmd: &str, args: &[&str], cwd: &Path) -> Option<String> {
    let out = Command::new(cmd).args(args).current_dir(cwd).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn git_commit(dir: &Path) -> Option<String> {
    let commit = command_line("git", &["rev-parse", "HEAD"], dir)?;
    let dirty = command_line("git", &["status", "--porcelain", "--", "."], dir).is_some_and(|s| !s.is_empty());
    Some(if dirty { format!("{commit}-dirty") } else { commit })
}

/// Everything `limes-pack build` does.
pub fn build(opts: &BuildOptions, progress: &dyn Progress) -> Result<BuildOutput, BuildError> {
    progress.step("locating crate");
    let project = Project::discover(&opts.path, opts.package.as_deref(), &opts.cargo.global_flags())?;
    build_project(project, opts, progress)
}

/// [`build`] for a crate already located (one `cargo metadata` per build,
/// for callers that needed the project first); `opts.path` and
/// `opts.package` are not read again.
pub fn build_project(project: Project, opts: &BuildOptions, progress: &dyn Progress) -> Result<BuildOutput, BuildError> {
    let start = Instant::now();
    let mut timings = Timings::default();
    let epoch = source_date_epoch(opts.source_date_epoch)?;
    let tiers = project.tiers(&opts.tiers)?;
    // Phase 1, cargo: whatever it leaves running comes back to us.
    let isolate = opts.isolate && opts.signing_key.is_some();
    if isolate {
        crate::isolate::become_subreaper().map_err(BuildError::Isolate)?;
    }

    let (built, wasm) = match &project.prebuilt {
        Some(path) => {
            progress.step(&format!("reading the component {}", path.display()));
            let wasm = std::fs::read(path).map_err(io_err(path))?;
            (path.clone(), wasm)
        }
        None => {
            progress.step(&format!("compiling {} for {}", project.package_name, compile::WASM_TARGET));
            let t = Instant::now();
            let mut built = None;
            progress.suspend(&mut || built = Some(compile::build_component(&project, &opts.cargo)));
            let built = built.expect("suspend runs its closure")?;
            timings.cargo = t.elapsed();
            built
        }
    };

    progress.step("validating component");
    let t = Instant::now();
    let info = validate::validate_component(&wasm, &built.display().to_string())?;
    timings.validate = t.elapsed();
    // The microVM image is the same function built natively against the
    // limes SDK's frame protocol: a component from elsewhere, or one that
    // speaks wasi:http, has no such build.
    let native = project.prebuilt.is_none() && info.kind != limes_bundle::manifest::WorldKind::WasiHttp;
    if opts.microvm && !native {
        progress.step(if project.prebuilt.is_some() {
            "no microVM image: a prebuilt component has no native build"
        } else {
            "no microVM image: a wasi:http function has no native build (limes serves it as Wasm)"
        });
    }

    let out_dir = opts.out_dir.clone().unwrap_or_else(|| project.target_dir.join("limes"));
    std::fs::create_dir_all(&out_dir).map_err(io_err(&out_dir))?;
    let component_out = out_dir.join(format!("{}.wasm", project.function_name));
    if std::fs::read(&component_out).ok().as_deref() != Some(&wasm[..]) {
        aot::write_atomic(&component_out, &wasm).map_err(io_err(&component_out))?;
    }

    let image = match (opts.microvm && native, opts.image) {
        (false, _) => None,
        (true, ImageKind::Linux) => {
            progress.step(&format!("building the microVM image ({})", crate::microvm::MICROVM_TARGET));
            let t = Instant::now();
            let mut image = None;
            progress.suspend(&mut || image = Some(crate::microvm::build_image(&project, &opts.cargo, epoch, opts.kernel.is_some())));
            let image = image.expect("suspend runs its closure")?;
            timings.microvm = t.elapsed();
            Some(BuiltImage::Linux(image))
        }
        (true, ImageKind::Hermit) => {
            if opts.kernel.is_some() {
                return Err(BuildError::KernelForHermit);
            }
            progress.step(&format!("building the Hermit unikernel image ({})", crate::hermit::TARGET));
            let t = Instant::now();
            let mut image = None;
            progress.suspend(&mut || image = Some(crate::hermit::build_image(&project, &opts.cargo)));
            let image = image.expect("suspend runs its closure")?;
            timings.microvm = t.elapsed();
            Some(BuiltImage::Hermit(image))
        }
    };

    // Phase 2, sign: nothing the build started is alive, this process can
    // no longer be inspected by the same user, and only now is the key read.
    let loaded: Option<SecretKey>;
    let signing_key: Option<&SecretKey> = match &opts.signing_key {
        None => None,
        Some(k) => {
            if isolate {
                crate::isolate::end_strays().map_err(BuildError::Isolate)?;
                crate::isolate::not_dumpable().map_err(BuildError::Isolate)?;
            }
            match k {
                SigningKey::Key(k) => Some(k),
                SigningKey::Deferred(load) => {
                    loaded = Some(load()?);
                    loaded.as_ref()
                }
            }
        }
    };

    progress.step(&format!("precompiling {} tier(s): {}", tiers.len(), tiers.iter().map(|t| t.name).collect::<Vec<_>>().join(", ")));
    let t = Instant::now();
    let profile = EngineProfile::default();
    let cache = project.target_dir.join("limes").join("cache").join("aot");
    // Native code that is signed comes from the component in memory, never
    // from the cache, which the build's own code could have rewritten.
    let reuse = !opts.no_cache && signing_key.is_none();
    let aot_out = aot::precompile(&wasm, &tiers, &profile, &cache, reuse)?;
    timings.aot = t.elapsed();

    progress.step("assembling bundle");
    let t = Instant::now();
    let aot_paths: Vec<String> = aot_out.iter().map(|a| limes_bundle::manifest::aot_path(a.tier.name)).collect();
    let mut files: Vec<(String, Source<'_>)> = vec![(COMPONENT_PATH.to_string(), Source::Bytes(&wasm))];
    for (a, p) in aot_out.iter().zip(&aot_paths) {
        files.push((p.clone(), Source::Bytes(&a.bytes)));
    }
    use limes_bundle::manifest::{FIRECRACKER_CONFIG_PATH, HERMIT_IMAGE_PATH, HERMIT_LOADER_PATH, INITRD_PATH, KERNEL_PATH};
    match &image {
        None => {}
        Some(BuiltImage::Linux(img)) => {
            files.push((INITRD_PATH.into(), Source::Bytes(&img.initrd)));
            files.push((FIRECRACKER_CONFIG_PATH.into(), Source::Bytes(&img.firecracker_config)));
            if let Some(k) = &opts.kernel {
                files.push((KERNEL_PATH.into(), Source::File(k)));
            }
        }
        Some(BuiltImage::Hermit(img)) => {
            files.push((HERMIT_IMAGE_PATH.into(), Source::Bytes(&img.image)));
            files.push((HERMIT_LOADER_PATH.into(), Source::Bytes(&img.loader)));
            files.push((FIRECRACKER_CONFIG_PATH.into(), Source::Bytes(&img.firecracker_config)));
        }
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    let manifest = Manifest {
        schema: SCHEMA.into(),
        function: FunctionInfo { name: project.function_name.clone(), version: project.version.clone(), description: project.description.clone() },
        world: WorldInfo { kind: info.kind, export: info.export.clone(), imports: info.imports.clone() },
        engine: EngineInfo { wasmtime: WASMTIME_VERSION.into(), profile_digest: profile.digest(), profile },
        limits: project.limits(),
        health: project.health(),
        preopens: project.preopens(),
        allowed_outbound_hosts: project.meta.allowed_outbound_hosts.clone(),
        component: COMPONENT_PATH.into(),
        aot: aot_out
            .iter()
            .zip(&aot_paths)
            .map(|(a, p)| AotArtifact {
                tier: a.tier.name.into(),
                target: a.tier.target().into(),
                cpu_flags: a.tier.cranelift_flags.iter().map(|s| s.to_string()).collect(),
                path: p.clone(),
                compat_hash: a.compat_hash.clone(),
            })
            .collect(),
        microvm: image.as_ref().map(|img| match img {
            BuiltImage::Linux(img) => limes_bundle::manifest::MicroVm {
                kind: ImageKind::Linux,
                target: crate::microvm::MICROVM_TARGET.into(),
                initrd: INITRD_PATH.into(),
                rootfs: None,
                kernel: opts.kernel.as_ref().map(|_| KERNEL_PATH.into()),
                firecracker_config: FIRECRACKER_CONFIG_PATH.into(),
                boot_args: crate::microvm::BOOT_ARGS.into(),
                vcpus: img.vcpus,
                memory_mib: img.memory_mib,
            },
            BuiltImage::Hermit(img) => limes_bundle::manifest::MicroVm {
                kind: ImageKind::Hermit,
                target: crate::hermit::TARGET.into(),
                initrd: HERMIT_IMAGE_PATH.into(),
                rootfs: None,
                kernel: Some(HERMIT_LOADER_PATH.into()),
                firecracker_config: FIRECRACKER_CONFIG_PATH.into(),
                boot_args: crate::hermit::BOOT_ARGS.into(),
                vcpus: 1,
                memory_mib: img.memory_mib,
            },
        }),
        files: archive::file_entries(&files)?,
        provenance: Provenance {
            // A prebuilt component's source is its bytes (the directory it
            // sits in says nothing about them).
            source_digest: match &project.prebuilt {
                Some(_) => limes_bundle::sha256_hex(&wasm),
                None => source_digest(&project.package_dir)?,
            },
            rustc: match &project.prebuilt {
                Some(_) => "none (prebuilt component)".into(),
                None => command_line("rustc", &["-V"], &project.package_dir).unwrap_or_else(|| "unknown".into()),
            },
            limes_pack: env!("CARGO_PKG_VERSION").into(),
            git_commit: project.prebuilt.is_none().then(|| git_commit(&project.package_dir)).flatten(),
            source_date_epoch: epoch,
            dependencies: project.dependencies.clone(),
            prebuilt: project.prebuilt.as_ref().map(|p| limes_bundle::manifest::Prebuilt {
                file: p.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default(),
                sha256: limes_bundle::sha256_hex(&wasm),
            }),
        },
    };
    manifest.validate()?;
    let manifest_json = manifest.to_json();
    let signature = signing_key.as_ref().map(|k| k.sign(&manifest_json, &trusted_comment(&manifest)));

    let bundle = out_dir.join(manifest.bundle_file_name());
    if signature.is_none() && is_signed_bundle(&bundle) {
        return Err(BuildError::WouldUnsign(bundle));
    }
    let unchanged = is_same_bundle(&bundle, &manifest_json, signature.as_deref());
    if !unchanged {
        archive::write_bundle(&bundle, &manifest_json, signature.as_deref(), &files, epoch)?;
    }
    let bundle_size = std::fs::metadata(&bundle).map_err(io_err(&bundle))?.len();
    timings.bundle = t.elapsed();
    timings.total = start.elapsed();
    Ok(BuildOutput {
        project,
        bundle,
        component: component_out,
        manifest,
        aot: aot_out,
        signed_by: signing_key.as_ref().map(|k| k.id()),
        bundle_unchanged: unchanged,
        bundle_size,
        timings,
    })
}

/// The signed one-line comment (its format lives with the manifest).
pub fn trusted_comment(m: &Manifest) -> String {
    m.trusted_comment()
}

/// Whether `path` holds a signed bundle (an unsigned build must not
/// silently replace it).
fn is_signed_bundle(path: &Path) -> bool {
    archive::read_bundle(path, &BundleLimits::default(), SignaturePolicy::Unverified, &mut Discard).is_ok_and(|v| v.signature.is_some())
}

/// Whether `path` already holds an intact bundle with exactly this manifest
/// and signature (so rewriting it would produce the same bytes).
fn is_same_bundle(path: &Path, manifest_json: &[u8], signature: Option<&str>) -> bool {
    match archive::read_bundle(path, &BundleLimits::default(), SignaturePolicy::Unverified, &mut Discard) {
        Ok(v) => v.manifest_bytes == manifest_json && v.signature.as_deref() == signature,
        Err(_) => false,
    }
}

/// Sign an existing bundle in place (or into `out`). The bundle is fully
/// verified first, so signing never blesses a damaged bundle, and its
/// native code is compiled again here from its own component and must be
/// the same bytes: a bundle built unsigned (by a build that ran third-party
/// code) gets a signature only for native code that this process vouches
/// for. The bytes written are the bytes checked (read once).
pub fn sign_bundle(bundle: &Path, out: &Path, key: &SecretKey) -> Result<Manifest, BuildError> {
    let mut mem = archive::InMemory::default();
    let v = archive::read_bundle(bundle, &BundleLimits::default(), SignaturePolicy::Unverified, &mut mem)?;
    check_native_code(bundle, &v.manifest, &mem.0)?;
    let signature = key.sign(&v.manifest_bytes, &trusted_comment(&v.manifest));
    let files: Vec<(String, Source<'_>)> = mem.0.iter().map(|(p, b)| (p.clone(), Source::Bytes(b.as_slice()))).collect();
    archive::write_bundle(out, &v.manifest_bytes, Some(&signature), &files, v.manifest.provenance.source_date_epoch)?;
    Ok(v.manifest)
}

/// Every AOT tier of `manifest` must be exactly what this limes-pack
/// compiles from the bundle's component (compilation is deterministic).
fn check_native_code(bundle: &Path, manifest: &Manifest, files: &[(String, Vec<u8>)]) -> Result<(), BuildError> {
    let profile = EngineProfile::default();
    let foreign = || BuildError::ForeignEngine {
        bundle: bundle.to_path_buf(),
        wasmtime: manifest.engine.wasmtime.clone(),
        profile: manifest.engine.profile.name.clone(),
    };
    if manifest.engine.wasmtime != WASMTIME_VERSION || manifest.engine.profile_digest != profile.digest() {
        return Err(foreign());
    }
    let file = |p: &str| files.iter().find(|(n, _)| n == p).map(|(_, b)| b.as_slice()).ok_or_else(|| BundleError::MissingFile(p.to_string()));
    let wasm = file(&manifest.component)?;
    validate::validate_component(wasm, &format!("{}:{}", bundle.display(), manifest.component))?;
    let tiers = manifest.aot.iter().map(|a| limes_bundle::profile::Tier::by_name(&a.tier).ok_or_else(foreign)).collect::<Result<Vec<_>, _>>()?;
    let scratch = tempfile::tempdir().map_err(io_err(Path::new("temporary directory")))?;
    let compiled = aot::precompile(wasm, &tiers, &profile, scratch.path(), false)?;
    for (a, c) in manifest.aot.iter().zip(&compiled) {
        let actual = limes_bundle::sha256_hex(file(&a.path)?);
        let expected = limes_bundle::sha256_hex(&c.bytes);
        if actual != expected {
            return Err(BuildError::ForeignNativeCode { bundle: bundle.to_path_buf(), tier: a.tier.clone(), actual, expected });
        }
    }
    Ok(())
}
