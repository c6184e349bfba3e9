//! microVM images, Hermit unikernels and Linux initrds alike: every pack's
//! image boots (QEMU -M microvm; KVM if it runs guests here, else TCG) and
//! answers with exactly the bytes of its Wasm run, with the same faults;
//! the Firecracker config follows Firecracker's documented schema.

mod common;
use common::*;
use limes_bundle::manifest::ImageKind;
use limes_sdk::Request;

const KINDS: [ImageKind; 2] = [ImageKind::Hermit, ImageKind::Linux];

fn vm_opts(probe: &std::path::Path) -> limes::microvm::VmOptions {
    limes::microvm::VmOptions {
        kernel: Some(test_kernel()),
        probe_cache: Some(probe.join("accel")),
        // These cases compare answers, not time: TCG shares 2 cores with the
        // other tests of this binary (deadlines are tested in the fault tests).
        timeout: std::time::Duration::from_secs(120),
        ..Default::default()
    }
}

/// The no-op built with its microVM image of `kind`, signed with a fresh
/// key and installed into a store in `dir`: the key and the store.
fn noop_with_image_installed(dir: &std::path::Path, kind: ImageKind) -> (TestKey, std::path::PathBuf) {
    let key = test_key();
    let built = build_signed_with(&pack("noop"), &key, dir, Some(kind));
    let store = dir.join("store");
    install(&store, &built.bundle, &key);
    (key, store)
}

#[test]
fn every_pack_boots_and_answers_like_wasm() {
    let key = test_key();
    let d = tempdir();
    let keys = limes_bundle::TrustedKeys::load(std::slice::from_ref(&key.public)).unwrap();
    let rt = limes::Runtime::new(&Default::default()).unwrap();
    let cases: Vec<(&str, Request)> = vec![
        ("noop", Request::new("hello microvm").with_meta("k", "v")),
        // Every byte value, CR, LF and NUL runs included: the serial link is
        // raw both ways (a console would echo, translate or buffer these).
        ("noop", Request::new((0..=255u8).chain(*b"\r\n\r\0\0\0LMR1LMQ1").chain((0..=255u8).rev()).collect::<Vec<u8>>())),
        ("mandelbrot", Request::new("output=checksum")),
        ("mandelbrot", Request::new("width=abc")),
        ("image", Request::new(test_jpeg())),
    ];
    for (dir, kind) in ["noop", "mandelbrot", "image"].into_iter().flat_map(|d| KINDS.map(|k| (d, k))) {
        let out = d.path().join(kind.name());
        let built = build_signed_with(&pack(dir), &key, &out, Some(kind));
        let vm = built.manifest.microvm.as_ref().expect("microVM image in the bundle");
        assert_eq!(vm.kind, kind);
        match kind {
            ImageKind::Linux => assert_eq!(vm.target, "x86_64-unknown-linux-musl"),
            ImageKind::Hermit => {
                assert_eq!(vm.target, "x86_64-unknown-hermit");
                // The loader is signed with the image, and nothing of Linux is in it.
                assert_eq!(vm.kernel.as_deref(), Some(limes_bundle::manifest::HERMIT_LOADER_PATH));
                assert!(built.manifest.file(limes_bundle::manifest::INITRD_PATH).is_none());
            }
        }
        // One store per kind: the same name and version, another build.
        let store = limes::Store::open(d.path().join(kind.name()).join("store")).unwrap();
        let f = store.install(&built.bundle, &keys, Default::default()).unwrap();
        let loaded = limes::load(&rt, &f, limes::LoadMode::Auto, limes::store::Integrity::Rehash).unwrap();
        for (_, req) in cases.iter().filter(|(p, _)| *p == dir) {
            let wasm = rt.invoke(&loaded, req.clone(), &Default::default()).unwrap().result;
            let o = limes::microvm::run(&f, req, &vm_opts(d.path())).unwrap_or_else(|e| panic!("{dir} ({kind:?}): {e}"));
            assert_eq!(o.result, wasm, "{dir} ({kind:?}): microVM and Wasm answers differ");
            assert!(o.boot_time > std::time::Duration::ZERO && o.hypervisor.starts_with("qemu") || o.hypervisor == "firecracker");
        }
        if dir == "mandelbrot" {
            let o = limes::microvm::run(&f, &Request::new("output=checksum"), &vm_opts(d.path())).unwrap();
            assert_eq!(String::from_utf8(o.result.unwrap().body).unwrap().trim(), MANDELBROT_DEFAULT_CHECKSUM);
        }
    }
}

