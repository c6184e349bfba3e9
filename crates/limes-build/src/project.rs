//! Finding the function crate and reading its `[package.metadata.limes]`.

use cargo_metadata::{Metadata, MetadataCommand, Package};
use limes_bundle::manifest::{Limits, Preopen};
use limes_bundle::profile::{Tier, DEFAULT_TIERS};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Options a function crate may set in `[package.metadata.limes]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct LimesMetadata {
    /// Function name in the bundle (default: the package name).
    pub name: Option<String>,
    /// CPU tiers to precompile (default: every tier of both architectures,
    /// [`limes_bundle::profile::DEFAULT_TIERS`]).
    pub tiers: Option<Vec<String>>,
    pub memory_limit_mib: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub max_input_mib: Option<u64>,
    #[serde(default)]
    pub preopens: Vec<PreopenMeta>,
    /// Cargo features enabled for the function build.
    #[serde(default)]
    pub features: Vec<String>,
    pub microvm: Option<MicroVmMeta>,
    /// Origins the function may call through `wasi:http/outgoing-handler`
    /// (`scheme://host[:port]`; see `limes_bundle::outbound`). Signed into
    /// the manifest; everything else is denied on the device.
    #[serde(default)]
    pub allowed_outbound_hosts: Vec<String>,
    /// The health request a device sends a new version before switching to
    /// it (`limes sync`), signed into the manifest.
    pub health: Option<HealthMeta>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct HealthMeta {
    #[serde(default)]
    pub input: String,
    pub path: Option<String>,
    pub status: Option<u16>,
    pub expect: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct PreopenMeta {
    pub name: String,
    pub guest_path: String,
    #[serde(default)]
    pub writable: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct MicroVmMeta {
    pub vcpus: Option<u32>,
    pub memory_mib: Option<u32>,
}

/// A function crate, located and understood.
#[derive(Debug, Clone)]
pub struct Project {
    pub package_name: String,
    pub version: String,
    pub description: Option<String>,
    /// Function name (metadata `name`, else the package name).
    pub function_name: String,
    pub manifest_path: PathBuf,
    pub package_dir: PathBuf,
    pub workspace_root: PathBuf,
    pub target_dir: PathBuf,
    pub meta: LimesMetadata,
    /// `name version` of every package in the resolved graph except this one.
    pub dependencies: Vec<String>,
    pub uses_sdk: bool,
    /// `--config` for every cargo command when the crate asks for the SDK
    /// by version ([`crate::templates::sdk_patch`]).
    pub sdk_patch: Option<String>,
    /// Where cargo builds the component when it is not `target_dir`: the
    /// home's shared target directory ([`crate::shared`]), for a crate that
    /// asks for the SDK by version and did not choose a target directory.
    pub shared_target: Option<PathBuf>,
    /// The file stem of the crate's `cdylib` (`hello_world`).
    pub lib_name: String,
    /// A component built elsewhere (`limes-pack build --component`): no
    /// crate, no cargo; the file is validated and shipped as it is.
    pub prebuilt: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    #[error("no Cargo.toml at {0}; pass the function crate's directory or --manifest-path")]
    NoManifest(PathBuf),
    #[error("`cargo metadata` failed for {path}:\n{msg}")]
    Metadata { path: PathBuf, msg: String },
    #[error(
        "{0} is a workspace root without a package of its own; pass a member directory \
         (one of: {1}) or --package NAME"
    )]
    VirtualWorkspace(PathBuf, String),
    #[error("package `{0}` is not in the workspace (members: {1})")]
    UnknownPackage(String, String),
    #[error("the workspace at {0} has no function crate (members: {1}); a function crate depends on `limes-sdk` or has [package.metadata.limes]")]
    NoFunctions(PathBuf, String),
    #[error(
        "`{0}` is not a limes function crate: it neither depends on `limes-sdk` nor has \
         [package.metadata.limes]. Add to its Cargo.toml\n\n    [dependencies]\n    limes-sdk = \"{1}\"\n\n\
         (limes-pack finds the SDK on every machine) and `limes_sdk::export!(handler);` to its \
         lib.rs, or start from `limes-pack new NAME`"
    )]
    NotAFunction(String, String),
    #[error(transparent)]
    Sdk(#[from] crate::templates::TemplateError),
    #[error("`{0}` has no library target built as a cdylib; add to its Cargo.toml:\n\n    [lib]\n    crate-type = [\"cdylib\", \"rlib\"]\n")]
    NotCdylib(String),
    #[error("[package.metadata.limes] of `{0}` is invalid: {1}")]
    BadMetadata(String, String),
}

