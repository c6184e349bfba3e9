//! End-to-end tests of the `limes` loader binary: install, run, list,
//! remove; tampered and untrusted bundles; rollback protection; faults;
//! the Limes study's world; the thin (no-Cranelift) build.

mod common;
use common::*;
use limes_bundle::archive::{self, BundleLimits, SignaturePolicy};
use limes_bundle::keys::SecretKey;
use std::path::{Path, PathBuf};
use std::process::Command;

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

#[test]
fn install_run_list_remove() {
    let key = test_key();
    let d = tempdir();
    let built = build_signed(&pack("noop"), &key, d.path());
    let store = d.path().join("store");
    let o = install(&store, &built.bundle, &key);
    assert!(stdout(&o).starts_with("installed noop 0.1.0"), "{}", stdout(&o));
    // Installing the same bundle again is a no-op that succeeds.
    ok(limes_cmd(&store).arg("install").arg(&built.bundle).arg("--trust").arg(key.dir.path()));
    let o = ok(limes_cmd(&store).args(["run", "noop", "--data", "hello limes"]));
    assert_eq!(o.stdout, b"hello limes");
    let o = ok(limes_cmd(&store).args(["--json", "run", "noop", "--data", "x", "--timings"]));
    let j = json(&o);
    assert_eq!(j["body_utf8"], "x");
    assert!(j["timings"]["tier"].is_string() && j["timings"]["jit"] == false, "{j}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("map") && err.contains("instantiate") && err.contains("call"), "{err}");
    // A typo gets a suggestion; JSON errors carry a kind.
    let e = fails(limes_cmd(&store).args(["run", "nop"]), 1);
    assert!(e.contains("did you mean \"noop\""), "{e}");
    let o = limes_cmd(&store).args(["--json", "run", "nop"]).output().unwrap();
    assert_eq!(json(&o)["kind"], "not-installed");
    // Binary bodies survive JSON (base64), timings are whole microseconds.
    let o = ok(limes_cmd(&store).args(["--json", "run", "noop", "--input", "-"]).stdin(std::process::Stdio::null()));
    let j = json(&o);
    assert_eq!(j["body_base64"], "");
    assert!(j["timings"]["total_us"].is_u64() && j["timings"]["call_us"].is_u64(), "{j}");
    let input = d.path().join("in.bin");
    std::fs::write(&input, [0u8, 1, 2, 255]).unwrap();
    let o = ok(limes_cmd(&store).args(["run", "noop", "--input"]).arg(&input));
    assert_eq!(o.stdout, [0u8, 1, 2, 255]);
    let o = ok(limes_cmd(&store).args(["--json", "run", "noop", "--input"]).arg(&input));
    assert_eq!(json(&o)["body_base64"], "AAEC/w==");
    assert!(json(&o)["body_utf8"].is_null());

    // Straight from the bundle file: verified, staged, run, cleaned up.
    let o = ok(limes_cmd(&store).arg("run").arg(&built.bundle).arg("--trust").arg(&key.public).args(["--data", "direct", "--timings"]));
    assert_eq!(o.stdout, b"direct");
    assert!(String::from_utf8_lossy(&o.stderr).contains("verify"));
    assert_eq!(std::fs::read_dir(store.join("tmp")).unwrap().count(), 0, "staging left behind");

    let list = json(&ok(limes_cmd(&store).args(["--json", "list"])))["functions"].clone();
    assert_eq!(list[0]["name"], "noop");
    // A complete install lists every file its signed manifest names.
    let files: Vec<&str> = list[0]["files"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect();
    assert!(files.contains(&"component.wasm") && files.iter().any(|f| f.starts_with("aot/")), "{files:?}");
    assert_eq!(list[0]["verified"], true);
    // Store files are read-only.
    let obj = store.join("objects").join(list[0]["object"].as_str().unwrap());
    let meta = std::fs::metadata(obj.join("component.wasm")).unwrap();
    assert!(meta.permissions().readonly());

    let o = ok(limes_cmd(&store).args(["-q", "remove", "noop"]));
    assert!(o.stdout.is_empty(), "-q prints nothing: {}", String::from_utf8_lossy(&o.stdout));
    assert!(!obj.exists(), "unreferenced object is collected");
    let o = ok(limes_cmd(&store).arg("list"));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no functions installed"), "{}", String::from_utf8_lossy(&o.stderr));
    let e = fails(limes_cmd(&store).args(["run", "noop"]), 1);
    assert!(e.contains("no function named \"noop\" is installed"), "{e}");
    let e = fails(limes_cmd(&store).args(["remove", "noop"]), 1);
    assert!(e.contains("no function named"), "{e}");
}

#[test]
fn tampered_or_untrusted_bundles_never_reach_the_store() {
    let key = test_key();
    let d = tempdir();
    let built = build_signed(&pack("noop"), &key, d.path());
    let store = d.path().join("store");
    let orig = std::fs::read(&built.bundle).unwrap();
    for at in [orig.len() / 3, orig.len() / 2, orig.len() - 40] {
        let mut m = orig.clone();
        m[at] ^= 0x10;
        let bad = d.path().join("bad.limes");
        std::fs::write(&bad, &m).unwrap();
        let e = fails(limes_cmd(&store).arg("install").arg(&bad).arg("--trust").arg(&key.public), 3);
        assert!(e.contains("installing"), "{e}");
        let e = fails(limes_cmd(&store).arg("run").arg(&bad).arg("--trust").arg(&key.public), 3);
        assert!(e.contains("verifying"), "{e}");
    }
    let other = test_key();
    let e = fails(limes_cmd(&store).arg("install").arg(&built.bundle).arg("--trust").arg(&other.public), 3);
    assert!(e.contains("not trusted"), "{e}");
    // A validly signed manifest that lies about a file's digest.
    let lying = rewrite(&built.bundle, &key, &d.path().join("lying.limes"), |m| {
        let f = m.files.iter_mut().find(|f| f.path.starts_with("aot/")).unwrap();
        f.sha256 = "0".repeat(64);
    });
    let e = fails(limes_cmd(&store).arg("install").arg(&lying).arg("--trust").arg(&key.public), 3);
    assert!(e.contains("digest mismatch for aot/"), "{e}");
    // Nothing was published, and staging was cleaned up.
    for sub in ["objects", "functions", "tmp"] {
        let n = std::fs::read_dir(store.join(sub)).unwrap().count();
        assert_eq!(n, 0, "{sub}/ is not empty");
    }
    let e = fails(limes_cmd(&store).arg("run").arg(&built.bundle), 1);
    assert!(e.contains("needs --trust"), "{e}");
}

#[test]
fn older_versions_are_refused_unless_allowed() {
    let key = test_key();
    let d = tempdir();
    let built = build_signed(&pack("noop"), &key, d.path());
    let store = d.path().join("store");
    install(&store, &built.bundle, &key);
    let old = rewrite(&built.bundle, &key, &d.path().join("old.limes"), |m| m.function.version = "0.0.9".into());
    let e = fails(limes_cmd(&store).arg("install").arg(&old).arg("--trust").arg(&key.public), 1);
    assert!(e.contains("rollback protection") && e.contains("--allow-downgrade"), "{e}");
    ok(limes_cmd(&store).arg("install").arg(&old).arg("--trust").arg(&key.public).arg("--allow-downgrade"));
    let list = json(&ok(limes_cmd(&store).args(["--json", "list"])))["functions"].clone();
    assert_eq!(list[0]["version"], "0.0.9");
    assert!(limes::store::version_cmp("0.10.0", "0.9.9").is_gt());
    assert!(limes::store::version_cmp("1.0.0", "1.0.0-rc1").is_gt());
}

#[test]
fn components_of_the_limes_study_world_run_unchanged() {
    let key = test_key();
    let d = tempdir();
    let built = build_signed(&fixture("study-run"), &key, d.path());
    assert_eq!(built.manifest.world.kind, limes_bundle::manifest::WorldKind::ComponentRun);
    assert_eq!(built.manifest.world.export, "component:run/run");
    let store = d.path().join("store");
    install(&store, &built.bundle, &key);
    let o = ok(limes_cmd(&store).args(["run", "study", "--data", "mandelbrot 800"]));
    assert_eq!(stdout(&o), "study says: mandelbrot 800");
    // Its `run(args: string)` cannot take bytes that are not UTF-8: the
    // caller's error (exit 4, bad-request), not a fault of the function.
    let input = d.path().join("latin1.bin");
    std::fs::write(&input, [0x63u8, 0xe9, 0xff]).unwrap();
    let o = limes_cmd(&store).args(["--json", "run", "study", "--input"]).arg(&input).output().unwrap();
    assert_eq!(o.status.code(), Some(4), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(json(&o)["function_error"]["kind"], "bad-request");
}

#[test]
fn faulty_functions_fail_cleanly() {
    let key = test_key();
    let d = tempdir();
    let built = build_signed(&fixture("faulty"), &key, d.path());
    let store = d.path().join("store");
    install(&store, &built.bundle, &key);
    let e = fails(limes_cmd(&store).args(["run", "faulty", "--data", "loop"]), 5);
    assert!(e.contains("timed out after 500 ms"), "{e}");
    // A function that declares no preopens says so.
    let e = fails(limes_cmd(&store).args(["run", "faulty", "--dir", "images=/tmp"]), 1);
    assert!(e.contains("it declares no preopens") && !e.contains("(declared: )"), "{e}");
    // Logs written to a file carry no colour codes; -v shows the access path.
    let o = limes_cmd(&store).args(["-v", "run", "faulty", "--data", "x"]).output().unwrap();
    assert!(o.status.success() && !o.stderr.contains(&0x1b), "{}", String::from_utf8_lossy(&o.stderr));
    // The deadline ends the process (compiled code has no epoch checks):
    // not before the limit, and not long after it.
    let t = std::time::Instant::now();
    let e = fails(limes_cmd(&store).args(["run", "faulty", "--data", "loop", "--timeout-ms", "300"]), 5);
    let took = t.elapsed();
    assert!(e.contains("timed out after 300 ms"), "{e}");
    assert!(took >= std::time::Duration::from_millis(300) && took < std::time::Duration::from_secs(3), "{took:?}");
    assert!(e.contains("--timeout-ms"), "the message names the override: {e}");
    let o = limes_cmd(&store).args(["--json", "run", "faulty", "--data", "loop", "--timeout-ms", "100"]).output().unwrap();
    assert_eq!(o.status.code(), Some(5));
    assert_eq!(json(&o)["kind"], "timeout");
    // Straight from the bundle file: the deadline also removes what was
    // staged for the run.
    let e = fails(limes_cmd(&store).arg("run").arg(&built.bundle).arg("--trust").arg(&key.public).args(["--data", "loop", "--timeout-ms", "200"]), 5);
    assert!(e.contains("timed out after 200 ms"), "{e}");
    assert_eq!(std::fs::read_dir(store.join("tmp")).unwrap().count(), 0, "staging left behind by a timeout");
    staged_tree_swapped_for_a_symlink_is_removed_without_following_it(&store, &built.bundle, &key, d.path());
    let e = fails(limes_cmd(&store).args(["run", "faulty", "--data", "oom"]), 5);
    assert!(e.contains("exceeded its memory limit of 33554432 bytes") && e.contains("--memory-limit-mib"), "{e}");
    let e = fails(limes_cmd(&store).args(["run", "faulty", "--data", "panic"]), 5);
    assert!(e.contains("trapped") && e.contains("asked to panic"), "{e}");
    assert!(!e.contains("RUST_BACKTRACE"), "a host-side hint that does nothing: {e}");
    let e = fails(limes_cmd(&store).args(["run", "faulty", "--data", "abort"]), 5);
    assert!(e.contains("trapped"), "{e}");
    let e = fails(limes_cmd(&store).args(["run", "faulty", "--data", "bad"]), 4);
    assert!(e.contains("bad-request: bad on purpose"), "{e}");
    let o = ok(limes_cmd(&store).args(["run", "faulty", "--data", "noisy"]));
    assert_eq!(stdout(&o), "quiet now");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("to stdout") && err.contains("to stderr"), "guest stdio goes to stderr: {err}");
    // Oversized input is refused before instantiation.
    let big = d.path().join("big.bin");
    std::fs::write(&big, vec![0u8; (32 << 20) + 1]).unwrap();
    let e = fails(limes_cmd(&store).args(["run", "faulty", "--input"]).arg(&big), 1);
    assert!(e.contains("exceeds the limit"), "{e}");
    // One runtime survives every fault it can see from inside (a runaway
    // loop is the executor's to end: see `limes run` above and serve's
    // workers) and keeps answering.
    let f = limes::Store::open(&store).unwrap().get("faulty").unwrap();
    let rt = limes::Runtime::new(&Default::default()).unwrap();
    let loaded = limes::load(&rt, &f, limes::LoadMode::Auto, limes::store::Integrity::Rehash).unwrap();
    for body in ["oom", "panic", "abort", "ok"] {
        let r = rt.invoke(&loaded, limes_sdk::Request::new(body), &Default::default());
        if body == "ok" {
            assert_eq!(r.unwrap().result.unwrap().body, b"ok");
        } else {
            assert!(r.is_err(), "{body}");
        }
    }
}

#[test]
fn corrupted_store_entries_are_detected() {
    let key = test_key();
    let d = tempdir();
    let built = build_signed(&pack("noop"), &key, d.path());
    let store = d.path().join("store");
    let o = json(&ok(limes_cmd(&store).args(["--json", "install"]).arg(&built.bundle).arg("--trust").arg(&key.public)));
    let obj = store.join("objects").join(o["object"].as_str().unwrap());
    let victim = std::fs::read_dir(obj.join("aot")).unwrap().next().unwrap().unwrap().path();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(obj.join("aot"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&victim, b"truncated").unwrap();
    // A store object that no longer matches its signed manifest is a
    // verification failure (exit 3), with the fix named.
    let e = fails(limes_cmd(&store).args(["run", "noop"]), 3);
    assert!(e.contains("does not match the signed manifest") && e.contains("reinstall"), "{e}");
}

#[test]
fn preopened_directories_follow_the_manifest() {
    let key = test_key();
    let d = tempdir();
    let built = build_signed(&pack("image"), &key, d.path());
    let store = d.path().join("store");
    install(&store, &built.bundle, &key);
    let images = d.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let jpeg = images.join("in.jpg");
    std::fs::write(&jpeg, test_jpeg()).unwrap();
    let from_body = ok(limes_cmd(&store).args(["run", "image", "--input"]).arg(&jpeg));
    let dir_arg = format!("images={}", images.display());
    let from_file = ok(limes_cmd(&store).args(["run", "image", "--meta", "file=in.jpg", "--dir", &dir_arg]));
    assert_eq!(from_body.stdout, from_file.stdout);
    assert_eq!(&from_body.stdout[..2], b"\xff\xd8");
    // Without the binding the file is simply not there.
    let e = fails(limes_cmd(&store).args(["run", "image", "--meta", "file=in.jpg"]), 4);
    assert!(e.contains("not-found") && e.contains("hint: image declares preopen(s) images") && e.contains("--dir"), "{e}");
    let e = fails(limes_cmd(&store).args(["run", "image", "--dir", "secrets=/etc"]), 1);
    assert!(e.contains("no preopen named \"secrets\"") && e.contains("it declares: images"), "{e}");
    // Read-only: the declared preopen is not writable.
    let m = limes::Store::open(&store).unwrap().get("image").unwrap().manifest;
    assert!(!m.preopens[0].writable);
}

#[test]
// Which branch holds depends on the build's features: the constant is the point.
#[allow(clippy::assertions_on_constants)]
fn incompatible_artifacts_fall_back_or_fail_with_the_reason() {
    let key = test_key();
    let d = tempdir();
    let built = build_signed(&pack("noop"), &key, d.path());
    let other_engine = rewrite(&built.bundle, &key, &d.path().join("w.limes"), |m| m.engine.wasmtime = "47.0.0".into());
    let store_dir = d.path().join("store");
    let store = limes::Store::open(&store_dir).unwrap();
    let keys = limes_bundle::TrustedKeys::load(std::slice::from_ref(&key.public)).unwrap();
    let f = store.install(&other_engine, &keys, Default::default()).unwrap();
    let rt = limes::Runtime::new(&Default::default()).unwrap();
    match limes::load(&rt, &f, limes::LoadMode::Auto, limes::store::Integrity::Rehash) {
        Ok(l) => {
            assert!(limes::JIT_ENABLED, "only a JIT build may fall back");
            assert!(l.jit && l.tier.is_none());
            let r = rt.invoke(&l, limes_sdk::Request::new("jit"), &Default::default()).unwrap();
            assert_eq!(r.result.unwrap().body, b"jit");
        }
        Err(e) => {
            assert!(!limes::JIT_ENABLED);
            let msg = e.to_string();
            assert!(msg.contains("artifacts are for Wasmtime 47.0.0"), "{msg}");
        }
    }
}

/// The device build: the loader alone (no workspace feature unification)
/// for the static target. It must contain no Cranelift, be a static
/// executable (no dynamic loader to start), load AOT tiers with the known
/// answer, refuse `--jit` with a clear message, and serve through worker
/// processes that are the same static executable.
#[test]
fn device_loader_is_static_without_cranelift_and_runs_aot() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let tree = ok(Command::new(&cargo).args(["tree", "-p", "limes", "-e", "normal", "--prefix", "none", "--target", limes::DEVICE_TARGET]).current_dir(repo()));
    let tree = stdout(&tree);
    assert!(tree.contains(&format!("wasmtime v{}", limes_bundle::profile::WASMTIME_VERSION)), "{tree}");
    for bad in COMPILER_CRATES {
        assert!(!tree.contains(bad), "the device loader build pulls {bad}");
    }
    // scripts/test.sh builds it before the tests; this is then a no-op.
    ok(Command::new(&cargo).args(["build", "--quiet", "-p", "limes", "--bin", "limes", "--target", limes::DEVICE_TARGET]).current_dir(repo()));
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| repo().join("target"));
    let device = target.join(limes::DEVICE_TARGET).join("debug").join("limes");
    assert_eq!(elf_interpreter(&std::fs::read(&device).unwrap()), None, "{} must be static", device.display());
    // The test's own loader is dynamically linked, so the check can fail.
    let own = std::fs::read(env!("CARGO_BIN_EXE_limes")).unwrap();
    assert!(elf_interpreter(&own).is_some_and(|i| i.contains("ld-linux")), "{:?}", elf_interpreter(&own));

    let key = test_key();
    let d = tempdir();
    let built = build_signed(&pack("mandelbrot"), &key, d.path());
    let store = d.path().join("store");
    let device_cmd = || limes_cmd_at(&device, &store);
    ok(device_cmd().arg("install").arg(&built.bundle).arg("--trust").arg(&key.public));
    let o = ok(device_cmd().args(["run", "mandelbrot", "--data", "output=checksum"]));
    assert_eq!(stdout(&o).trim(), MANDELBROT_DEFAULT_CHECKSUM);
    let e = fails(device_cmd().args(["run", "mandelbrot", "--jit"]), 1);
    assert!(e.contains("no JIT"), "{e}");

    let mut server = device_cmd()
        .args(["serve", "--listen", "127.0.0.1:0", "--function", "mandelbrot", "--workers", "1"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let addr = listening_addr(&mut server);
    let (status, body) = http(addr, "POST", "/functions/mandelbrot", b"output=checksum");
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!((status, String::from_utf8_lossy(&body).trim()), (200, MANDELBROT_DEFAULT_CHECKSUM));
}

/// The program interpreter an ELF64 executable names (PT_INTERP), if any.
fn elf_interpreter(elf: &[u8]) -> Option<String> {
    let u16_at = |o: usize| u16::from_le_bytes(elf[o..o + 2].try_into().unwrap()) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap()) as usize;
    assert_eq!(&elf[..5], b"\x7fELF\x02", "not an ELF64 file");
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    (0..phnum).map(|i| phoff + i * phentsize).find(|&h| u32::from_le_bytes(elf[h..h + 4].try_into().unwrap()) == 3).map(|h| {
        let (off, size) = (u64_at(h + 8), u64_at(h + 32));
        String::from_utf8_lossy(&elf[off..off + size]).trim_end_matches('\0').to_string()
    })
}

/// Every `limes` subcommand's --help ends with examples.
#[test]
fn help_has_examples() {
    let d = tempdir();
    for sub in ["check", "install", "list", "pull", "remove", "run", "serve"] {
        let o = ok(limes_cmd(d.path()).args([sub, "--help"]));
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(text.contains("Examples:") && text.contains(&format!("limes {sub}")), "{sub} --help:\n{text}");
    }
}

/// The static aarch64 device build of `limes` (scripts/test.sh builds it
/// first; this is then a no-op), checked to be a static aarch64 executable
/// that this x86_64 machine runs through qemu-user (binfmt_misc, which
/// scripts/setup.sh registers: serve's workers are the same executable,
/// started by the kernel like any other).
fn aarch64_device_loader() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    ok(Command::new(&cargo).args(["build", "--quiet", "-p", "limes", "--bin", "limes", "--target", limes::DEVICE_TARGET_AARCH64]).current_dir(repo()));
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| repo().join("target"));
    let device = target.join(limes::DEVICE_TARGET_AARCH64).join("debug").join("limes");
    let elf = std::fs::read(&device).unwrap();
    assert_eq!(u16::from_le_bytes([elf[0x12], elf[0x13]]), 0xb7, "{} is not an aarch64 executable", device.display());
    assert_eq!(elf_interpreter(&elf), None, "{} must be static", device.display());
    let binfmt = std::fs::read_to_string("/proc/sys/fs/binfmt_misc/qemu-aarch64").unwrap_or_default();
    assert!(binfmt.starts_with("enabled"), "qemu-user is not registered for aarch64 executables (binfmt_misc): run scripts/setup.sh");
    device
}