#[test]
fn limes_run_boots_the_image() {
    let d = tempdir();
    let (key, store) = noop_with_image_installed(d.path(), ImageKind::Linux);
    let o = ok(limes_cmd(&store).args(["run", "noop", "--backend", "microvm", "--timings", "--data", "from the VM", "--kernel"]).arg(test_kernel()));
    assert_eq!(o.stdout, b"from the VM");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("boot") && err.contains("execution"), "{err}");
    // The first microVM run of a store probes KVM (bounded) and says so; the
    // answer is remembered, so the next run does not probe again.
    assert!(err.contains("KVM probe"), "{err}");
    let o = ok(limes_cmd(&store).args(["run", "noop", "--backend", "microvm", "--timings", "--data", "again", "--kernel"]).arg(test_kernel()));
    assert_eq!(o.stdout, b"again");
    assert!(!String::from_utf8_lossy(&o.stderr).contains("KVM probe"), "{}", String::from_utf8_lossy(&o.stderr));
    // No kernel anywhere: a clear error naming the fix.
    let e = fails(limes_cmd(&store).args(["run", "noop", "--backend", "microvm"]).env_remove("LIMES_KERNEL"), 1);
    assert!(e.contains("no kernel to boot") && e.contains("LIMES_KERNEL"), "{e}");
    // A bundle without an image says so.
    let plain = build_signed(&pack("noop"), &key, &d.path().join("plain"));
    let st = limes::Store::open(d.path().join("store2")).unwrap();
    let keys = limes_bundle::TrustedKeys::load(std::slice::from_ref(&key.public)).unwrap();
    let f = st.install(&plain.bundle, &keys, Default::default()).unwrap();
    let e = limes::microvm::run(&f, &Request::new(""), &vm_opts(d.path())).unwrap_err();
    assert!(e.to_string().contains("has no microVM image"), "{e}");
}