/// `name version` of every package the function links (normal and build
/// dependencies, transitively; dev-dependencies excluded), sorted.
fn dependency_closure(md: &Metadata, root: &cargo_metadata::PackageId) -> Vec<String> {
    use cargo_metadata::DependencyKind;
    let Some(resolve) = &md.resolve else { return Vec::new() };
    let node = |id: &cargo_metadata::PackageId| resolve.nodes.iter().find(|n| &n.id == id);
    let mut seen = std::collections::BTreeSet::new();
    let mut todo = vec![root.clone()];
    while let Some(id) = todo.pop() {
        let Some(n) = node(&id) else { continue };
        for d in &n.deps {
            let linked = d.dep_kinds.iter().any(|k| k.kind != DependencyKind::Development);
            if linked && seen.insert(d.pkg.clone()) {
                todo.push(d.pkg.clone());
            }
        }
    }
    let mut out: Vec<String> = seen.iter().filter_map(|id| md.packages.iter().find(|p| &p.id == id)).map(|p| format!("{} {}", p.name, p.version)).collect();
    out.sort();
    out.dedup();
    out
}

impl Project {
    /// A component built elsewhere, described by the builder instead of a
    /// crate: `name`, `version` and `meta` (limits, tiers, outbound hosts)
    /// as a crate's metadata would give them. Output goes to `target_dir/limes`.
    pub fn prebuilt(component: &Path, name: &str, version: &str, meta: LimesMetadata, target_dir: &Path) -> Result<Project, ProjectError> {
        let dir = component.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
        let project = Project {
            package_name: name.to_string(),
            version: version.to_string(),
            description: None,
            function_name: meta.name.clone().unwrap_or_else(|| name.to_string()),
            manifest_path: component.to_path_buf(),
            package_dir: dir.clone(),
            workspace_root: dir,
            target_dir: target_dir.to_path_buf(),
            meta,
            dependencies: Vec::new(),
            uses_sdk: false,
            sdk_patch: None,
            shared_target: None,
            lib_name: name.replace('-', "_"),
            prebuilt: Some(component.to_path_buf()),
        };
        project.check_meta()?;
        Ok(project)
    }

    /// Locate the crate. `path` is a directory or a `Cargo.toml`.
    pub fn discover(path: &Path, package: Option<&str>, cargo_args: &[String]) -> Result<Project, ProjectError> {
        let (md, manifest, sdk_patch) = Self::read_workspace(path, cargo_args)?;
        let project = Self::from_metadata(&md, &manifest, package)?;
        Self::finish(project, sdk_patch)
    }

    /// Every function crate of the workspace `path` belongs to (members that
    /// are not function crates, such as a library they share, are skipped),
    /// in the workspace's order: `limes-pack dev --workspace`.
    pub fn discover_workspace(path: &Path, cargo_args: &[String]) -> Result<Vec<Project>, ProjectError> {
        let (md, manifest, sdk_patch) = Self::read_workspace(path, cargo_args)?;
        let mut out = Vec::new();
        for pkg in md.workspace_packages() {
            match Self::from_metadata(&md, &manifest, Some(pkg.name.as_str())) {
                Ok(p) => out.push(Self::finish(p, sdk_patch.clone())?),
                Err(ProjectError::NotAFunction(..)) => continue,
                Err(e) => return Err(e),
            }
        }
        if out.is_empty() {
            let names = md.workspace_packages().iter().map(|p| p.name.to_string()).collect::<Vec<_>>().join(", ");
            return Err(ProjectError::NoFunctions(md.workspace_root.clone().into_std_path_buf(), names));
        }
        Ok(out)
    }

