//! A real containerd 1.7 with the limes runtime on a temporary root, for
//! the containerd tests and the `ctr run` benchmark (one harness, so both
//! measure and check the same setup).
#![allow(dead_code)]

use crate::common::*;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-limes-v1");
pub const RUNTIME: &str = "io.containerd.limes.v1";
pub const PAUSE: &str = "limes.test/pause:1";

/// containerd's own binaries (fetched once, cached outside the clone).
pub fn containerd_bin() -> PathBuf {
    let out = ok(&mut Command::new(repo().join("scripts/fetch-containerd.sh")));
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// One containerd with the limes runtime, a trusted key in the node's shim
/// configuration, and a local registry; everything it started is stopped
/// and removed on drop.
pub struct Node {
    pub dir: tempfile::TempDir,
    pub bin: PathBuf,
    containerd: Child,
    pub registry: TestRegistry,
    pub key: TestKey,
}

impl Node {
    pub fn start() -> Node {
        let bin = containerd_bin();
        let dir = tempdir();
        let d = dir.path();
        std::fs::create_dir(d.join("bin")).unwrap();
        std::os::unix::fs::symlink(SHIM, d.join("bin/containerd-shim-limes-v1")).unwrap();
        let key = test_key();
        let registry = TestRegistry::start(None);
        // The node's shim configuration: the only source of trust.
        let node_config = d.join("limes-shim.json");
        std::fs::write(&node_config, serde_json::json!({"trusted_keys": [key.public], "store": d.join("node-store")}).to_string()).unwrap();
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  restrict_oom_score_adj = true
  sandbox_image = "{PAUSE}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.limes]
      runtime_type = "{RUNTIME}"
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."{reg}"]
    endpoint = ["http://{reg}"]
"#,
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = d.join("containerd.sock").display(),
            reg = registry.addr,
        );
        std::fs::write(d.join("config.toml"), config).unwrap();
        // runc (for the pod sandbox) is in /usr/sbin, which a CI job's PATH may lack.
        let path = format!("{}:{}:{}:/usr/sbin:/sbin", d.join("bin").display(), bin.display(), std::env::var("PATH").unwrap_or_default());
        let log = std::fs::File::create(d.join("containerd.log")).unwrap();
        let containerd = Command::new(bin.join("containerd"))
            .arg("--config")
            .arg(d.join("config.toml"))
            .env("PATH", path)
            .env("LIMES_SHIM_CONFIG", &node_config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let node = Node { dir, bin, containerd, registry, key };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !node.sock().exists() || !node.ctr().arg("version").output().unwrap().status.success() {
            assert!(Instant::now() < deadline, "containerd did not start:\n{}", node.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        node
    }

    pub fn sock(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    pub fn ctr(&self) -> Command {
        let mut c = Command::new(self.bin.join("ctr"));
        c.arg("--address").arg(self.sock());
        c
    }

    /// Build the function crate at `dir`, sign it with `key`, push it;
    /// returns the reference.
    pub fn push(&self, dir: &std::path::Path, key: &TestKey, tag: &str) -> String {
        let out = tempdir();
        let built = build_signed(dir, key, out.path());
        let name = dir.file_name().unwrap().to_string_lossy();
        let reference = format!("{}/functions/{name}:{tag}", self.registry.addr);
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(limes_oci::push(&built.bundle, &reference, true, &Default::default()))
            .unwrap();
        reference
    }

    /// `ctr run --rm` of `image` with `args` (after the image's entrypoint).
    pub fn ctr_run(&self, image: &str, id: &str, args: &[&str]) -> std::process::Output {
        ok(self.ctr().args(["images", "pull", "--plain-http", image]));
        let mut c = self.ctr();
        c.args(["run", "--rm", "--runtime", RUNTIME, image, id, "limes"]).args(args);
        c.output().unwrap()
    }

    /// Shim processes still running for this containerd.
    pub fn shims(&self) -> Vec<String> {
        let sock = self.sock().display().to_string();
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .filter(|c| c.contains("containerd-shim-limes-v1") && c.contains(&sock))
            .collect()
    }
}

impl Node {
    /// Fail unless every shim of this containerd has exited and nothing it
    /// mounted is left (call after the last container is removed).
    pub fn assert_all_stopped(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.shims().is_empty() || !self.mounts().is_empty() {
            assert!(Instant::now() < deadline, "left running: {:?}, left mounted: {:?}", self.shims(), self.mounts());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Mount points under this node's directory.
    pub fn mounts(&self) -> Vec<String> {
        let dir = self.dir.path().display().to_string();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&dir))
            .map(String::from)
            .collect()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Containers first (their shims exit with them), then containerd;
        // also after a failed test, in both namespaces (ctr's and CRI's).
        for ns in ["default", "k8s.io"] {
            let Ok(o) = self.ctr().args(["-n", ns, "containers", "list", "-q"]).output() else { continue };
            for id in String::from_utf8_lossy(&o.stdout).lines() {
                let _ = self.ctr().args(["-n", ns, "task", "kill", "-s", "SIGKILL", id]).output();
                let _ = self.ctr().args(["-n", ns, "task", "delete", "-f", id]).output();
                let _ = self.ctr().args(["-n", ns, "containers", "delete", id]).output();
            }
        }
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.containerd.id() as i32, libc::SIGTERM) };
        let _ = self.containerd.wait();
        for m in self.mounts().into_iter().rev() {
            let c = std::ffi::CString::new(m).unwrap();
            // SAFETY: a valid C string.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// An OCI image archive (`ctr images import`) of one manifest.
pub fn oci_archive(name: &str, config: &[u8], layers: &[(String, &str, Vec<u8>)], artifact_type: Option<&str>) -> Vec<u8> {
    use sha2::Digest as _;
    let sha = |d: &[u8]| format!("sha256:{}", hex::encode(sha2::Sha256::digest(d)));
    let config_media = "application/vnd.oci.image.config.v1+json";
    let descs: Vec<serde_json::Value> = layers
        .iter()
        .map(|(title, media, data)| {
            serde_json::json!({"mediaType": media, "digest": sha(data), "size": data.len(),
                "annotations": {"org.opencontainers.image.title": title}})
        })
        .collect();
    let mut manifest = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": config_media, "digest": sha(config), "size": config.len()}, "layers": descs});
    if let Some(t) = artifact_type {
        manifest["artifactType"] = t.into();
    }
    let manifest = serde_json::to_vec(&manifest).unwrap();
    let index = serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha(&manifest), "size": manifest.len(),
        "annotations": {"io.containerd.image.name": name}}]}))
    .unwrap();
    let mut files: Vec<(String, Vec<u8>)> = vec![("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()), ("index.json".into(), index)];
    for blob in std::iter::once(config.to_vec()).chain(std::iter::once(manifest)).chain(layers.iter().map(|l| l.2.clone())) {
        files.push((format!("blobs/{}", sha(&blob).replace(':', "/")), blob));
    }
    tar_of(&files, 0o644)
}

pub fn tar_of(files: &[(String, Vec<u8>)], mode: u32) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_cksum();
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

/// Compile the C program `source` statically and import it into `ns` as the
/// image `name` whose entrypoint is `/BIN`.
pub fn import_static_c(node: &Node, ns: &str, name: &str, bin: &str, source: &str) {
    let d = tempdir();
    let src = d.path().join("main.c");
    std::fs::write(&src, source).unwrap();
    ok(Command::new("musl-gcc").args(["-static", "-O2", "-o"]).arg(d.path().join(bin)).arg(&src));
    let layer = tar_of(&[(bin.into(), std::fs::read(d.path().join(bin)).unwrap())], 0o755);
    use sha2::Digest as _;
    let config = serde_json::to_vec(&serde_json::json!({"architecture": "amd64", "os": "linux", "config": {"Entrypoint": [format!("/{bin}")]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", hex::encode(sha2::Sha256::digest(&layer)))]}}))
    .unwrap();
    let archive = oci_archive(name, &config, &[(format!("{bin}.tar"), "application/vnd.oci.image.layer.v1.tar", layer)], None);
    let path = d.path().join("image.tar");
    std::fs::write(&path, archive).unwrap();
    ok(node.ctr().args(["-n", ns, "images", "import"]).arg(&path));
}

/// The pod sandbox's image: a static `/pause` that waits for SIGTERM
/// (kubelet's `registry.k8s.io/pause` is out of reach here).
pub fn import_pause(node: &Node) {
    import_static_c(
        node,
        "k8s.io",
        PAUSE,
        "pause",
        "#include <signal.h>\n#include <unistd.h>\nstatic void q(int s){(void)s;_exit(0);}\nint main(void){signal(SIGTERM,q);signal(SIGINT,q);for(;;)pause();}\n",
    );
}