/// The Hermit image through the real binary: `limes run` boots it with its
/// own signed loader (a device kernel setting is for Linux images and is
/// not used), and a loader that is not what was signed never boots.
#[test]
fn limes_run_boots_the_hermit_image() {
    let d = tempdir();
    let (_, store) = noop_with_image_installed(d.path(), ImageKind::Hermit);
    let o = ok(limes_cmd(&store)
        .args(["run", "noop", "--backend", "microvm", "--accel", "tcg", "--timings", "--data", "from Hermit", "--kernel"])
        .arg(test_kernel()));
    assert_eq!(o.stdout, b"from Hermit");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("timings (qemu-tcg): boot"), "{err}");
    // No shared filesystem in a VM: a preopen is refused up front, naming the way out.
    let e = fails(limes_cmd(&store).args(["run", "noop", "--backend", "microvm", "--dir"]).arg(format!("images={}", d.path().display())), 1);
    assert!(e.contains("no shared filesystem") && e.contains("--input"), "{e}");
    // Replace the installed loader with another file of the same size: the
    // rehash before boot refuses it (exit 3), and no VM starts.
    let loader = walk(&store).into_iter().find(|p| p.ends_with(limes_bundle::manifest::HERMIT_LOADER_PATH)).expect("installed loader");
    let len = std::fs::metadata(&loader).unwrap().len() as usize;
    let mut perms = std::fs::metadata(&loader).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&loader, perms).unwrap();
    std::fs::write(&loader, vec![0x90u8; len]).unwrap();
    let e = fails(limes_cmd(&store).args(["run", "noop", "--backend", "microvm", "--accel", "tcg", "--data", "x"]), 3);
    assert!(e.contains(limes_bundle::manifest::HERMIT_LOADER_PATH), "{e}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Field names and required fields of Firecracker's `--config-file`, as in
/// its API specification (firecracker.yaml: BootSource, MachineConfiguration,
/// Drive) and `vmm::resources::VmmConfig`.
#[test]
fn firecracker_config_follows_the_documented_schema() {
    let key = test_key();
    let d = tempdir();
    let kernel = test_kernel();
    for (kind, embedded) in [(ImageKind::Linux, false), (ImageKind::Linux, true), (ImageKind::Hermit, false)] {
        let mut opts = limes_build::BuildOptions {
            path: pack("noop"),
            out_dir: Some(d.path().join(format!("o{}{embedded}", kind.name()))),
            image: kind,
            signing_key: Some(limes_bundle::keys::SecretKey::from_file(&key.secret).unwrap().into()),
            cargo: limes_build::CargoOptions { quiet: true, ..Default::default() },
            microvm: true,
            ..Default::default()
        };
        if embedded {
            opts.kernel = Some(kernel.clone());
        }
        let out = limes_build::build(&opts, &limes_build::pipeline::NoProgress).unwrap();
        let mut mem = limes_bundle::archive::InMemory::default();
        limes_bundle::archive::read_bundle(&out.bundle, &Default::default(), limes_bundle::archive::SignaturePolicy::Unverified, &mut mem).unwrap();
        let file = |p: &str| mem.0.iter().find(|(n, _)| n == p).map(|(_, b)| b.clone());
        let cfg: serde_json::Value = serde_json::from_slice(&file("microvm/firecracker.json").unwrap()).unwrap();
        let top =
            ["boot-source", "drives", "machine-config", "network-interfaces", "vsock", "logger", "metrics", "mmds-config", "balloon", "entropy", "cpu-config"];
        for k in cfg.as_object().unwrap().keys() {
            assert!(top.contains(&k.as_str()), "unknown top-level key {k}");
        }
        let boot = cfg["boot-source"].as_object().expect("boot-source is required");
        for k in boot.keys() {
            assert!(["kernel_image_path", "initrd_path", "boot_args"].contains(&k.as_str()), "boot-source.{k}");
        }
        assert!(boot["kernel_image_path"].is_string(), "kernel_image_path is required");
        match kind {
            ImageKind::Linux => {
                assert_eq!(boot["initrd_path"], "microvm/initrd.cpio");
                assert!(file("microvm/initrd.cpio").unwrap().starts_with(b"070701"));
            }
            ImageKind::Hermit => {
                // The unikernel as the module, our loader as the kernel.
                assert_eq!(boot["initrd_path"], limes_bundle::manifest::HERMIT_IMAGE_PATH);
                assert_eq!(boot["kernel_image_path"], limes_bundle::manifest::HERMIT_LOADER_PATH);
                let image = file(limes_bundle::manifest::HERMIT_IMAGE_PATH).unwrap();
                assert!(image.starts_with(b"\x7fELF\x02"), "a 64-bit ELF");
                assert_eq!(image[7], 0xff, "Hermit images are ELFOSABI_STANDALONE");
                // A 64-bit ELF with the PVH entry note (Xen note 18), which
                // both QEMU and Firecracker boot.
                let loader = file(limes_bundle::manifest::HERMIT_LOADER_PATH).unwrap();
                assert!(loader.starts_with(b"\x7fELF\x02"), "a 64-bit ELF");
                let note = [4u8, 0, 0, 0, 4, 0, 0, 0, 18, 0, 0, 0, b'X', b'e', b'n', 0];
                assert!(loader.windows(note.len()).any(|w| w == note), "no XEN_ELFNOTE_PHYS32_ENTRY");
            }
        }
        let mc = cfg["machine-config"].as_object().expect("machine-config is required");
        for k in mc.keys() {
            assert!(["vcpu_count", "mem_size_mib", "smt", "track_dirty_pages", "cpu_template", "huge_pages"].contains(&k.as_str()), "machine-config.{k}");
        }
        let vcpus = mc["vcpu_count"].as_u64().expect("vcpu_count is required");
        assert!((1..=32).contains(&vcpus));
        assert!(mc["mem_size_mib"].as_u64().expect("mem_size_mib is required") >= 64);
        for drive in cfg["drives"].as_array().unwrap() {
            for req in ["drive_id", "is_root_device", "is_read_only"] {
                assert!(drive.get(req).is_some(), "drives[].{req} is required");
            }
        }
        if embedded {
            assert_eq!(boot["kernel_image_path"], "microvm/vmlinux");
            assert_eq!(file("microvm/vmlinux").unwrap(), std::fs::read(&kernel).unwrap());
            // The embedded kernel boots without --kernel.
            let st = limes::Store::open(d.path().join("st")).unwrap();
            let keys = limes_bundle::TrustedKeys::load(std::slice::from_ref(&key.public)).unwrap();
            let f = st.install(&out.bundle, &keys, Default::default()).unwrap();
            let opts = limes::microvm::VmOptions { probe_cache: Some(d.path().join("accel")), ..Default::default() };
            let o = limes::microvm::run(&f, &Request::new("embedded"), &opts).unwrap();
            assert_eq!(o.result.unwrap().body, b"embedded");
        }
    }
}

/// The same contract on both backends: the function's time limit starts
/// when the request reaches the booted function (boot has its own limit),
/// and a timeout, the memory limit and a panic are the same faults with the
/// same messages and exit code (5) as on Wasm.
#[test]
fn microvm_faults_match_wasm() {
    for kind in KINDS {
        faults_match_wasm(kind);
    }
}

fn faults_match_wasm(kind: ImageKind) {
    let key = test_key();
    let d = tempdir();
    let built = build_signed_with(&fixture("faulty"), &key, d.path(), Some(kind));
    let store = d.path().join("store");
    let limes = || limes_cmd(&store);
    ok(limes().arg("install").arg(&built.bundle).arg("--trust").arg(&key.public));
    // Under TCG the boot alone takes longer than this limit.
    for backend in ["wasm", "microvm"] {
        let run = |data: &str| {
            let mut c = limes();
            c.args(["run", "faulty", "--data", data, "--timeout-ms", "1500", "--accel", "tcg", "--backend", backend, "--kernel"]).arg(test_kernel());
            c
        };
        let e = fails(&mut run("loop"), 5);
        assert!(e.contains("faulty timed out after 1500 ms"), "{backend} {kind:?}: {e}");
        let e = fails(&mut run("oom"), 5);
        assert!(e.contains("faulty exceeded its memory limit of 33554432 bytes"), "{backend} {kind:?}: {e}");
        let e = fails(&mut run("panic"), 5);
        assert!(e.contains("faulty trapped") && e.contains("asked to panic"), "{backend} {kind:?}: {e}");
        let e = fails(&mut run("bad"), 4);
        assert!(e.contains("bad on purpose"), "{backend} {kind:?}: {e}");
        // An abort is a fault too: a trap on Wasm, a VM that ends without
        // answering on a microVM. A Linux guest gets there through a kernel
        // panic and reboot, which under TCG on busy cores can outlast the
        // 1.5 s above: this case checks the classification, not the deadline.
        let mut abort = limes();
        abort.args(["run", "faulty", "--data", "abort", "--timeout-ms", "60000", "--accel", "tcg", "--backend", backend, "--kernel"]).arg(test_kernel());
        let e = fails(&mut abort, 5);
        assert!(e.contains("faulty trapped"), "{backend} {kind:?}: {e}");
    }
    let o =
        ok(limes().args(["run", "faulty", "--data", "echo", "--timeout-ms", "1500", "--accel", "tcg", "--backend", "microvm", "--kernel"]).arg(test_kernel()));
    assert_eq!(o.stdout, b"echo");
    // The function's own output reaches stderr, as a Wasm function's does
    // (tests/loader.rs), not only the answer on stdout.
    let o = ok(limes().args(["run", "faulty", "--data", "noisy", "--accel", "tcg", "--backend", "microvm", "--kernel"]).arg(test_kernel()));
    assert_eq!(o.stdout, b"quiet now");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("to stdout") && err.contains("to stderr"), "{kind:?}: {err}");
}