/// ARM64 devices: one `limes-pack build` makes a bundle that the static
/// aarch64 loader (under qemu-user) installs and runs with the answers of
/// x86_64: every reference pack, the wasi:http pack, limits and exit codes,
/// `limes serve` with worker processes, tier choice by the CPU's features,
/// a pull that fetches only the aarch64 tier, and clear refusals of what an
/// aarch64 device cannot run.
#[test]
fn aarch64_device_loader_runs_every_pack_under_qemu_user() {
    let device = aarch64_device_loader();
    let key = test_key();
    let d = tempdir();
    let built = |name: &str, dir: &Path| build_signed(dir, &key, &d.path().join(name)).bundle;
    let noop = built("noop", &pack("noop"));
    let mandelbrot = built("mandelbrot", &pack("mandelbrot"));
    let image = built("image", &pack("image"));
    let http_pack = built("http", &pack("http"));
    let faulty = built("faulty", &fixture("faulty"));
    let manifest = archive::read_bundle(&mandelbrot, &BundleLimits::default(), SignaturePolicy::Unverified, &mut archive::Discard).unwrap().manifest;
    assert_eq!(manifest.tiers_by_arch().iter().map(|(a, t)| (a.as_str(), t.len())).collect::<Vec<_>>(), [("x86_64", 3), ("aarch64", 2)]);

    let store = d.path().join("store");
    let arm = || limes_cmd_at(&device, &store);
    for b in [&noop, &mandelbrot, &image, &http_pack, &faulty] {
        ok(arm().arg("install").arg(b).arg("--trust").arg(&key.public));
    }
    assert_eq!(stdout(&ok(arm().args(["run", "noop", "--data", "hello arm"]))), "hello arm");

    // The tier follows the CPU the kernel reports: QEMU's default CPU has
    // LSE (ARMv8.1+), a Cortex-A53 (Raspberry Pi 3) does not.
    let run_json = |cpu: Option<&str>| {
        let mut c = arm();
        if let Some(cpu) = cpu {
            c.env("QEMU_CPU", cpu);
        }
        json(&ok(c.args(["--json", "run", "mandelbrot", "--data", "output=checksum"])))
    };
    for (cpu, tier) in [(None, "aarch64-lse"), (Some("cortex-a53"), "aarch64")] {
        let v = run_json(cpu);
        assert_eq!(v["body_utf8"].as_str().unwrap().trim(), MANDELBROT_DEFAULT_CHECKSUM, "{v}");
        assert_eq!(v["timings"]["tier"], tier, "{cpu:?}: {v}");
    }

    // The image pipeline gives the same bytes as on x86_64.
    let jpeg = d.path().join("in.jpg");
    std::fs::write(&jpeg, test_jpeg()).unwrap();
    let x86_store = d.path().join("x86-store");
    install(&x86_store, &image, &key);
    let x86 = ok(limes_cmd(&x86_store).args(["run", "image", "--input"]).arg(&jpeg)).stdout;
    let arm_out = ok(arm().args(["run", "image", "--input"]).arg(&jpeg)).stdout;
    assert!(x86.len() > 1000 && x86 == arm_out, "image output differs: {} vs {} bytes", x86.len(), arm_out.len());

    // A standard wasi:http component.
    let o = ok(arm().args(["run", "http-hello", "-X", "POST", "--path", "/echo", "--data", "ping"]));
    assert_eq!(stdout(&o).trim(), "ping");

    // Limits and exit codes, as on x86_64.
    let e = fails(arm().args(["run", "faulty", "--data", "loop"]), 5);
    assert!(e.contains("timed out after 500 ms"), "{e}");
    let e = fails(arm().args(["run", "faulty", "--data", "oom"]), 5);
    assert!(e.contains("exceeded its memory limit of 33554432 bytes"), "{e}");
    let e = fails(arm().args(["run", "faulty", "--data", "panic"]), 5);
    assert!(e.contains("trapped") && e.contains("asked to panic"), "{e}");
    let e = fails(arm().args(["run", "faulty", "--data", "bad"]), 4);
    assert!(e.contains("bad-request: bad on purpose"), "{e}");

    // `limes serve`: worker processes (the same aarch64 executable) answer.
    let mut server = arm()
        .args(["serve", "--listen", "127.0.0.1:0", "--function", "mandelbrot", "--function", "http-hello", "--function", "faulty", "--workers", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let addr = listening_addr(&mut server);
    let answers = [
        http(addr, "POST", "/functions/mandelbrot", b"output=checksum"),
        http(addr, "POST", "/functions/http-hello/echo", b"served"),
        http(addr, "POST", "/functions/faulty", b"panic"),
        http(addr, "POST", "/functions/mandelbrot", b"output=checksum"),
    ];
    let _ = server.kill();
    let _ = server.wait();
    let answers: Vec<(u16, String)> = answers.into_iter().map(|(s, b)| (s, String::from_utf8_lossy(&b).trim().to_string())).collect();
    assert_eq!(answers[0], (200, MANDELBROT_DEFAULT_CHECKSUM.to_string()));
    assert_eq!(answers[1], (200, "served".to_string()));
    assert_eq!(answers[2].0, 500, "a trap in a worker: {:?}", answers[2]);
    assert_eq!(answers[3], answers[0], "the next request after a trap");

    // A bundle without aarch64 tiers is refused at install, naming its tiers.
    let x86_only = limes_build::build(
        &limes_build::BuildOptions {
            path: pack("noop"),
            out_dir: Some(d.path().join("x86-only")),
            tiers: vec!["x86-64".into(), "x86-64-v3".into()],
            signing_key: Some(SecretKey::from_file(&key.secret).unwrap().into()),
            cargo: limes_build::CargoOptions { quiet: true, ..Default::default() },
            ..Default::default()
        },
        &limes_build::pipeline::NoProgress,
    )
    .unwrap();
    let fresh = d.path().join("fresh-store");
    let e = fails(limes_cmd_at(&device, &fresh).arg("install").arg(&x86_only.bundle).arg("--trust").arg(&key.public), 1);
    assert!(e.contains("no precompiled code for this aarch64 device") && e.contains("x86_64: x86-64, x86-64-v3") && e.contains("--tier aarch64"), "{e}");

    // A microVM image is x86_64: an aarch64 device says so and runs Wasm.
    let with_image = build_signed_with(&pack("noop"), &key, &d.path().join("image-noop"), Some(limes_bundle::manifest::ImageKind::Linux));
    let vm_store = d.path().join("vm-store");
    ok(limes_cmd_at(&device, &vm_store).arg("install").arg(&with_image.bundle).arg("--trust").arg(&key.public));
    let e = fails(limes_cmd_at(&device, &vm_store).args(["run", "noop", "--backend", "microvm", "--data", "x"]), 1);
    assert!(e.contains("microVM image is built for x86_64") && e.contains("this device is aarch64") && e.contains("--backend wasm"), "{e}");

    // From a registry, an aarch64 device downloads the component and its
    // one tier: none of the x86_64 code.
    let registry = TestRegistry::start(None);
    let reference = format!("{}/fns/mandelbrot:0.1.0", registry.addr);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(limes_oci::push(&mandelbrot, &reference, true, &Default::default()))
        .unwrap();
    let pulled = d.path().join("pulled");
    let o = json(&ok(limes_cmd_at(&device, &pulled).args(["--json", "pull", &reference, "--insecure", "--trust"]).arg(&key.public)));
    let mut downloaded: Vec<&str> = o["downloaded"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    downloaded.sort();
    assert_eq!(downloaded, ["aot/aarch64-lse.cwasm", "component.wasm"], "{o}");
    let o = ok(limes_cmd_at(&device, &pulled).args(["run", "mandelbrot", "--data", "output=checksum"]));
    assert_eq!(stdout(&o).trim(), MANDELBROT_DEFAULT_CHECKSUM);
}

/// An attack on that removal: while the function runs, the store's writer
/// swaps the staged tree's `aot/` for a symlink to a read-only directory of
/// its own holding files of the same names. The deadline's clean-up must
/// unlink the symlink, not `chmod` or empty what it points at. (It once
/// listed the tree when armed and removed those paths at expiry.)
fn staged_tree_swapped_for_a_symlink_is_removed_without_following_it(store: &Path, bundle: &Path, key: &TestKey, scratch: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut child = limes_cmd(store)
        .arg("run")
        .arg(bundle)
        .arg("--trust")
        .arg(&key.public)
        .args(["--data", "loop", "--timeout-ms", "3000"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The call has begun once the staged artifact is mapped.
    let tmp = store.join("tmp");
    let t = std::time::Instant::now();
    let cwasm = loop {
        let maps = std::fs::read_to_string(format!("/proc/{}/maps", child.id())).unwrap_or_default();
        if let Some(p) = maps.lines().filter_map(|l| l.split_whitespace().nth(5)).find(|p| p.starts_with(tmp.to_str().unwrap()) && p.ends_with(".cwasm")) {
            break PathBuf::from(p);
        }
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it mapped a staged artifact");
        assert!(t.elapsed() < std::time::Duration::from_secs(120), "no staged artifact mapped");
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    let aot = cwasm.parent().unwrap();
    let staged = aot.parent().unwrap();
    let victim = scratch.join("victim-aot");
    std::fs::create_dir(&victim).unwrap();
    let names: Vec<_> = std::fs::read_dir(aot).unwrap().map(|e| e.unwrap().file_name()).collect();
    for n in &names {
        std::fs::write(victim.join(n), b"not the store's").unwrap();
    }
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o500)).unwrap();
    std::fs::set_permissions(staged, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::rename(aot, scratch.join("moved-aot")).unwrap();
    std::os::unix::fs::symlink(&victim, aot).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(5), "the deadline ends the run");
    assert_eq!(std::fs::metadata(&victim).unwrap().permissions().mode() & 0o777, 0o500, "the symlink's target was chmod-ed");
    for n in &names {
        assert_eq!(std::fs::read(victim.join(n)).unwrap(), b"not the store's", "{n:?} was removed through the symlink");
    }
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0, "staging (and the planted symlink) left behind");
}
