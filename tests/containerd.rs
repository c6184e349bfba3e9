//! The Kubernetes path on a real containerd 1.7 (Debian 13's package,
//! unpacked by scripts/fetch-containerd.sh) started by each test on a
//! temporary root: bundles pushed with `limes-pack push`'s code to a real
//! registry, run by `ctr run` and through the CRI calls kubelet makes, with
//! `containerd-shim-limes-v1` as the runtime. Needs root (containerd does).

mod common;
#[path = "common/containerd.rs"]
mod node;
use common::*;
use node::*;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `limes serve` in container `id` of `image` (a Deployment), on the host's network.
fn serve_container(node: &Node, image: &str, id: &str, listen: &str) -> std::process::Child {
    ok(node.ctr().args(["images", "pull", "--plain-http", image]));
    node.ctr()
        .args(["run", "--rm", "--net-host", "--runtime", RUNTIME, image, id, "limes", "serve", "--listen", listen])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// SIGTERM to container `id`: it must stop within 20 s.
fn stop_container(node: &Node, id: &str, mut ctr: std::process::Child) {
    ok(node.ctr().args(["task", "kill", id]));
    let deadline = Instant::now() + Duration::from_secs(20);
    while ctr.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "container {id} did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn ctr_runs_jobs_and_a_server_and_refuses_what_the_node_does_not_trust() {
    let node = Node::start();
    let image = node.push(&pack("noop"), &node.key, "0.1.0");

    // A Job: one invocation, the answer on stdout, exit 0.
    let o = node.ctr_run(&image, "job", &["run", "--data", "hello from a job"]);
    assert!(o.status.success(), "{}\n{}", text(&o.stderr), node.log());
    assert_eq!(text(&o.stdout), "hello from a job");
    // Mandelbrot's known answer, byte for byte.
    let mandel = node.push(&pack("mandelbrot"), &node.key, "0.1.0");
    let o = node.ctr_run(&mandel, "mandel", &["run", "--data", "output=checksum"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout).trim(), MANDELBROT_DEFAULT_CHECKSUM);
    // A function error is exit 4 (as `limes run`), a bad command line exit 2.
    let o = node.ctr_run(&mandel, "bad-input", &["run", "--data", "width=abc"]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o.stderr));
    let o = node.ctr_run(&image, "usage", &["frobnicate"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    // The same limits as `limes run`: a runaway call ends at its deadline,
    // a runaway allocation at the memory limit, both exit 5.
    let faulty = node.push(&fixture("faulty"), &node.key, "0.1.0");
    let o = node.ctr_run(&faulty, "runaway", &["run", "--data", "loop", "--timeout-ms", "300"]);
    assert_eq!(o.status.code(), Some(5), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("timed out after 300 ms"), "{}", text(&o.stderr));
    let o = node.ctr_run(&faulty, "oom", &["run", "--data", "oom"]);
    assert_eq!(o.status.code(), Some(5), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("memory limit"), "{}", text(&o.stderr));

    // Signed, but by a key this node does not trust: refused, exit 3,
    // nothing installed for it.
    let stranger = test_key();
    let untrusted = node.push(&pack("noop"), &stranger, "stranger");
    let o = node.ctr_run(&untrusted, "untrusted", &["run", "--data", "x"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("not trusted"), "{}", text(&o.stderr));
    assert!(o.stdout.is_empty());

    // A standard wasi:http function, as a Job (its request from the flags)
    // and below as a Deployment (served at the root, as `wasmtime serve` does).
    let web = node.push(&pack("http"), &node.key, "0.1.0");
    let o = node.ctr_run(&web, "http-job", &["run", "-X", "PUT", "--path", "/job?x=1"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "{\"method\":\"PUT\",\"path\":\"/job\",\"query\":\"x=1\"}\n");

    // A Deployment: `serve` answers HTTP like `limes serve` until stopped.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let server = serve_container(&node, &image, "server", &listen);
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
    stop_container(&node, "server", server);
    let web_server = serve_container(&node, &web, "web", &listen);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "the wasi:http server container did not answer");
        if std::net::TcpStream::connect(addr).is_ok() {
            let (status, body) = http(addr, "GET", "/some/path?q=2", b"");
            if status == 200 {
                assert_eq!(text(&body), "{\"method\":\"GET\",\"path\":\"/some/path\",\"query\":\"q=2\"}\n");
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    stop_container(&node, "web", web_server);

    // The node's configuration is read by each new shim: one that trusts
    // nothing, or that others could have written, runs nothing and says why.
    let config = node.dir.path().join("limes-shim.json");
    let good = std::fs::read(&config).unwrap();
    std::fs::write(&config, r#"{"trusted_keys": []}"#).unwrap();
    let o = node.ctr_run(&image, "no-keys", &["run", "--data", "x"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("lists no trusted keys"), "{}", text(&o.stderr));
    std::fs::write(&config, &good).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o666)).unwrap();
    let o = node.ctr_run(&image, "open-config", &["run", "--data", "x"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("not configured") && text(&o.stderr).contains("limes-shim.json"), "{}", text(&o.stderr));
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(text(&node.ctr_run(&image, "configured-again", &["run", "--data", "x"]).stdout), "x");

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
    assert_eq!(names, ["faulty", "http-hello", "mandelbrot", "noop"]);
    node.assert_all_stopped();
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
        layers.push((path.clone(), limes_oci::media_type(v.manifest.role_of(&path).unwrap()), data));
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

/// Wait until CRI lists `image`. `ctr images import` writes containerd's
/// image store; CRI's own view of it follows from containerd's events a
/// moment later, and a pod started before then would try to pull an image
/// that no registry has (seen once in CI: "lookup limes.test: no such host").
async fn cri_sees(node: &Node, image: &str) {
    use cri::*;
    let channel = containerd_client::connect(node.sock()).await.unwrap();
    let mut img = ImageServiceClient::new(channel);
    let spec = ImageSpec { image: image.into(), ..Default::default() };
    let t = Instant::now();
    while img.image_status(ImageStatusRequest { image: Some(spec.clone()), verbose: false }).await.unwrap().into_inner().image.is_none() {
        assert!(t.elapsed() < Duration::from_secs(60), "CRI never listed the imported {image}\n{}", node.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
        img.pull_image(PullImageRequest { image: Some(spec), ..Default::default() }).await.unwrap_or_else(|e| panic!("PullImage {image}: {e}\n{}", node.log()));
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
        let s = rt.container_status(ContainerStatusRequest { container_id: container.clone(), verbose: false }).await.unwrap().into_inner().status.unwrap();
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
    let image = node.push(&pack("noop"), &node.key, "0.1.0");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();

    let (code, stdout, stderr) = rt.block_on(run_pod(&node, &image, "job", &["run", "--data", "hello from a pod"]));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.trim_end(), "hello from a pod");
    // A second function is a second image to CRI (it identifies images by
    // their config), so each pod runs its own function.
    let mandel = node.push(&pack("mandelbrot"), &node.key, "0.1.0");
    let (code, stdout, stderr) = rt.block_on(run_pod(&node, &mandel, "mandel", &["run", "--data", "output=checksum"]));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.trim_end(), MANDELBROT_DEFAULT_CHECKSUM);

    // Layers that do not match the signed manifest: the pod's container
    // fails with exit 3 and says why; the function never ran.
    let tampered = tampered_image(&node, "limes.test/tampered:1");
    ok(node.ctr().args(["-n", "k8s.io", "images", "import"]).arg(&tampered));
    rt.block_on(cri_sees(&node, "limes.test/tampered:1"));
    let (code, stdout, stderr) = rt.block_on(run_pod(&node, "limes.test/tampered:1", "tampered", &["run", "--data", "x"]));
    assert_eq!(code, 3, "stdout={stdout} stderr={stderr}");
    assert!(stderr.contains("digest mismatch for aot/"), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    node.assert_all_stopped();
}

/// The shipped shim links one Wasmtime (the loader's) and no Cranelift.
#[test]
fn shim_links_one_wasmtime_and_no_compiler() {
    let out = ok(Command::new(env!("CARGO"))
        .args(["tree", "--locked", "--offline", "-p", "containerd-shim-limes", "-e", "normal", "--prefix", "none"])
        .current_dir(repo()));
    let tree = text(&out.stdout);
    let wasmtimes: std::collections::BTreeSet<&str> = tree.lines().filter(|l| l.starts_with("wasmtime v")).map(|l| l.split(' ').nth(1).unwrap()).collect();
    assert_eq!(wasmtimes.len(), 1, "{wasmtimes:?}");
    for bad in COMPILER_CRATES {
        assert!(!tree.contains(bad), "the shim links {bad}");
    }
}