/// `limes serve` on `store` (TCG, the test kernel) with `extra` flags,
/// once it listens.
fn serve(store: &std::path::Path, extra: &[&str]) -> (std::process::Child, std::net::SocketAddr) {
    let mut child = limes_cmd(store)
        .args(["serve", "--listen", "127.0.0.1:0", "--accel", "tcg", "--kernel"])
        .arg(test_kernel())
        .args(extra)
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let addr = listening_addr(&mut child);
    (child, addr)
}

/// `limes serve --microvm NAME`: requests are answered by VMs already
/// waiting at the function's ready frame, so a request pays execution, not
/// boot; a taken VM is replaced in the background.
#[test]
fn serve_answers_from_pre_booted_microvms() {
    let d = tempdir();
    let (_, store) = noop_with_image_installed(d.path(), ImageKind::Hermit);
    // The second request waits for a boot, which under parallel TCG tests
    // can take longer than the default queue timeout.
    let (mut child, addr) = serve(&store, &["--microvm", "noop", "--vm-pool", "1", "--queue-timeout-ms", "120000"]);
    // The pool booted before serve started listening.
    let t = std::time::Instant::now();
    assert_eq!(http(addr, "POST", "/functions/noop", b"warm"), (200, b"warm".to_vec()));
    let warm = t.elapsed();
    // The next request waits for the replacement to finish booting.
    let t = std::time::Instant::now();
    assert_eq!(http(addr, "POST", "/functions/noop", b"again"), (200, b"again".to_vec()));
    let refill = t.elapsed();
    println!("pre-booted microVM answered in {warm:?}; the next one, waiting for its boot, in {refill:?}");
    // A TCG boot takes seconds; execution of the no-op, milliseconds.
    assert!(warm < std::time::Duration::from_millis(2000), "{warm:?}: the request paid for a boot");
    let (_, m) = http(addr, "GET", "/metrics", b"");
    let m = String::from_utf8(m).unwrap();
    assert!(m.contains("limes_microvm_boots_total{function=\"noop\",outcome=\"ok\"}"), "{m}");
    let _ = child.kill();
    let _ = child.wait();
}

