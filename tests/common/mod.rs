//! Shared helpers for the end-to-end tests: paths, running the real
//! binaries, building packs once per test process, the frame protocol.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

pub fn pack(name: &str) -> PathBuf {
    repo().join("packs").join(name)
}

pub fn fixture(name: &str) -> PathBuf {
    repo().join("tests").join("fixtures").join(name)
}

pub fn test_jpeg() -> Vec<u8> {
    std::fs::read(pack("image").join("testdata/input-1024x768.jpg")).unwrap()
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("limes-test-").tempdir().unwrap()
}

/// Run a command and require success, showing its output on failure.
pub fn ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Run a command that must fail with `code`; returns stderr.
pub fn fails(cmd: &mut Command, code: i32) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(code), "{cmd:?}: expected exit {code}\n--- stdout\n{}\n--- stderr\n{stderr}", String::from_utf8_lossy(&out.stdout));
    stderr
}

pub fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", String::from_utf8_lossy(&out.stdout)))
}

/// Send one request to a native frame-protocol executable, return the answer.
pub fn run_native(exe: &Path, req: &limes_sdk::Request) -> Result<limes_sdk::Response, limes_sdk::Error> {
    use limes_sdk::frame;
    use std::io::Write;
    let mut child = Command::new(exe).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).spawn().unwrap();
    {
        let mut stdin = child.stdin.take().unwrap();
        frame::write_frame(&mut stdin, frame::REQUEST_MAGIC, &frame::encode_request(req)).unwrap();
        stdin.flush().unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "native runner exited with {}", out.status);
    match frame::read_frame(&mut &out.stdout[..], frame::RESPONSE_MAGIC).unwrap() {
        frame::Frame::Payload(p) => frame::decode_response(&p).unwrap(),
        other => panic!("expected a response frame, got {other:?}"),
    }
}

/// A signing key for the tests, fresh per process.
pub struct TestKey {
    pub dir: tempfile::TempDir,
    pub secret: PathBuf,
    pub public: PathBuf,
}

pub fn test_key() -> TestKey {
    let dir = tempdir();
    let sk = limes_bundle::keys::SecretKey::generate().unwrap();
    let secret = dir.path().join("test.key");
    let public = dir.path().join("test.pub");
    std::fs::write(&secret, sk.to_text()).unwrap();
    std::fs::write(&public, sk.public().to_text()).unwrap();
    TestKey { dir, secret, public }
}

/// Build `crate_dir` with the library (signed with `key`) into `out`.
pub fn build_signed(crate_dir: &Path, key: &TestKey, out: &Path) -> limes_build::BuildOutput {
    build_signed_with(crate_dir, key, out, None)
}

/// [`build_signed`], optionally with a microVM image of this kind.
pub fn build_signed_with(crate_dir: &Path, key: &TestKey, out: &Path, image: Option<limes_bundle::manifest::ImageKind>) -> limes_build::BuildOutput {
    let opts = limes_build::BuildOptions {
        microvm: image.is_some(),
        image: image.unwrap_or_default(),
        path: crate_dir.to_path_buf(),
        out_dir: Some(out.to_path_buf()),
        signing_key: Some(limes_bundle::keys::SecretKey::from_file(&key.secret).unwrap().into()),
        cargo: limes_build::CargoOptions { quiet: true, ..Default::default() },
        ..Default::default()
    };
    limes_build::build(&opts, &limes_build::pipeline::NoProgress).unwrap_or_else(|e| panic!("building {}: {e}", crate_dir.display()))
}

/// Install `bundle` into a fresh store and invoke it once through the AOT
/// path (map + instantiate + call), as a device would.
pub fn run_installed(
    bundle: &Path,
    key: &TestKey,
    req: limes_sdk::Request,
    dirs: Vec<(String, PathBuf)>,
) -> (Result<limes_sdk::Response, limes_sdk::Error>, Option<String>) {
    let store_dir = tempdir();
    let store = limes::Store::open(store_dir.path()).unwrap();
    let keys = limes_bundle::TrustedKeys::load(std::slice::from_ref(&key.public)).unwrap();
    let f = store.install(bundle, &keys, Default::default()).unwrap();
    let rt = limes::Runtime::new(&limes::RuntimeOptions { max_instances: 2, ..Default::default() }).unwrap();
    let loaded = limes::load(&rt, &f, limes::LoadMode::Auto, limes::store::Integrity::Rehash).unwrap();
    assert!(!loaded.jit, "expected a precompiled tier to load");
    let opts = limes::runtime::InvokeOptions { dirs, ..Default::default() };
    let inv = rt.invoke(&loaded, req, &opts).unwrap();
    (inv.result, loaded.tier.clone())
}

