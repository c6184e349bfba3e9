//! The Kubernetes path on a real containerd 1.7 (Debian 13's package,
//! unpacked by scripts/fetch-containerd.sh) started by each test on a
//! temporary root: bundles pushed with `limes-pack push`'s code to a real
//! registry, run by `ctr run` and through the CRI calls kubelet makes, with
//! `containerd-shim-limes-v1` as the runtime. Needs root (containerd does).

mod common;
use common::*;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-limes-v1");
const RUNTIME: &str = "io.containerd.limes.v1";
const PAUSE: &str = "limes.test/pause:1";

/// containerd's own binaries (fetched once, cached outside the clone).
fn containerd_bin() -> PathBuf {
    let out = ok(&mut Command::new(repo().join("scripts/fetch-containerd.sh")));
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// One containerd with the limes runtime, a trusted key in the node's shim
/// configuration, and a local registry; everything it started is stopped
/// and removed on drop.
struct Node {
    dir: tempfile::TempDir,
    bin: PathBuf,
    containerd: Child,
    registry: TestRegistry,
    key: TestKey,
}

impl Node {
    fn start() -> Node {
        let bin = containerd_bin();
        let dir = tempdir();
        let d = dir.path();
        std::fs::create_dir(d.join("bin")).unwrap();
        std::os::unix::fs::symlink(SHIM, d.join("bin/containerd-shim-limes-v1")).unwrap();
        let key = test_key();
        let registry = TestRegistry::start(None);
        // The node's shim configuration: the only source of trust.
        let node_config = d.join("limes-shim.json");
        std::fs::write(
            &node_config,
            serde_json::json!({"trusted_keys": [key.public], "store": d.join("node-store")}).to_string(),
        )
        .unwrap();
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
        let path = format!("{}:{}:{}", d.join("bin").display(), bin.display(), std::env::var("PATH").unwrap_or_default());
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

    fn sock(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    fn ctr(&self) -> Command {
        let mut c = Command::new(self.bin.join("ctr"));
        c.arg("--address").arg(self.sock());
        c
    }

    /// Build `pack`, sign it with `key`, push it; returns the reference.
    fn push(&self, pack_name: &str, key: &TestKey, tag: &str) -> String {
        let out = tempdir();
        let built = build_signed(&pack(pack_name), key, out.path());
        let reference = format!("{}/functions/{pack_name}:{tag}", self.registry.addr);
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(limes_oci::push(&built.bundle, &reference, true, &Default::default()))
            .unwrap();
        reference
    }

    /// `ctr run --rm` of `image` with `args` (after the image's entrypoint).
    fn ctr_run(&self, image: &str, id: &str, args: &[&str]) -> std::process::Output {
        ok(self.ctr().args(["images", "pull", "--plain-http", image]));
        let mut c = self.ctr();
        c.args(["run", "--rm", "--runtime", RUNTIME, image, id, "limes"]).args(args);
        c.output().unwrap()
    }

    /// Shim processes still running for this containerd.
    fn shims(&self) -> Vec<String> {
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
    fn assert_all_stopped(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.shims().is_empty() || !self.mounts().is_empty() {
            assert!(Instant::now() < deadline, "left running: {:?}, left mounted: {:?}", self.shims(), self.mounts());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Mount points under this node's directory.
    fn mounts(&self) -> Vec<String> {
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

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn ctr_runs_jobs_and_a_server_and_refuses_what_the_node_does_not_trust() {
    let node = Node::start();
    let image = node.push("noop", &node.key, "0.1.0");

    // A Job: one invocation, the answer on stdout, exit 0.
    let o = node.ctr_run(&image, "job", &["run", "--data", "hello from a job"]);
    assert!(o.status.success(), "{}\n{}", text(&o.stderr), node.log());
    assert_eq!(text(&o.stdout), "hello from a job");
    // Mandelbrot's known answer, byte for byte.
    let mandel = node.push("mandelbrot", &node.key, "0.1.0");
    let o = node.ctr_run(&mandel, "mandel", &["run", "--data", "output=checksum"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout).trim(), MANDELBROT_DEFAULT_CHECKSUM);
    // A function error is exit 4 (as `limes run`), a bad command line exit 2.
    let o = node.ctr_run(&mandel, "bad-input", &["run", "--data", "width=abc"]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o.stderr));
    let o = node.ctr_run(&image, "usage", &["frobnicate"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));

    // Signed, but by a key this node does not trust: refused, exit 3,
    // nothing installed for it.
    let stranger = test_key();
    let untrusted = node.push("noop", &stranger, "stranger");
    let o = node.ctr_run(&untrusted, "untrusted", &["run", "--data", "x"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("not trusted"), "{}", text(&o.stderr));
    assert!(o.stdout.is_empty());

    // A Deployment: `serve` answers HTTP like `limes serve` until stopped.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    ok(node.ctr().args(["images", "pull", "--plain-http", &image]));
    let mut server = node
        .ctr()
        .args(["run", "--rm", "--net-host", "--runtime", RUNTIME, &image, "server", "limes", "serve", "--listen", &listen])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = listen.parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "the server container did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, body) = http(addr, "POST", "/functions/noop", b"over http");
    assert_eq!((status, text(&body).as_str()), (200, "over http"));
    let (status, metrics) = http(addr, "GET", "/metrics", b"");
    assert_eq!(status, 200);
    assert!(text(&metrics).contains(r#"limes_requests_total{function="noop",status="200"} 1"#), "{}", text(&metrics));
    ok(node.ctr().args(["task", "kill", "server"]));
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the server container did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }

    // The node store holds what ran, per signed manifest; nothing else ran.
    let store = node.dir.path().join("node-store");
    let installed: Vec<_> = std::fs::read_dir(&store)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().len() == 64)
        .map(|e| limes::Store::open(e.path()).unwrap().list().unwrap().into_iter().map(|r| r.name).collect::<Vec<_>>())
        .collect();
    let mut names: Vec<String> = installed.into_iter().flatten().collect();
    names.sort();
    assert_eq!(names, ["mandelbrot", "noop"]);
    node.assert_all_stopped();
}

/// An OCI image archive (`ctr images import`) of one manifest.
fn oci_archive(name: &str, config: &[u8], layers: &[(String, &str, Vec<u8>)], artifact_type: Option<&str>) -> Vec<u8> {
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

fn tar_of(files: &[(String, Vec<u8>)], mode: u32) -> Vec<u8> {
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

/// The pod sandbox's image: a static `/pause` that waits for SIGTERM
/// (kubelet's `registry.k8s.io/pause` is out of reach here).
fn import_pause(node: &Node) {
    let d = tempdir();
    let src = d.path().join("pause.c");
    std::fs::write(&src, "#include <signal.h>\n#include <unistd.h>\nstatic void q(int s){(void)s;_exit(0);}\nint main(void){signal(SIGTERM,q);signal(SIGINT,q);for(;;)pause();}\n").unwrap();
    ok(Command::new("musl-gcc").args(["-static", "-Os", "-o"]).arg(d.path().join("pause")).arg(&src));
    let layer = tar_of(&[("pause".into(), std::fs::read(d.path().join("pause")).unwrap())], 0o755);
    use sha2::Digest as _;
    let config = serde_json::to_vec(&serde_json::json!({"architecture": "amd64", "os": "linux", "config": {"Entrypoint": ["/pause"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", hex::encode(sha2::Sha256::digest(&layer)))]}}))
    .unwrap();
    let archive = oci_archive(PAUSE, &config, &[("pause.tar".into(), "application/vnd.oci.image.layer.v1.tar", layer)], None);
    let path = d.path().join("pause.tar");
    std::fs::write(&path, archive).unwrap();
    ok(node.ctr().args(["-n", "k8s.io", "images", "import"]).arg(&path));
}

/// The bundle's files as `limes-pack push` lays them out, with every
/// precompiled tier changed after signing: the image is a consistent OCI
/// image, but not what was signed.
fn tampered_image(node: &Node, name: &str) -> PathBuf {
    let out = tempdir();
    let built = build_signed(&pack("noop"), &node.key, out.path());
    let mut mem = limes_bundle::archive::InMemory::default();
    let v = limes_bundle::archive::read_bundle(&built.bundle, &Default::default(), limes_bundle::archive::SignaturePolicy::Unverified, &mut mem).unwrap();
    let mut layers = vec![
        (limes_bundle::manifest::MANIFEST_PATH.to_string(), limes_oci::MEDIA_MANIFEST, v.manifest_bytes.clone()),
        (limes_bundle::manifest::SIGNATURE_PATH.to_string(), limes_oci::MEDIA_SIGNATURE, v.signature.clone().unwrap().into_bytes()),
    ];
    for (path, mut data) in mem.0 {
        if path.ends_with(".cwasm") {
            let mid = data.len() / 2;
            data[mid] ^= 0x40;
        }
        layers.push((path.clone(), limes_oci::media_type(&path), data));
    }
    // The attacker's own config (CRI would take one equal to the genuine
    // image's for that image).
    let mut config: serde_json::Value = serde_json::from_slice(&limes_oci::image_config(&v.manifest, &v.manifest_bytes)).unwrap();
    config["config"]["Labels"]["tampered"] = "yes".into();
    let archive = oci_archive(name, &serde_json::to_vec(&config).unwrap(), &layers, Some(limes_oci::ARTIFACT_TYPE));
    let path = node.dir.path().join("tampered.tar");
    std::fs::write(&path, archive).unwrap();
    path
}

mod cri {
    pub use k8s_cri::v1::image_service_client::ImageServiceClient;
    pub use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
    pub use k8s_cri::v1::*;
}

/// What kubelet does for a pod with `runtimeClassName: limes` and one
/// container: pull, RunPodSandbox, CreateContainer, StartContainer, wait,
/// read the CRI log, then tear the pod down.
async fn run_pod(node: &Node, image: &str, name: &str, args: &[&str]) -> (i32, String, String) {
    use cri::*;
    let channel = containerd_client::connect(node.sock()).await.unwrap();
    let mut rt = RuntimeServiceClient::new(channel.clone());
    let mut img = ImageServiceClient::new(channel);
    // imagePullPolicy: IfNotPresent.
    let spec = ImageSpec { image: image.into(), ..Default::default() };
    let present = img.image_status(ImageStatusRequest { image: Some(spec.clone()), verbose: false }).await.unwrap().into_inner().image.is_some();
    if !present {
        img.pull_image(PullImageRequest { image: Some(spec), ..Default::default() })
            .await
            .unwrap_or_else(|e| panic!("PullImage {image}: {e}\n{}", node.log()));
    }
    let logs = node.dir.path().join("pods").join(name);
    std::fs::create_dir_all(&logs).unwrap();
    let sandbox_config = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata { name: name.into(), uid: format!("uid-{name}"), namespace: "default".into(), attempt: 0 }),
        log_directory: logs.display().to_string(),
        linux: Some(LinuxPodSandboxConfig {
            // Host network: no CNI plugin on this machine.
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption { network: NamespaceMode::Node as i32, ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let pod = rt
        .run_pod_sandbox(RunPodSandboxRequest { config: Some(sandbox_config.clone()), runtime_handler: "limes".into() })
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", node.log()))
        .into_inner()
        .pod_sandbox_id;
    let container = rt
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(ContainerConfig {
                metadata: Some(ContainerMetadata { name: "fn".into(), attempt: 0 }),
                image: Some(ImageSpec { image: image.into(), ..Default::default() }),
                args: args.iter().map(|a| a.to_string()).collect(),
                log_path: "fn.log".into(),
                ..Default::default()
            }),
            sandbox_config: Some(sandbox_config),
        })
        .await
        .unwrap_or_else(|e| panic!("CreateContainer: {e}\n{}", node.log()))
        .into_inner()
        .container_id;
    rt.start_container(StartContainerRequest { container_id: container.clone() }).await.unwrap_or_else(|e| panic!("StartContainer: {e}\n{}", node.log()));
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let s = rt
            .container_status(ContainerStatusRequest { container_id: container.clone(), verbose: false })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap();
        if s.state == ContainerState::ContainerExited as i32 {
            break s;
        }
        assert!(Instant::now() < deadline, "the container did not finish: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // CRI log lines: `TIME STREAM P|F TEXT`; P continues the line.
    let log = std::fs::read_to_string(logs.join("fn.log")).unwrap_or_default();
    let (mut stdout, mut stderr) = (String::new(), String::new());
    for line in log.lines() {
        let mut parts = line.splitn(4, ' ');
        let (_, stream, tag, text) = (parts.next(), parts.next(), parts.next(), parts.next().unwrap_or(""));
        let out = if stream == Some("stdout") { &mut stdout } else { &mut stderr };
        out.push_str(text);
        if tag == Some("F") {
            out.push('\n');
        }
    }
    rt.remove_container(RemoveContainerRequest { container_id: container }).await.unwrap();
    rt.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await.unwrap();
    rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: pod }).await.unwrap();
    (status.exit_code, stdout, stderr)
}

#[test]
fn kubelets_cri_calls_run_a_pod_and_a_tampered_image_fails_it() {
    let node = Node::start();
    import_pause(&node);
    let image = node.push("noop", &node.key, "0.1.0");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();

    let (code, stdout, stderr) = rt.block_on(run_pod(&node, &image, "job", &["run", "--data", "hello from a pod"]));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.trim_end(), "hello from a pod");
    // A second function is a second image to CRI (it identifies images by
    // their config), so each pod runs its own function.
    let mandel = node.push("mandelbrot", &node.key, "0.1.0");
    let (code, stdout, stderr) = rt.block_on(run_pod(&node, &mandel, "mandel", &["run", "--data", "output=checksum"]));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.trim_end(), MANDELBROT_DEFAULT_CHECKSUM);

    // Layers that do not match the signed manifest: the pod's container
    // fails with exit 3 and says why; the function never ran.
    let tampered = tampered_image(&node, "limes.test/tampered:1");
    ok(node.ctr().args(["-n", "k8s.io", "images", "import"]).arg(&tampered));
    let (code, stdout, stderr) = rt.block_on(run_pod(&node, "limes.test/tampered:1", "tampered", &["run", "--data", "x"]));
    assert_eq!(code, 3, "stdout={stdout} stderr={stderr}");
    assert!(stderr.contains("digest mismatch for aot/"), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    node.assert_all_stopped();
}

/// The shipped shim links one Wasmtime (the loader's) and no Cranelift.
#[test]
fn shim_links_one_wasmtime_and_no_compiler() {
    let out = ok(&mut Command::new(env!("CARGO"))
        .args(["tree", "--locked", "--offline", "-p", "containerd-shim-limes", "-e", "normal", "--prefix", "none"])
        .current_dir(repo()));
    let tree = text(&out.stdout);
    let wasmtimes: std::collections::BTreeSet<&str> = tree.lines().filter(|l| l.starts_with("wasmtime v")).map(|l| l.split(' ').nth(1).unwrap()).collect();
    assert_eq!(wasmtimes.len(), 1, "{wasmtimes:?}");
    for bad in COMPILER_CRATES {
        assert!(!tree.contains(bad), "the shim links {bad}");
    }
}