/// A spare VM booted in the background runs in the idle CPU class, so the
/// requests being served keep their cores; taken for a request, it returns
/// to the normal class and answers.
#[test]
fn background_vms_boot_idle_and_answer_in_the_normal_class() {
    let d = tempdir();
    let (_, store) = noop_with_image_installed(d.path(), ImageKind::Hermit);
    let f = limes::Store::open(&store).unwrap().get("noop").unwrap();
    let opts = limes::microvm::VmOptions { background: true, ..vm_opts(d.path()) };
    let vm = limes::microvm::boot_function(&f, &opts).unwrap();
    // SAFETY: a plain query of a thread of our child.
    let classes = |vm: &limes::microvm::BootedVm| -> Vec<i32> { vm.threads().into_iter().map(|tid| unsafe { libc::sched_getscheduler(tid) }).collect() };
    let booted = classes(&vm);
    assert!(!booted.is_empty() && booted.iter().all(|c| *c == libc::SCHED_IDLE), "booted in the background: {booted:?}");
    vm.to_foreground();
    let taken = classes(&vm);
    // Leaving the idle class needs CAP_SYS_NICE (CI runs as root); without
    // it the VM keeps its class, as documented.
    // SAFETY: a plain query.
    let expected = if unsafe { libc::geteuid() } == 0 { libc::SCHED_OTHER } else { libc::SCHED_IDLE };
    assert!(taken.iter().all(|c| *c == expected), "taken for a request: {taken:?}");
    let (outcome, _) = vm.call(&Request::new("idle no more"), std::time::Duration::from_secs(120)).unwrap();
    assert_eq!(outcome.result.unwrap().body, b"idle no more");
}

/// `limes serve --auto NAME`: both backends ready; requests go to the one
/// with the lower measured latency (for the no-op: Wasm, against a microVM
/// under emulation), and /metrics shows the choice and its figures.
#[test]
fn serve_auto_routes_to_the_faster_backend() {
    let d = tempdir();
    let (_, store) = noop_with_image_installed(d.path(), ImageKind::Linux);
    let (mut child, addr) = serve(&store, &["--auto", "noop", "--vm-pool", "2", "--workers", "1"]);
    for i in 0..24 {
        let body = format!("r{i}");
        assert_eq!(http(addr, "POST", "/functions/noop", body.as_bytes()), (200, body.into_bytes()));
    }
    let (_, m) = http(addr, "GET", "/metrics", b"");
    let m = String::from_utf8(m).unwrap();
    assert!(m.contains("limes_auto_backend{function=\"noop\",backend=\"wasm\"} 1"), "{m}");
    assert!(m.contains("limes_auto_p50_seconds{function=\"noop\",backend=\"microvm\"}"), "the microVM was never measured: {m}");
    // `limes list` shows the choice and its figures while serve runs.
    let t = std::time::Instant::now();
    loop {
        let o = ok(limes_cmd(&store).arg("list"));
        let text = String::from_utf8_lossy(&o.stdout).to_string();
        if text.contains("served: auto -> wasm (wasm p50") && text.contains("microvm p50") {
            break;
        }
        assert!(t.elapsed() < std::time::Duration::from_secs(5), "limes list: {text}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}
