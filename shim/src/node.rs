//! What the node administrator configures: the keys bundles must be signed
//! with and where verified bundles are stored. Read by the shim process
//! before any container exists, from a path only the node controls (never
//! from the pod, its image or its environment).

use limes::Store;
use limes_bundle::TrustedKeys;
use serde::Deserialize;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The node's configuration file.
pub const DEFAULT_CONFIG: &str = "/etc/limes/containerd-shim.json";
/// Overrides [`DEFAULT_CONFIG`]: read from the shim's own environment, which
/// containerd passes on from its service (node-controlled), never from a pod.
pub const CONFIG_ENV: &str = "LIMES_SHIM_CONFIG";
/// Where verified bundles go unless the file says otherwise.
pub const DEFAULT_STORE: &str = "/var/lib/limes/containerd";

/// The file's schema, e.g.
/// `{"trusted_keys": ["/etc/limes/keys"], "store": "/var/lib/limes/containerd"}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    /// minisign public keys, or directories of `*.pub` files.
    trusted_keys: Vec<PathBuf>,
    #[serde(default)]
    store: Option<PathBuf>,
}

/// Why the node's configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("reading the node's shim configuration {path}: {source} (create it, see docs/kubernetes.md)")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("node shim configuration {path} is invalid: {source}")]
    Parse { path: PathBuf, source: serde_json::Error },
    #[error("node shim configuration {path} lists no trusted keys: every bundle would be refused")]
    NoKeys { path: PathBuf },
    #[error("loading the node's trusted keys: {0}")]
    Keys(#[from] limes_bundle::BundleError),
    #[error("opening the node store: {0}")]
    Store(#[from] limes::store::StoreError),
    #[error("opening the node store {path}: {source}")]
    Open { path: PathBuf, source: std::io::Error },
}

/// The loaded configuration. The store's directory is held open so the
/// container process (after `pivot_root`, where the node's paths are gone)
/// still reaches it.
pub struct Node {
    pub config_path: PathBuf,
    pub keys: TrustedKeys,
    pub store_path: PathBuf,
    store_dir: OwnedFd,
    this_exe: SelfExec,
}

/// This executable as a child process inside the container can start it:
/// the container's filesystem has neither the binary nor the dynamic loader
/// and libraries it needs, so all are held open from the node and reached
/// through `/proc/self/fd`.
struct SelfExec {
    exe: OwnedFd,
    /// The ELF interpreter, absent for a static build.
    interpreter: Option<OwnedFd>,
    lib_dirs: Vec<OwnedFd>,
}

impl SelfExec {
    fn open() -> std::io::Result<SelfExec> {
        let exe = open_path(Path::new("/proc/self/exe"), 0)?;
        // What this process mapped at start: the interpreter and the
        // directories of the shared libraries it loaded.
        let maps = std::fs::read_to_string("/proc/self/maps")?;
        let mut interpreter = None;
        let mut dirs: Vec<PathBuf> = Vec::new();
        for path in maps.lines().filter_map(|l| l.split_whitespace().nth(5)).map(Path::new) {
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
            if !name.contains(".so") {
                continue;
            }
            if name.starts_with("ld-linux") && interpreter.is_none() {
                interpreter = Some(open_path(path, 0)?);
            }
            if let Some(d) = path.parent().filter(|d| !dirs.iter().any(|x| x == d)) {
                dirs.push(d.to_path_buf());
            }
        }
        let lib_dirs = dirs.iter().map(|d| open_path(d, libc::O_DIRECTORY)).collect::<Result<_, _>>()?;
        Ok(SelfExec { exe, interpreter, lib_dirs })
    }

    fn worker_exe(&self) -> limes::exec::pool::WorkerExe {
        let fd = |f: &OwnedFd| PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()));
        match &self.interpreter {
            None => fd(&self.exe).into(),
            Some(ld) => {
                let dirs: Vec<String> = self.lib_dirs.iter().map(|d| fd(d).display().to_string()).collect();
                limes::exec::pool::WorkerExe { exe: fd(ld), prefix: vec!["--library-path".into(), dirs.join(":").into(), fd(&self.exe).into()] }
            }
        }
    }

    fn fds(&self) -> impl Iterator<Item = &OwnedFd> {
        std::iter::once(&self.exe).chain(self.interpreter.as_ref()).chain(&self.lib_dirs)
    }
}

static NODE: OnceLock<Result<Node, String>> = OnceLock::new();

/// Load the node's configuration once, in the shim process (containers are
/// forked from it and inherit the result). An error is kept, not fatal:
/// the shim must still answer containerd (e.g. `delete`), and each container
/// reports it.
pub fn init() {
    NODE.get_or_init(|| {
        let path = std::env::var_os(CONFIG_ENV).map(PathBuf::from).unwrap_or_else(|| DEFAULT_CONFIG.into());
        Node::load(&path).map_err(|e| e.to_string())
    });
}

/// The configuration loaded by [`init`].
pub fn get() -> Result<&'static Node, &'static str> {
    match NODE.get() {
        Some(Ok(n)) => Ok(n),
        Some(Err(e)) => Err(e),
        None => Err("the node configuration was not loaded"),
    }
}

impl Node {
    pub fn load(path: &Path) -> Result<Node, NodeError> {
        // Small by construction; a larger file is not a configuration.
        let text =
            limes::store::read_nofollow(path, 64 << 10)?.ok_or_else(|| NodeError::Read { path: path.into(), source: std::io::ErrorKind::NotFound.into() })?;
        let file: ConfigFile = serde_json::from_slice(&text).map_err(|source| NodeError::Parse { path: path.into(), source })?;
        if file.trusted_keys.is_empty() {
            return Err(NodeError::NoKeys { path: path.into() });
        }
        let keys = TrustedKeys::load(&file.trusted_keys)?;
        let store_path = file.store.unwrap_or_else(|| DEFAULT_STORE.into());
        // Creates it 0700 if needed and refuses one others can write.
        Store::open(&store_path)?;
        // Not through a symlink: the store's own rule, for its root too.
        let store_dir = open_path(&store_path, libc::O_DIRECTORY | libc::O_NOFOLLOW).map_err(|source| NodeError::Open { path: store_path.clone(), source })?;
        let this_exe = SelfExec::open().map_err(|source| NodeError::Open { path: "/proc/self/exe".into(), source })?;
        Ok(Node { config_path: path.into(), keys, store_path, store_dir, this_exe })
    }

    /// The node store's path as this process and its children see it, also
    /// inside the container's mount namespace where the node's own path is
    /// gone: through the descriptor opened outside it.
    pub fn store_root(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.store_dir.as_raw_fd()))
    }

    /// How serve's workers start this executable inside the container.
    pub fn worker_exe(&self) -> limes::exec::pool::WorkerExe {
        self.this_exe.worker_exe()
    }

    /// Let child processes (serve's workers) inherit the descriptors behind
    /// [`Node::store_root`] and [`Node::worker_exe`] under the same numbers.
    pub fn share_with_children(&self) -> std::io::Result<()> {
        for fd in std::iter::once(&self.store_dir).chain(self.this_exe.fds()) {
            // SAFETY: fcntl on a descriptor this struct owns.
            if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, 0) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

/// An `O_PATH` descriptor of `p`, with `flags` added.
fn open_path(p: &Path, flags: libc::c_int) -> std::io::Result<OwnedFd> {
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let flags = libc::O_PATH | libc::O_CLOEXEC | flags;
    // SAFETY: a valid C string; the result is checked.
    let fd = unsafe { libc::open(c.as_ptr(), flags) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