    /// The workspace's metadata, resolved with the SDK's patch when a member
    /// asks for the SDK by version; the manifest found; that patch.
    fn read_workspace(path: &Path, cargo_args: &[String]) -> Result<(Metadata, PathBuf, Option<String>), ProjectError> {
        // Like cargo: from a directory, the nearest Cargo.toml at or above it
        // (so `limes-pack build` works from `hello/src`).
        let manifest = if path.is_dir() {
            let abs = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
            abs.ancestors().map(|d| d.join("Cargo.toml")).find(|m| m.is_file()).unwrap_or_else(|| path.join("Cargo.toml"))
        } else {
            path.to_path_buf()
        };
        if !manifest.is_file() {
            return Err(ProjectError::NoManifest(manifest));
        }
        let manifest = manifest.canonicalize().map_err(|_| ProjectError::NoManifest(manifest.clone()))?;
        let sdk_patch = match crate::templates::workspace_wanting_sdk_by_version(&manifest) {
            Some(root) => Some(crate::templates::sdk_patch(&root)?),
            None => None,
        };
        let mut cmd = MetadataCommand::new();
        cmd.manifest_path(&manifest);
        let mut passthrough: Vec<String> = cargo_args.iter().filter(|a| *a == "--locked" || *a == "--offline" || *a == "--frozen").cloned().collect();
        if let Some(p) = &sdk_patch {
            passthrough.extend(["--config".to_string(), p.clone()]);
        }
        cmd.other_options(passthrough);
        let md = cmd.exec().map_err(|e| ProjectError::Metadata {
            path: manifest.clone(),
            msg: match e {
                cargo_metadata::Error::CargoMetadata { stderr } => stderr,
                other => other.to_string(),
            },
        })?;
        Ok((md, manifest, sdk_patch))
    }

    fn finish(mut project: Project, sdk_patch: Option<String>) -> Result<Project, ProjectError> {
        // Sharing is for crates of `limes-pack new` (the SDK by version) that
        // left cargo's default target directory alone: one that set
        // CARGO_TARGET_DIR or `build.target-dir` keeps it.
        if sdk_patch.is_some() && project.target_dir == project.workspace_root.join("target") {
            project.shared_target = Some(crate::shared::component_target_dir(&crate::templates::sdk_home()?));
        }
        project.sdk_patch = sdk_patch;
        Ok(project)
    }

    fn from_metadata(md: &Metadata, manifest: &Path, package: Option<&str>) -> Result<Project, ProjectError> {
        let members: Vec<&Package> = md.workspace_packages();
        let names = || members.iter().map(|p| p.name.to_string()).collect::<Vec<_>>().join(", ");
        let pkg = match package {
            Some(name) => members.iter().find(|p| p.name.as_str() == name).copied().ok_or_else(|| ProjectError::UnknownPackage(name.into(), names()))?,
            None => members
                .iter()
                .find(|p| p.manifest_path.as_std_path() == manifest)
                .copied()
                .ok_or_else(|| ProjectError::VirtualWorkspace(manifest.to_path_buf(), names()))?,
        };
        let name = pkg.name.to_string();
        let uses_sdk = pkg.dependencies.iter().any(|d| d.name == "limes-sdk");
        let meta_value = pkg.metadata.get("limes");
        if !uses_sdk && meta_value.is_none() {
            return Err(ProjectError::NotAFunction(name, crate::templates::sdk_requirement()));
        }
        let meta: LimesMetadata = match meta_value {
            Some(v) => serde_json::from_value(v.clone()).map_err(|e| ProjectError::BadMetadata(name.clone(), e.to_string()))?,
            None => LimesMetadata::default(),
        };
        // A function crate must build a cdylib (the component).
        let lib =
            pkg.targets.iter().find(|t| t.crate_types.contains(&cargo_metadata::CrateType::CDyLib)).ok_or_else(|| ProjectError::NotCdylib(name.clone()))?;
        let dependencies = dependency_closure(md, &pkg.id);
        let project = Project {
            function_name: meta.name.clone().unwrap_or_else(|| name.clone()),
            package_name: name,
            version: pkg.version.to_string(),
            description: pkg.description.clone(),
            manifest_path: pkg.manifest_path.clone().into_std_path_buf(),
            package_dir: pkg.manifest_path.parent().expect("manifest has a parent").to_path_buf().into_std_path_buf(),
            workspace_root: md.workspace_root.clone().into_std_path_buf(),
            target_dir: md.target_directory.clone().into_std_path_buf(),
            meta,
            dependencies,
            uses_sdk,
            sdk_patch: None,
            shared_target: None,
            lib_name: lib.name.replace('-', "_"),
            prebuilt: None,
        };
        project.check_meta()?;
        Ok(project)
    }