/// Known answer for the default Mandelbrot render (800x800, 256 iterations,
/// f32, x in [-2,1], y in [-1.5,1.5]): pinned so that a change in either the
/// native or the Wasm build shows up, not only a difference between them.
pub const MANDELBROT_DEFAULT_CHECKSUM: &str = r#"{"width":800,"height":800,"iterations":256,"fnv1a64":"4663184a2b054bbc","sum":2711483}"#;

/// The kernel microVM tests boot: `$LIMES_KERNEL`, else what
/// `scripts/fetch-kernel.sh` fetched. Missing is a failure, not a skip.
pub fn test_kernel() -> PathBuf {
    let k = std::env::var_os("LIMES_KERNEL").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/var/tmp/limes-kernel/vmlinuz"));
    assert!(k.is_file(), "no kernel at {}: run scripts/fetch-kernel.sh (scripts/setup.sh does)", k.display());
    k
}

/// A real OCI registry (Debian's `docker-registry`, the CNCF distribution
/// server) on 127.0.0.1 with temporary storage; killed on drop.
pub struct TestRegistry {
    child: std::process::Child,
    pub addr: String,
    pub dir: tempfile::TempDir,
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TestRegistry {
    /// Start one; with `basic_auth`, an htpasswd (bcrypt) user is required.
    pub fn start(basic_auth: Option<(&str, &str)>) -> TestRegistry {
        let dir = tempdir();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("127.0.0.1:{port}");
        let mut cfg = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
            dir.path().join("data").display()
        );
        if let Some((user, pass)) = basic_auth {
            let out = ok(Command::new("htpasswd").args(["-Bbn", user, pass]));
            std::fs::write(dir.path().join("htpasswd"), &out.stdout).unwrap();
            cfg += &format!("auth:\n  htpasswd:\n    realm: limes-test\n    path: {}\n", dir.path().join("htpasswd").display());
        }
        std::fs::write(dir.path().join("config.yml"), cfg).unwrap();
        let child = Self::spawn(dir.path());
        let reg = TestRegistry { child, addr, dir };
        reg.wait_up();
        reg
    }

    fn spawn(dir: &Path) -> std::process::Child {
        Command::new("docker-registry")
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("docker-registry is required (apt-get install docker-registry, or run scripts/setup.sh)")
    }