    fn check_meta(&self) -> Result<(), ProjectError> {
        let bad = |m: String| Err(ProjectError::BadMetadata(self.package_name.clone(), m));
        // The name and version become file names (NAME.wasm,
        // NAME-VERSION.limes): checked here, before anything is written.
        if !limes_bundle::manifest::is_name(&self.function_name) {
            return bad(format!(
                "name {:?} is not a function name ([A-Za-z0-9._-], 1-64 characters, not starting with `.`)",
                limes_bundle::untrusted(&self.function_name)
            ));
        }
        if !limes_bundle::manifest::is_name(&self.version) {
            return bad(format!("version {:?} is not a plain version", limes_bundle::untrusted(&self.version)));
        }
        self.tiers(&[])?;
        if let Err(e) = limes_bundle::outbound::parse_list(&self.meta.allowed_outbound_hosts) {
            return bad(e);
        }
        for p in &self.meta.preopens {
            if !p.guest_path.starts_with('/') {
                return bad(format!("preopen guest-path {:?} must be absolute", p.guest_path));
            }
        }
        Ok(())
    }

    /// Tiers to build: the explicit list, else metadata, else the defaults,
    /// in rank order; an unknown name is an error (the one place tier names
    /// are checked).
    pub fn tiers(&self, explicit: &[String]) -> Result<Vec<Tier>, ProjectError> {
        let names: Vec<String> = if !explicit.is_empty() {
            explicit.to_vec()
        } else if let Some(t) = &self.meta.tiers {
            t.clone()
        } else {
            DEFAULT_TIERS.iter().map(|s| s.to_string()).collect()
        };
        let mut tiers = names
            .iter()
            .map(|n| {
                Tier::by_name(n).ok_or_else(|| {
                    ProjectError::BadMetadata(self.package_name.clone(), format!("unknown tier {n:?}; known tiers: {}", Tier::names().join(", ")))
                })
            })
            .collect::<Result<Vec<Tier>, _>>()?;
        // One architecture after the other, lowest tier first (manifest,
        // `--json` and `inspect` list them in this order).
        tiers.sort_by_key(|t| (t.arch, t.rank));
        tiers.dedup();
        Ok(tiers)
    }

    pub fn limits(&self) -> Limits {
        let d = Limits::default();
        Limits {
            memory_bytes: self.meta.memory_limit_mib.map(|m| m << 20).unwrap_or(d.memory_bytes),
            timeout_ms: self.meta.timeout_ms.unwrap_or(d.timeout_ms),
            max_input_bytes: self.meta.max_input_mib.map(|m| m << 20).unwrap_or(d.max_input_bytes),
        }
    }

    pub fn health(&self) -> Option<limes_bundle::manifest::HealthCheck> {
        self.meta.health.as_ref().map(|h| limes_bundle::manifest::HealthCheck {
            input: h.input.clone(),
            path: h.path.clone(),
            status: h.status,
            expect: h.expect.clone(),
        })
    }

    pub fn preopens(&self) -> Vec<Preopen> {
        self.meta.preopens.iter().map(|p| Preopen { name: p.name.clone(), guest_path: p.guest_path.clone(), writable: p.writable }).collect()
    }
}