    fn wait_up(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(&self.addr).is_err() {
            assert!(std::time::Instant::now() < deadline, "registry did not start on {}", self.addr);
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Kill the registry (an outage); its storage stays.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Start it again on the same address and storage.
    pub fn restart(&mut self) {
        self.child = Self::spawn(self.dir.path());
        self.wait_up();
    }

    /// Push a bundle file to `reference` on this registry (plain HTTP).
    pub fn push(&self, bundle: &Path, reference: &str) -> limes_oci::PushReport {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(limes_oci::push(bundle, reference, true, &Default::default()))
            .unwrap_or_else(|e| panic!("pushing {} to {reference}: {e}", bundle.display()))
    }

    /// Paths of the stored blobs (for tampering tests).
    pub fn blob_path(&self, sha256_hex: &str) -> PathBuf {
        self.dir.path().join("data/docker/registry/v2/blobs/sha256").join(&sha256_hex[..2]).join(sha256_hex).join("data")
    }
}

/// The real `limes` binary on `store`, with no store, log or registry
/// setting inherited from the environment (tests of the loader package only).
// Each package's tests include this file; only the loader's have the
// `limes` binary, and asking for it elsewhere is a bug in the test.
#[allow(clippy::option_env_unwrap)]
pub fn limes_cmd(store: &Path) -> Command {
    let exe = option_env!("CARGO_BIN_EXE_limes").expect("only the loader package's tests run the limes binary");
    limes_cmd_at(Path::new(exe), store)
}

/// [`limes_cmd`] for another build of the loader (the static device build).
/// Each store gets its own trust directory beside it ([`trust_dir`]).
pub fn limes_cmd_at(exe: &Path, store: &Path) -> Command {
    let mut c = Command::new(exe);
    c.arg("--store").arg(store);
    for var in ["LIMES_HOME", "RUST_LOG", "LIMES_REGISTRY_USERNAME", "LIMES_REGISTRY_PASSWORD", "DOCKER_CONFIG"] {
        c.env_remove(var);
    }
    c.env("LIMES_TRUST_DIR", trust_dir(store));
    c
}

/// Trust `key` for loads from `store` (what `limes install --trust` does,
/// for stores the tests fill through the library).
pub fn trust(store: &Path, key: &TestKey) {
    let dir = trust_dir(store);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(&key.public, dir.join("test.pub")).unwrap();
}

/// The trust directory the tests use for `store`: `STORE.trust`, beside it.
pub fn trust_dir(store: &Path) -> PathBuf {
    let mut name = store.file_name().unwrap_or_default().to_os_string();
    name.push(".trust");
    store.with_file_name(name)
}

/// `limes install BUNDLE --trust KEY` into `store`, which must succeed.
pub fn install(store: &Path, bundle: &Path, key: &TestKey) -> Output {
    ok(limes_cmd(store).arg("install").arg(bundle).arg("--trust").arg(&key.public))
}

/// The address a spawned `limes serve` (stdout piped) listens on: its
/// first line, printed once it accepts connections.
pub fn listening_addr(server: &mut std::process::Child) -> std::net::SocketAddr {
    use std::io::BufRead;
    let mut line = String::new();
    std::io::BufReader::new(server.stdout.take().expect("stdout piped")).read_line(&mut line).unwrap();
    let addr = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    addr.parse().unwrap()
}

/// Minimal HTTP/1.1 client: one request per connection.
pub fn http(addr: std::net::SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n", body.len()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("response has headers");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, raw[split + 4..].to_vec())
}

/// Crates that mean a compiler is linked: the shipped loader and the
/// containerd shim run precompiled tiers only.
pub const COMPILER_CRATES: [&str; 3] = ["cranelift-codegen", "wasmtime-internal-cranelift", "winch"];

/// The real `limes-pack` binary, with no signing key or build date
/// inherited from the environment (tests of the limes-pack package only).
#[allow(clippy::option_env_unwrap)]
pub fn limes_pack_cmd() -> Command {
    let exe = option_env!("CARGO_BIN_EXE_limes-pack").expect("only the limes-pack package's tests run the limes-pack binary");
    let mut c = Command::new(exe);
    for var in ["LIMES_SIGN", "SOURCE_DATE_EPOCH", "RUST_LOG"] {
        c.env_remove(var);
    }
    c
}

/// Re-sign `bundle` after `edit` changed its manifest (a validly signed
/// bundle with different content, as an attacker with the key, or a
/// publisher of another version, would make).
pub fn rewrite(bundle: &Path, key: &TestKey, out: &Path, edit: impl FnOnce(&mut limes_bundle::Manifest)) -> PathBuf {
    rewrite_with(bundle, &limes_bundle::keys::SecretKey::from_file(&key.secret).unwrap(), out, edit, None)
}

/// [`rewrite`] with a secret key, and optionally another trusted comment
/// than the manifest's own.
pub fn rewrite_with(
    bundle: &Path,
    sk: &limes_bundle::keys::SecretKey,
    out: &Path,
    edit: impl FnOnce(&mut limes_bundle::Manifest),
    comment: Option<&str>,
) -> PathBuf {
    limes_bundle::archive::rewrite_manifest(bundle, sk, out, edit, comment).unwrap();
    out.to_path_buf()
}

/// The object directory `name`'s record points to in `store`.
pub fn object_dir(store: &Path, name: &str) -> PathBuf {
    let rec: serde_json::Value = serde_json::from_slice(&std::fs::read(store.join(format!("functions/{name}.json"))).unwrap()).unwrap();
    store.join("objects").join(rec["object"].as_str().unwrap())
}

pub fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(mode)).unwrap();
}

/// Rewrite a file of a read-only object in place, as an attacker with write
/// access would (permissions restored afterwards).
pub fn tamper(file: &Path, edit: impl FnOnce(&mut Vec<u8>)) {
    let dir = file.parent().unwrap();
    chmod(dir, 0o700);
    chmod(file, 0o600);
    let mut bytes = std::fs::read(file).unwrap();
    edit(&mut bytes);
    std::fs::OpenOptions::new().write(true).open(file).and_then(|mut f| std::io::Write::write_all(&mut f, &bytes)).unwrap();
    chmod(file, 0o400);
    chmod(dir, 0o500);
}
