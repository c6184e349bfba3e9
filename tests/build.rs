//! End-to-end tests of `limes-pack build`, `native` and `new`, running the
//! real binary and running what it builds under Wasmtime.

mod common;
use common::*;
use limes_sdk::Request;
use std::process::Command;

fn native_exe(crate_dir: &std::path::Path) -> std::path::PathBuf {
    let out = ok(limes_pack_cmd().args(["native", "--json"]).arg(crate_dir));
    json(&out)["executable"].as_str().unwrap().into()
}

/// `limes-pack new NAME --template TEMPLATE` in `work` (with its SDK copy
/// kept there too); the new crate's directory.
fn new_crate(work: &std::path::Path, name: &str, template: &str) -> std::path::PathBuf {
    new_crate_in(work, name, template, &work.join("home"))
}

/// The shared target directory when the suite has one (warm builds), else
/// one in `work`.
fn target_dir(work: &std::path::Path) -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(std::path::PathBuf::from).unwrap_or_else(|| work.join("target"))
}

#[test]
fn every_pack_builds_into_a_validated_bundle() {
    let out_dir = tempdir();
    for (dir, name) in [("noop", "noop"), ("mandelbrot", "mandelbrot"), ("image", "image")] {
        let out = ok(limes_pack_cmd().args(["build", "--json", "--out-dir"]).arg(out_dir.path()).arg(pack(dir)));
        let j = json(&out);
        assert_eq!(j["function"], name);
        assert_eq!(j["world"]["kind"], "limes");
        assert_eq!(j["world"]["export"], "limes:function/handler@0.1.0");
        let imports: Vec<&str> = j["world"]["imports"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert!(imports.iter().all(|i| i.starts_with("wasi:") || i.starts_with("limes:function/types@")), "{imports:?}");
        let tiers: Vec<&str> = j["tiers"].as_array().unwrap().iter().map(|t| t["tier"].as_str().unwrap()).collect();
        assert_eq!(tiers, ["x86-64", "x86-64-v2", "x86-64-v3", "aarch64", "aarch64-lse"]);
        assert_eq!(j["microvm"]["kind"], "hermit", "a Hermit image by default");
        assert_eq!(j["microvm"]["target"], "x86_64-unknown-hermit");
        let bundle = out_dir.path().join(format!("{name}-0.1.0.limes"));
        assert!(bundle.is_file());
        let insp = json(&ok(limes_pack_cmd().args(["inspect", "--json"]).arg(&bundle)));
        assert_eq!(insp["manifest"]["function"]["name"], name);
        // Tiers grouped by architecture, each artifact for its own target.
        assert_eq!(insp["tiers_by_arch"], serde_json::json!({"x86_64": ["x86-64", "x86-64-v2", "x86-64-v3"], "aarch64": ["aarch64", "aarch64-lse"]}));
        for a in insp["manifest"]["aot"].as_array().unwrap() {
            let arch = if a["tier"].as_str().unwrap().starts_with("aarch64") { "aarch64" } else { "x86_64" };
            assert_eq!(a["target"], format!("{arch}-unknown-linux-gnu"), "{a}");
        }
        let text = String::from_utf8(ok(limes_pack_cmd().args(["inspect"]).arg(&bundle)).stdout).unwrap();
        let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split_whitespace().take(3).collect()).collect();
        for want in [["tier", "x86_64", "x86-64"], ["tier", "aarch64", "aarch64"]] {
            assert!(rows.iter().any(|r| r[..] == want[..]), "no group row {want:?}:\n{text}");
        }
        assert_eq!(insp["signer_key_id"], serde_json::Value::Null);
    }
    // The image pack declares its preopen.
    let insp = json(&ok(limes_pack_cmd().args(["inspect", "--json"]).arg(out_dir.path().join("image-0.1.0.limes"))));
    assert_eq!(insp["manifest"]["preopens"][0]["guest_path"], "/images");
}

#[test]
fn packs_give_identical_bytes_natively_and_as_wasm() {
    let key = test_key();
    let out = tempdir();
    let jpeg = test_jpeg();
    let images = tempdir();
    std::fs::write(images.path().join("in.jpg"), &jpeg).unwrap();
    let cases: Vec<(&str, Request)> = vec![
        ("noop", Request::new(b"hello limes".to_vec()).with_meta("x", "1")),
        ("noop", Request::new(Vec::new())),
        ("mandelbrot", Request::new("output=checksum")),
        ("mandelbrot", Request::new("width=64&height=48&iterations=100")),
        ("mandelbrot", Request::new("width=0")),
        ("image", Request::new(jpeg.clone())),
        ("image", Request::new(jpeg.clone()).with_meta("format", "png")),
        ("image", Request::new(b"not a jpeg".to_vec())),
    ];
    for dir in ["noop", "mandelbrot", "image"] {
        let built = build_signed(&pack(dir), &key, out.path());
        let exe = native_exe(&pack(dir));
        for (_, req) in cases.iter().filter(|(d, _)| *d == dir) {
            let native = run_native(&exe, req);
            let dirs = if dir == "image" { vec![("images".into(), images.path().to_path_buf())] } else { vec![] };
            let (wasm, tier) = run_installed(&built.bundle, &key, req.clone(), dirs);
            assert!(tier.is_some());
            assert_eq!(native, wasm, "{dir}: native and wasm answers differ for {:?}", String::from_utf8_lossy(&req.body[..req.body.len().min(40)]));
        }
    }
    // Known answers.
    let (noop, _) = run_installed(&out.path().join("noop-0.1.0.limes"), &key, Request::new("ping"), vec![]);
    assert_eq!(noop.unwrap().body, b"ping");
    let (m, _) = run_installed(&out.path().join("mandelbrot-0.1.0.limes"), &key, Request::new("output=checksum"), vec![]);
    let text = String::from_utf8(m.unwrap().body).unwrap();
    assert_eq!(text.trim(), MANDELBROT_DEFAULT_CHECKSUM, "Mandelbrot checksum drifted");
    let (png, _) = run_installed(&out.path().join("mandelbrot-0.1.0.limes"), &key, Request::new(""), vec![]);
    let png = image::load_from_memory(&png.unwrap().body).unwrap();
    assert_eq!((png.width(), png.height(), png.color()), (800, 800, image::ColorType::L8));

    // The image pipeline reads the same answer from a preopened file.
    let bundle = out.path().join("image-0.1.0.limes");
    let dirs = vec![("images".to_string(), images.path().to_path_buf())];
    let (from_body, _) = run_installed(&bundle, &key, Request::new(jpeg.clone()), dirs.clone());
    let (from_file, _) = run_installed(&bundle, &key, Request::new("").with_meta("file", "in.jpg"), dirs.clone());
    let from_body = from_body.unwrap();
    assert_eq!(from_body, from_file.unwrap());
    let img = image::load_from_memory(&from_body.body).unwrap();
    assert_eq!((img.width(), img.height(), img.color()), (1024, 768, image::ColorType::L8));
    let (missing, _) = run_installed(&bundle, &key, Request::new("").with_meta("file", "nope.jpg"), dirs.clone());
    assert!(matches!(missing, Err(limes_sdk::Error::NotFound(_))), "{missing:?}");
    let (escape, _) = run_installed(&bundle, &key, Request::new("").with_meta("file", "../etc/passwd"), dirs);
    assert!(matches!(escape, Err(limes_sdk::Error::BadRequest(_))), "{escape:?}");
}

#[test]
fn new_templates_build_and_run() {
    let key = test_key();
    let work = tempdir();
    for template in ["blank", "noop", "mandelbrot", "image", "http"] {
        let name = format!("demo-{template}");
        let dir = new_crate(work.path(), &name, template);
        assert!(dir.join("Cargo.toml").is_file() && dir.join("src/lib.rs").is_file());
        // The SDK comes from the copy limes-pack carries, not from this
        // checkout, and by version: the crate holds no path of this machine
        // (its git-ignored cargo config does). (The http template is a
        // standard wasi:http crate: no SDK at all.)
        let toml = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        assert!(!toml.contains(&common::repo().display().to_string()) && !toml.contains(&work.path().display().to_string()), "{toml}");
        assert_eq!(toml.contains("limes-sdk = \"0.1\""), template != "http", "{toml}");
        let local = std::fs::read_to_string(dir.join(".cargo/config.toml")).unwrap_or_default();
        assert_eq!(local.contains(&work.path().join("home/sdk").display().to_string()), template != "http", "{local}");
        let out = ok(limes_pack_cmd().args(["build", "--json", "--sign"]).arg(&key.secret).arg(&dir).env("CARGO_TARGET_DIR", target_dir(work.path())));
        let j = json(&out);
        assert_eq!(j["world"]["kind"], if template == "http" { "wasi-http" } else { "limes" }, "{template}");
        // The default build makes a microVM image, except of a wasi:http
        // function: it has no native build.
        assert_eq!(j["microvm"].is_null(), template == "http", "{template}");
        let bundle = std::path::PathBuf::from(j["bundle"].as_str().unwrap());
        let req = match template {
            "blank" => Request::new("limes"),
            "noop" => Request::new("echo"),
            "mandelbrot" => Request::new("output=checksum"),
            "http" => Request::new("").with_meta(":path", "/hello?x=1"),
            _ => Request::new(test_jpeg()),
        };
        let (res, _) = run_installed(&bundle, &key, req, vec![]);
        let body = res.unwrap().body;
        match template {
            "blank" => assert_eq!(body, b"hello, limes\n"),
            "noop" => assert_eq!(body, b"echo"),
            "mandelbrot" => assert_eq!(String::from_utf8(body).unwrap().trim(), MANDELBROT_DEFAULT_CHECKSUM),
            "http" => assert_eq!(String::from_utf8_lossy(&body), "{\"method\":\"GET\",\"path\":\"/hello\",\"query\":\"x=1\"}\n"),
            _ => assert_eq!(&body[..2], b"\xff\xd8", "JPEG output"),
        }
    }
    // Names are checked and existing directories are never overwritten.
    let e = fails(limes_pack_cmd().args(["new", "demo-blank", "--dir"]).arg(work.path()), 1);
    assert!(e.contains("already exists"), "{e}");
    let e = fails(limes_pack_cmd().args(["new", "9bad", "--dir"]).arg(work.path()), 1);
    assert!(e.contains("not a valid crate name"), "{e}");
    let e = fails(limes_pack_cmd().args(["new", "x", "--template", "nope", "--dir"]).arg(work.path()), 1);
    assert!(e.contains("choose one of: blank, noop, mandelbrot, image, http"), "{e}");
}

#[test]
fn clear_errors_for_bad_crates() {
    let out = tempdir();
    let e = fails(limes_pack_cmd().args(["build", "--out-dir"]).arg(out.path()).arg(fixture("not-a-function")), 1);
    assert!(e.contains("is not a limes function crate") && e.contains("limes_sdk::export!"), "{e}");
    assert!(e.contains("limes-sdk = \"0.1\""), "the exact dependency line: {e}");

    let e = fails(limes_pack_cmd().args(["build", "--out-dir"]).arg(out.path()).arg(fixture("wrong-world")), 1);
    assert!(e.contains("is not a limes function") && e.contains("limes_sdk::export!(handle)"), "{e}");

    let e = fails(limes_pack_cmd().args(["build", "--out-dir"]).arg(out.path()).arg(fixture("broken")), 1);
    assert!(e.contains("error[E0308]"), "cargo's own error must pass through: {e}");
    assert!(e.contains("`cargo build` of `broken` for wasm32-wasip2 failed"), "{e}");

    let e = fails(limes_pack_cmd().args(["build", "--out-dir"]).arg(out.path()).arg("/nonexistent/crate"), 1);
    assert!(e.contains("no Cargo.toml at /nonexistent/crate"), "{e}");

    // An unknown tier is a usage error (exit 2) naming the tiers there are.
    let e = fails(limes_pack_cmd().args(["build", "--tier", "x86-64-v9", "--out-dir"]).arg(out.path()).arg(pack("noop")), 2);
    assert!(e.contains("x86-64-v9") && e.contains("possible values") && e.contains("x86-64-v3"), "{e}");

    // ... and in the crate's metadata, an error naming the crate, before any build.
    let bad_meta = tempdir();
    let manifest = new_crate(bad_meta.path(), "tiered", "noop").join("Cargo.toml");
    let toml = std::fs::read_to_string(&manifest).unwrap();
    assert!(toml.contains("[package.metadata.limes]\n"));
    std::fs::write(&manifest, toml.replace("[package.metadata.limes]\n", "[package.metadata.limes]\ntiers = [\"x86-64\", \"x86-64-v9\"]\n")).unwrap();
    let e = fails(limes_pack_cmd().args(["build", "--out-dir"]).arg(out.path()).arg(bad_meta.path().join("tiered")), 1);
    assert!(e.contains("tiered") && e.contains("unknown tier \"x86-64-v9\"; known tiers: x86-64, x86-64-v2, x86-64-v3, aarch64, aarch64-lse"), "{e}");

    let e = fails(limes_pack_cmd().args(["build", "--out-dir"]).arg(out.path()).arg(common::repo()), 1);
    assert!(e.contains("workspace root without a package"), "{e}");

    // Nothing half-written is left behind by any of these.
    let left: Vec<_> = std::fs::read_dir(out.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.iter().all(|n| !n.to_string_lossy().ends_with(".limes") && !n.to_string_lossy().starts_with(".limes-tmp")), "{left:?}");
}

#[test]
fn missing_rustup_target_names_the_fix() {
    // A target whose standard library is certainly not installed here.
    let e = limes_build::compile::ensure_target_installed("riscv32imc-unknown-none-elf", &common::repo()).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("rustup target add riscv32imc-unknown-none-elf"), "{msg}");
    limes_build::compile::ensure_target_installed("wasm32-wasip2", &common::repo()).unwrap();
}

#[test]
fn no_change_rebuild_reuses_everything() {
    let out = tempdir();
    let first = json(&ok(limes_pack_cmd().args(["build", "--json", "--out-dir"]).arg(out.path()).arg(pack("mandelbrot"))));
    let second = json(&ok(limes_pack_cmd().args(["build", "--json", "--out-dir"]).arg(out.path()).arg(pack("mandelbrot"))));
    assert_eq!(second["bundle_unchanged"], true);
    assert!(second["tiers"].as_array().unwrap().iter().all(|t| t["cached"] == true), "{second}");
    assert_eq!(first["bundle_size"], second["bundle_size"]);
    // Only the requested tier is built.
    let one = json(&ok(limes_pack_cmd().args(["build", "--json", "--tier", "x86-64-v2", "--out-dir"]).arg(out.path()).arg(pack("noop"))));
    assert_eq!(one["tiers"].as_array().unwrap().len(), 1);
    assert_eq!(one["tiers"][0]["tier"], "x86-64-v2");
}

#[test]
fn killed_builds_never_leave_a_broken_bundle() {
    let out = tempdir();
    let bundle = out.path().join("noop-0.1.0.limes");
    let mut seed = 99u64;
    for _ in 0..8 {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        let delay = std::time::Duration::from_millis(100 + (seed >> 33) % 900);
        let mut child =
            limes_pack_cmd().args(["build", "--quiet", "--no-cache", "--no-microvm", "--out-dir"]).arg(out.path()).arg(pack("noop")).spawn().unwrap();
        std::thread::sleep(delay);
        let _ = child.kill();
        let _ = child.wait();
        // Either no bundle yet, or a whole one: never a partial file.
        if bundle.exists() {
            ok(limes_pack_cmd().args(["inspect"]).arg(&bundle));
        }
    }
    ok(limes_pack_cmd().args(["build", "--quiet", "--no-microvm", "--out-dir"]).arg(out.path()).arg(pack("noop")));
    ok(limes_pack_cmd().args(["inspect"]).arg(&bundle));
}

/// Two build-side attacks: a build script that reads the signing key from
/// its environment, and a tampered artifact in the AOT cache.
#[test]
fn build_scripts_never_see_the_key_and_a_tampered_cache_is_not_signed() {
    use limes_bundle::archive::{read_bundle, BundleLimits, InMemory, SignaturePolicy};
    let key = test_key();
    let work = tempdir();
    let dir = new_crate(work.path(), "envprobe", "noop");
    let probe = work.path().join("probe.txt");
    std::fs::write(
        dir.join("build.rs"),
        "fn main() {\n    println!(\"cargo:rerun-if-changed=build.rs\");\n    let seen = std::env::var(\"LIMES_TEST_SIGNING_KEY\").map(|_| \"present\").unwrap_or(\"absent\");\n    std::fs::write(env!(\"LIMES_PROBE_OUT_PATH\", \"set by the test\"), seen).ok();\n}\n",
    )
    .unwrap();
    // The probe path reaches the build script at compile time of build.rs.
    let target = target_dir(work.path());
    let build = || {
        let mut c = limes_pack_cmd();
        c.args(["build", "--json", "--no-microvm", "--sign", "env:LIMES_TEST_SIGNING_KEY"])
            .arg(&dir)
            .env("LIMES_TEST_SIGNING_KEY", std::fs::read_to_string(&key.secret).unwrap())
            .env("LIMES_PROBE_OUT_PATH", &probe)
            .env("CARGO_TARGET_DIR", &target);
        c
    };
    let j = json(&ok(&mut build()));
    assert_eq!(std::fs::read_to_string(&probe).unwrap(), "absent", "a build script saw the signing key");
    let bundle = std::path::PathBuf::from(j["bundle"].as_str().unwrap());
    let first = std::fs::read(&bundle).unwrap();

    // Find the cache entry holding this bundle's baseline tier, and replace
    // it with other bytes of the same size.
    let mut mem = InMemory::default();
    read_bundle(&bundle, &BundleLimits::default(), SignaturePolicy::Unverified, &mut mem).unwrap();
    let artifact = &mem.0.iter().find(|(p, _)| p == "aot/x86-64.cwasm").unwrap().1;
    let cache = std::path::Path::new(&target).join("limes/cache/aot");
    let entry = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "cwasm") && std::fs::read(p).is_ok_and(|b| &b == artifact))
        .expect("the AOT cache holds the artifact");
    let mut evil = artifact.clone();
    let mid = evil.len() / 2;
    evil[mid..mid + 32].fill(0xcc);
    std::fs::write(&entry, &evil).unwrap();
    ok(&mut build());
    assert_eq!(std::fs::read(&bundle).unwrap(), first, "the rebuilt bundle differs: the tampered cache entry was used");
    assert_eq!(&std::fs::read(&entry).unwrap(), artifact, "the tampered cache entry was not recompiled");
}

/// A native build of a pack inside this repository must leave the
/// workspace's target directory alone: the generated shim is another
/// workspace, and sharing the directory once let its `limes_sdk` and pack
/// rlibs replace the workspace's (E0308 in limes-bench). `--profile dev`
/// puts the shim's output where the workspace's own debug build lives, the
/// case that would collide.
#[test]
fn native_builds_leave_the_workspace_build_intact() {
    let out = ok(limes_pack_cmd().args(["native", "--json", "--profile", "dev"]).arg(pack("noop")));
    let exe = std::path::PathBuf::from(json(&out)["executable"].as_str().unwrap());
    let target = std::env::var_os("CARGO_TARGET_DIR").map(std::path::PathBuf::from).unwrap_or_else(|| repo().join("target"));
    assert!(exe.starts_with(target.join("limes").join("native-target")), "{}", exe.display());
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    ok(Command::new(cargo).args(["build", "--locked", "--quiet", "-p", "limes-bench"]).current_dir(repo()));
}

/// `limes-pack run`: build and run in one step from an unsigned dev bundle
/// that never replaces the release bundle; function errors and faults have
/// the loader's exit codes; `--watch` reruns on every edit.
#[test]
fn run_builds_runs_and_watches() {
    use std::io::Read;
    let work = tempdir();
    let dir = new_crate(work.path(), "dev", "noop");
    let target = target_dir(work.path());
    let run = |args: &[&str]| {
        let mut c = limes_pack_cmd();
        c.arg("run").args(args).current_dir(&dir).env("CARGO_TARGET_DIR", &target);
        c
    };
    let t = std::time::Instant::now();
    let o = ok(&mut run(&["--data", "hi"]));
    assert_eq!(o.stdout, b"hi");
    assert!(String::from_utf8_lossy(&o.stderr).contains("unsigned dev build"), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(target.join("limes/dev/dev-0.1.0.limes").is_file());
    assert!(!target.join("limes/dev-0.1.0.limes").exists(), "the dev build replaced the release bundle path");
    println!("first limes-pack run: {:?}", t.elapsed());
    let faulty = |data: &str, code: i32| {
        fails(limes_pack_cmd().args(["run", "--timeout-ms", "300", "--data", data]).arg(fixture("faulty")).env("CARGO_TARGET_DIR", &target), code)
    };
    assert!(faulty("loop", 5).contains("timed out after 300 ms"));
    // With --json the timeout is a JSON failure document too, as in `limes run`.
    let o = limes_pack_cmd()
        .args(["run", "--json", "--timeout-ms", "300", "--data", "loop"])
        .arg(fixture("faulty"))
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(5));
    assert_eq!((json(&o)["ok"].as_bool(), json(&o)["kind"].as_str()), (Some(false), Some("timeout")), "{}", String::from_utf8_lossy(&o.stdout));
    assert!(faulty("bad", 4).contains("bad-request: bad on purpose"));
    // Every other failure of the call too: a trap is exit 5, its message on
    // stderr and, with --json, the failure document on stdout.
    assert!(faulty("panic", 5).contains("asked to panic"));
    let o = limes_pack_cmd().args(["run", "--json", "--data", "panic"]).arg(fixture("faulty")).env("CARGO_TARGET_DIR", &target).output().unwrap();
    assert_eq!(o.status.code(), Some(5));
    assert_eq!((json(&o)["ok"].as_bool(), json(&o)["kind"].as_str()), (Some(false), Some("trap")), "{}", String::from_utf8_lossy(&o.stdout));
    // --json: the document `limes run --json` prints.
    let j = json(&ok(&mut run(&["--data", "hi", "--json"])));
    assert_eq!((j["ok"].as_bool(), j["body_utf8"].as_str(), j["body_base64"].as_str()), (Some(true), Some("hi"), Some("aGk=")), "{j}");
    assert_eq!(j["timings"]["backend"], "wasm", "{j}");

    // --watch: one run at start, another after an edit.
    let mut child = run(&["--data", "w", "--watch"]).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::null()).spawn().unwrap();
    let out = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut stdout = child.stdout.take().unwrap();
    let sink = out.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let wait_for = |want: &str| {
        let t = std::time::Instant::now();
        while !String::from_utf8_lossy(&out.lock().unwrap()).contains(want) {
            assert!(t.elapsed() < std::time::Duration::from_secs(180), "no {want:?} from --watch");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        t.elapsed()
    };
    wait_for("w\n");
    let lib = dir.join("src/lib.rs");
    let src = std::fs::read_to_string(&lib).unwrap().replace("Response::new(req.body)", "Response::new([b\"edited:\".to_vec(), req.body].concat())");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    std::fs::write(&lib, src).unwrap();
    let took = wait_for("edited:w");
    println!("edit to answer under --watch: {took:?}");
    let _ = child.kill();
    let _ = child.wait();
}

/// Conventions: the crate is found from a subdirectory (as cargo does), and
/// every subcommand's --help ends with examples.
#[test]
fn conventions_parent_discovery_and_help_examples() {
    let work = tempdir();
    let src = new_crate(work.path(), "nested", "noop").join("src");
    let target = target_dir(work.path());
    let o = ok(limes_pack_cmd()
        .args(["build", "--json", "--no-microvm", "--out-dir"])
        .arg(work.path().join("out"))
        .current_dir(&src)
        .env("CARGO_TARGET_DIR", &target));
    let j = json(&o);
    assert_eq!(j["function"], "nested");
    // The documented JSON: integer microseconds.
    assert!(j["timings"]["total_us"].is_u64() && j["tiers"][0]["compile_us"].is_u64(), "{j}");
    for sub in ["new", "build", "run", "native", "keygen", "sign", "verify", "inspect", "push"] {
        let o = ok(limes_pack_cmd().args([sub, "--help"]));
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(text.contains("Examples:") && text.contains(&format!("limes-pack {sub}")), "{sub} --help:\n{text}");
    }
}

/// The image kinds from the command line: the human output names the
/// Hermit image, a no-change Hermit build rewrites nothing, `--image linux`
/// makes the Linux initrd, and a Linux kernel cannot go into a Hermit image.
#[test]
fn image_kinds_from_the_command_line() {
    let out = tempdir();
    let o = ok(limes_pack_cmd().args(["build", "--out-dir"]).arg(out.path().join("h")).arg(pack("noop")));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("microvm   Hermit unikernel"), "{text}");
    let o = ok(limes_pack_cmd().args(["build", "--json", "--out-dir"]).arg(out.path().join("h")).arg(pack("noop")));
    let j = json(&o);
    assert_eq!(j["bundle_unchanged"], true, "a no-change build rewrote the bundle: {j}");
    let insp = ok(limes_pack_cmd().arg("inspect").arg(j["bundle"].as_str().unwrap()));
    let text = String::from_utf8_lossy(&insp.stdout);
    assert!(text.contains("microvm    hermit image (x86_64-unknown-hermit)"), "{text}");
    let o = ok(limes_pack_cmd().args(["build", "--json", "--image", "linux", "--out-dir"]).arg(out.path().join("l")).arg(pack("noop")));
    assert_eq!(json(&o)["microvm"]["kind"], "linux");
    // A Linux kernel cannot be embedded in a Hermit image.
    let e = fails(limes_pack_cmd().args(["build", "--image", "hermit", "--kernel", "/dev/null", "--out-dir"]).arg(out.path().join("x")).arg(pack("noop")), 1);
    assert!(e.contains("--image linux"), "{e}");
}

/// The hostile build script of [`a_hostile_build_script_gets_neither_key_nor_signed_code`]:
/// it looks for the secret key in every `limes-pack` ancestor's environment,
/// command line and memory, writes what it found, and leaves a process
/// behind (double fork, `setsid`) to rewrite this crate's AOT cache entries.
const HOSTILE_BUILD_RS: &str = r#"
use std::io::{Read, Seek, SeekFrom};
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}
fn main() {
    println!("cargo:rerun-if-env-changed=HOSTILE_RUN");
    let env = |k: &str| std::env::var(k).unwrap();
    let needle = std::fs::read(env("HOSTILE_NEEDLE")).unwrap();
    let mut found = Vec::new();
    let mut pid = std::process::id();
    while pid > 1 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        pid = stat.rsplit(')').next().and_then(|r| r.split_whitespace().nth(1)).and_then(|p| p.parse().ok()).unwrap_or(0);
        if std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim() != "limes-pack" {
            continue;
        }
        for what in ["environ", "cmdline"] {
            if std::fs::read(format!("/proc/{pid}/{what}")).is_ok_and(|b| contains(&b, &needle)) {
                found.push(what.to_string());
            }
        }
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
        let Ok(mut mem) = std::fs::File::open(format!("/proc/{pid}/mem")) else { continue };
        for line in maps.lines() {
            let mut f = line.split_whitespace();
            let (Some(range), Some(perms)) = (f.next(), f.next()) else { continue };
            let Some((a, b)) = range.split_once('-') else { continue };
            let (a, b) = (u64::from_str_radix(a, 16).unwrap(), u64::from_str_radix(b, 16).unwrap());
            if !perms.starts_with('r') || b - a > 1 << 30 {
                continue;
            }
            let mut buf = vec![0u8; (b - a) as usize];
            if mem.seek(SeekFrom::Start(a)).is_ok() && mem.read_exact(&mut buf).is_ok() && contains(&buf, &needle) {
                found.push(format!("mem {range}"));
            }
        }
    }
    std::fs::write(env("HOSTILE_REPORT"), found.join("\n")).unwrap();
    let _ = std::process::Command::new("sh")
        .arg("-c")
        .arg("(setsid sh \"$0\" \"$1\" \"$2\" >/dev/null 2>&1 &)")
        .arg(env("HOSTILE_POISON"))
        .arg(env("HOSTILE_CACHE"))
        .arg(env("HOSTILE_ALIVE"))
        .status();
}
"#;

/// Left running by the build script: proves it is alive, and rewrites the
/// AOT cache entries of the hostile crate (found by the marker its code
/// carries) and the digests recorded beside them.
const HOSTILE_POISON_SH: &str = r#"
cache="$1"; alive="$2"
echo $$ > "$alive.pid"
i=0
while [ $i -lt 300 ]; do
  date +%s%N > "$alive"
  for f in $(grep -l HOSTILE-CRATE-MARK-7f3a "$cache"/*.cwasm 2>/dev/null); do
    grep -q PWNED-BY-BUILD-RS "$f" && continue
    printf 'PWNED-BY-BUILD-RS' | dd of="$f" bs=1 seek=4096 conv=notrunc 2>/dev/null
    s=$(sha256sum "$f" | cut -d' ' -f1)
    sed -i "s/\"sha256\":\"[0-9a-f]*\"/\"sha256\":\"$s\"/" "${f%.cwasm}.meta.json"
  done
  sleep 0.1; i=$((i+1))
done
"#;

/// Attack: a dependency's build script (here the crate's own: it runs the
/// same way) hunts for the signing key in limes-pack's environment, command
/// line and memory, and leaves a process behind that rewrites the AOT cache.
/// Before, the key was in `/proc/PID/environ`, the process outlived the
/// build, and the next signed build shipped its native code. Now the key
/// is nowhere it can read while cargo runs, the signed build ends every
/// process the build left before it reads the key, and signed native code
/// is compiled from the component, never taken from the cache.
#[test]
fn a_hostile_build_script_gets_neither_key_nor_signed_code() {
    use limes_bundle::archive::{read_bundle, BundleLimits, InMemory, SignaturePolicy};
    let key = test_key();
    let work = tempdir();
    let w = work.path();
    let dir = new_crate(w, "hostile", "noop");
    std::fs::write(dir.join("build.rs"), HOSTILE_BUILD_RS).unwrap();
    std::fs::write(
        dir.join("src/lib.rs"),
        "use limes_sdk::{Error, Request, Response};\nconst MARK: &str = \"HOSTILE-CRATE-MARK-7f3a\";\npub fn handle(req: Request) -> Result<Response, Error> {\n    if req.body == b\"mark\" {\n        return Ok(Response::new(MARK));\n    }\n    Ok(Response::new(req.body))\n}\nlimes_sdk::export!(handle);\n",
    )
    .unwrap();
    std::fs::write(w.join("poison.sh"), HOSTILE_POISON_SH).unwrap();
    let secret = std::fs::read_to_string(&key.secret).unwrap();
    // The key's payload: what a thief would look for.
    let payload = secret.lines().find(|l| !l.starts_with("untrusted comment")).unwrap();
    std::fs::write(w.join("needle"), payload).unwrap();
    let target = target_dir(w);
    let cache = target.join("limes/cache/aot");
    let build = |run: &str| {
        let mut c = limes_pack_cmd();
        c.args(["build", "--json", "--no-microvm", "--out-dir"])
            .arg(w.join(run))
            .arg(&dir)
            .env("CARGO_TARGET_DIR", &target)
            .env("HOSTILE_RUN", run)
            .env("HOSTILE_NEEDLE", w.join("needle"))
            .env("HOSTILE_REPORT", w.join(format!("{run}.report")))
            .env("HOSTILE_POISON", w.join("poison.sh"))
            .env("HOSTILE_CACHE", &cache)
            .env("HOSTILE_ALIVE", w.join(format!("{run}.alive")));
        c
    };
    let kill_left = |run: &str| {
        if let Ok(pid) = std::fs::read_to_string(w.join(format!("{run}.alive.pid"))) {
            let _ = std::process::Command::new("kill").arg("-9").arg(pid.trim()).stderr(std::process::Stdio::null()).status();
        }
    };
    // 1. An unsigned build: its left process poisons the cache (the attack
    //    works as described, or this test proves nothing).
    ok(&mut build("dev"));
    let poisoned = |p: &std::path::Path| std::fs::read(p).is_ok_and(|b| b.windows(17).any(|w| w == b"PWNED-BY-BUILD-RS"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !std::fs::read_dir(&cache).unwrap().any(|e| poisoned(&e.unwrap().path())) {
        assert!(std::time::Instant::now() < deadline, "the left process never poisoned the cache");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // 2. A signed build, key in a variable, with the poisoner still at work.
    let signed = ok(build("release").args(["--sign", "env:LIMES_TEST_KEY"]).env("LIMES_TEST_KEY", &secret));
    kill_left("dev");
    let report = std::fs::read_to_string(w.join("release.report")).unwrap();
    let left_alive = std::fs::read_to_string(w.join("release.alive.pid")).ok().filter(|pid| std::path::Path::new(&format!("/proc/{}", pid.trim())).exists());
    kill_left("release");
    assert_eq!(report, "", "the build script found the signing key");
    assert!(left_alive.is_none(), "a process the signed build started outlived it");
    let bundle = std::path::PathBuf::from(json(&signed)["bundle"].as_str().unwrap());
    let mut mem = InMemory::default();
    read_bundle(&bundle, &BundleLimits::default(), SignaturePolicy::Unverified, &mut mem).unwrap();
    for (path, bytes) in &mem.0 {
        assert!(!bytes.windows(17).any(|w| w == b"PWNED-BY-BUILD-RS"), "{path} in the signed bundle carries the poisoned cache's code");
    }
    // What was signed runs, with the function's own answer.
    let (answer, _) = run_installed(&bundle, &key, limes_sdk::Request::new("mark"), Vec::new());
    assert_eq!(answer.unwrap().body, b"HOSTILE-CRATE-MARK-7f3a");
}

/// Attack: a bundle built unsigned (a build runs third-party code) whose
/// native code was changed afterwards, with the manifest's digests made to
/// match. `limes-pack sign` compiles the tiers again from the bundle's own
/// component and refuses to sign code that differs.
#[test]
fn sign_refuses_native_code_it_did_not_compile() {
    use limes_bundle::archive::{read_bundle, write_bundle, BundleLimits, InMemory, SignaturePolicy, Source};
    let key = test_key();
    let work = tempdir();
    let out = ok(limes_pack_cmd().args(["build", "--json", "--no-microvm", "--out-dir"]).arg(work.path()).arg(pack("noop")));
    let bundle = std::path::PathBuf::from(json(&out)["bundle"].as_str().unwrap());
    let mut mem = InMemory::default();
    let v = read_bundle(&bundle, &BundleLimits::default(), SignaturePolicy::Unverified, &mut mem).unwrap();
    let mut manifest = v.manifest.clone();
    for (path, bytes) in &mut mem.0 {
        if path == "aot/x86-64.cwasm" {
            let mid = bytes.len() / 2;
            bytes[mid..mid + 32].fill(0xcc);
            manifest.files.iter_mut().find(|f| f.path == *path).unwrap().sha256 = limes_bundle::sha256_hex(bytes);
        }
    }
    let forged = work.path().join("forged.limes");
    let files: Vec<(String, Source<'_>)> = mem.0.iter().map(|(p, b)| (p.clone(), Source::Bytes(b))).collect();
    write_bundle(&forged, &manifest.to_json(), None, &files, 0).unwrap();
    let e = fails(limes_pack_cmd().args(["sign"]).arg(&forged).arg("--key").arg(&key.secret), 3);
    assert!(e.contains("refusing to sign") && e.contains("x86-64 tier"), "{e}");
    assert!(read_bundle(&forged, &BundleLimits::default(), SignaturePolicy::Unverified, &mut limes_bundle::archive::Discard).unwrap().signature.is_none());
    // The genuine unsigned bundle signs.
    ok(limes_pack_cmd().args(["sign"]).arg(&bundle).arg("--key").arg(&key.secret));
}

/// Attack: a metadata `name` that is a path. It is refused when the crate
/// is discovered, before anything is written.
#[test]
fn a_function_name_is_never_a_path() {
    let work = tempdir();
    let dir = new_crate(work.path(), "escape", "noop");
    let manifest = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let escaped = if text.contains("[package.metadata.limes]\n") {
        text.replacen("[package.metadata.limes]\n", "[package.metadata.limes]\nname = \"../../../../out/x\"\n", 1)
    } else {
        format!("{text}\n[package.metadata.limes]\nname = \"../../../../out/x\"\n")
    };
    std::fs::write(&manifest, escaped).unwrap();
    let e = fails(limes_pack_cmd().args(["build", "--no-microvm"]).arg(&dir).env("CARGO_TARGET_DIR", target_dir(work.path())), 1);
    assert!(e.contains("is not a function name"), "{e}");
    fn any_named(d: &std::path::Path, name: &str) -> bool {
        std::fs::read_dir(d).map(|r| r.flatten().any(|e| e.file_name() == name || (e.path().is_dir() && any_named(&e.path(), name)))).unwrap_or(false)
    }
    assert!(!any_named(work.path(), "x.wasm") && !any_named(&repo().join("out"), "x.wasm"));
}

/// Attack: with no home at all, the SDK used to fall back to
/// `/tmp/.local/share/limes-pack`, where another user could plant a crate
/// whose build script would run as us. There is no fallback; a home that
/// others can write is refused; an SDK copy that differs from the one
/// limes-pack carries is written again before it is used.
#[test]
fn the_sdk_never_comes_from_a_place_others_can_write() {
    use std::os::unix::fs::PermissionsExt;
    let work = tempdir();
    let e = fails(
        limes_pack_cmd().args(["new", "homeless", "--dir"]).arg(work.path()).env_remove("HOME").env_remove("XDG_DATA_HOME").env_remove("LIMES_PACK_HOME"),
        1,
    );
    assert!(e.contains("no home for limes-pack"), "{e}");
    assert!(!work.path().join("homeless").exists());
    let shared = work.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let e = fails(limes_pack_cmd().args(["new", "planted", "--dir"]).arg(work.path()).env("LIMES_PACK_HOME", &shared), 1);
    assert!(e.contains("writable by its group or others"), "{e}");
    // Our own copy, edited: written again from the embedded SDK.
    let dir = new_crate(work.path(), "fresh", "noop");
    let sdk_lib = std::fs::read_dir(work.path().join("home/sdk")).unwrap().next().unwrap().unwrap().path().join("crates/limes-sdk/src/lib.rs");
    let genuine = std::fs::read(&sdk_lib).unwrap();
    std::fs::write(&sdk_lib, "compile_error!(\"planted\");").unwrap();
    new_crate(work.path(), "again", "noop");
    assert_eq!(std::fs::read(&sdk_lib).unwrap(), genuine);
    assert!(dir.is_dir());
}

/// A component built elsewhere (here: by cargo alone, on the plain `wasip2`
/// bindings, outside the workspace) ships like a crate's: validated,
/// precompiled, signed, its origin recorded, and it answers with its own
/// status and headers.
#[test]
fn a_prebuilt_wasi_http_component_ships_like_a_crate() {
    let work = tempdir();
    let target = target_dir(work.path()).join("fixtures");
    ok(Command::new("cargo")
        .args(["build", "--quiet", "--release", "--target", "wasm32-wasip2", "--manifest-path"])
        .arg(fixture("http-raw").join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target));
    let wasm = target.join("wasm32-wasip2/release/http_raw.wasm");
    let key = test_key();
    let out = work.path().join("out");
    let build = |extra: &[&str]| {
        let mut c = limes_pack_cmd();
        c.args(["build", "--json", "--component"])
            .arg(&wasm)
            .args(["--name", "raw", "--version", "2.0.0", "--tier", "x86-64", "--out-dir"])
            .arg(&out)
            .args(extra);
        c
    };
    let j = json(&ok(build(&["--allow-outbound", "https://api.example.com", "--timeout-ms", "1500", "--sign"]).arg(&key.secret)));
    assert_eq!(j["world"]["kind"], "wasi-http");
    assert!(j["world"]["export"].as_str().unwrap().starts_with("wasi:http/incoming-handler@0.2."));
    assert!(j["microvm"].is_null(), "a prebuilt component has no native build");
    let bundle = std::path::PathBuf::from(j["bundle"].as_str().unwrap());
    let m = &json(&ok(limes_pack_cmd().args(["inspect", "--json"]).arg(&bundle)))["manifest"];
    let digest = limes_bundle::sha256_hex(&std::fs::read(&wasm).unwrap());
    assert_eq!(m["provenance"]["prebuilt"], serde_json::json!({"file": "http_raw.wasm", "sha256": digest}));
    assert_eq!(m["provenance"]["source_digest"], digest.as_str());
    assert_eq!(m["allowed_outbound_hosts"], serde_json::json!(["https://api.example.com"]));
    assert_eq!(m["limits"]["timeout_ms"], 1500);
    // Reproducible: the same component gives the same bundle.
    let first = std::fs::read(&bundle).unwrap();
    ok(build(&["--sign"]).arg(&key.secret).args(["--allow-outbound", "https://api.example.com", "--timeout-ms", "1500"]));
    assert_eq!(std::fs::read(&bundle).unwrap(), first);

    // Installed and run as a device would.
    let store_dir = tempdir();
    let store = limes::Store::open(store_dir.path()).unwrap();
    let keys = limes_bundle::TrustedKeys::load(std::slice::from_ref(&key.public)).unwrap();
    let f = store.install(&bundle, &keys, Default::default()).unwrap();
    let rt = limes::Runtime::new(&limes::RuntimeOptions { max_instances: 2, ..Default::default() }).unwrap();
    let loaded = limes::load(&rt, &f, limes::LoadMode::Auto, limes::store::Integrity::Rehash).unwrap();
    let req = Request::new("").with_meta(":method", "DELETE").with_meta(":path", "/x?y=1");
    let inv = rt.invoke(&loaded, req, &Default::default()).unwrap();
    let head = inv.http.expect("a wasi:http answer has a head");
    assert_eq!(head.status, 418);
    assert!(head.headers.contains(&("x-raw".into(), "yes".into())), "{:?}", head.headers);
    assert_eq!(inv.result.unwrap().body, b"raw DELETE /x?y=1");

    // Bad input is refused before anything is written.
    let e = fails(&mut build(&["--allow-outbound", "ftp://x"]), 1);
    assert!(e.contains("the scheme must be http or https"), "{e}");
    let core = work.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let e = fails(limes_pack_cmd().args(["build", "--component"]).arg(&core).args(["--name", "c", "--version", "1"]), 1);
    assert!(e.contains("is not a WebAssembly component (it is a core module"), "{e}");
    let e = fails(limes_pack_cmd().args(["build", "--component"]).arg(&wasm), 2);
    assert!(e.contains("--name") && e.contains("--version"), "{e}");
}

/// `limes-pack doctor` checks the one list of what builds need; the shipped
/// CI recipe installs every item the default build needs; a machine
/// without the toolchains is told what to install and how to do without.
#[test]
fn doctor_lists_what_builds_need_and_the_ci_recipe_installs_it() {
    let j = json(&ok(limes_pack_cmd().args(["doctor", "--json"])));
    assert_eq!(j["ok"], true, "this machine ran scripts/setup.sh: {j}");
    let recipe = std::fs::read_to_string(repo().join("docs/ci/github-actions.yml")).unwrap();
    let required: Vec<&serde_json::Value> = j["checks"].as_array().unwrap().iter().filter(|c| c["required"] == true).collect();
    assert!(required.len() >= 3, "{j}");
    for c in required {
        let fix = c["fix"].as_str().unwrap();
        match fix.strip_prefix("rustup target add ") {
            Some(target) => assert!(
                recipe.lines().any(|l| l.contains("rustup target add") && l.split_whitespace().any(|w| w == target)),
                "the CI recipe does not install {target}"
            ),
            None => assert!(recipe.contains(fix), "the CI recipe does not run `{fix}`"),
        }
    }
    // No toolchain at all (an empty rustup home): exit 1, with the fixes.
    let empty = tempdir();
    let out = limes_pack_cmd().arg("doctor").env("RUSTUP_HOME", empty.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("MISSING Rust target wasm32-wasip2") && text.contains("install: rustup target add wasm32-wasip2"), "{text}");
    assert!(text.contains("--no-microvm or --image linux avoid the Hermit nightly"), "{text}");
}

/// `limes-pack` runs what it builds with the limes runtime crate alone: none
/// of the device's server, store or registry client is linked into it, and
/// a change to them does not rebuild it (#28).
#[test]
fn limes_pack_links_the_runtime_not_the_device_server() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let o = ok(std::process::Command::new(cargo).args(["tree", "-p", "limes-pack", "-e", "normal", "--prefix", "none"]).current_dir(repo()));
    let tree = String::from_utf8_lossy(&o.stdout);
    assert!(tree.lines().any(|l| l.starts_with("limes-runtime v")), "{tree}");
    for bad in ["limes v", "axum v", "prometheus-client v"] {
        assert!(!tree.lines().any(|l| l.starts_with(bad)), "limes-pack depends on {bad}");
    }
}

/// `limes-pack dev` (#29): a new crate served on localhost through the
/// device's own `limes serve`, switched to a new build on every save, and
/// still served from its last good build when a save does not compile.
#[test]
fn dev_serves_the_crate_and_swaps_builds_on_save() {
    let work = tempdir();
    let dir = new_crate(work.path(), "devfn", "noop");
    let dev = DevServer::start(&dir, work.path(), &[]);
    dev.wait_for("devfn", b"hi", std::time::Duration::from_secs(600));
    assert!(dev.log().contains("/functions/devfn"), "serve printed no route:\n{}", dev.log());
    // Save a change: the next answers come from the new build.
    let src = dir.join("src/lib.rs");
    let code = std::fs::read_to_string(&src).unwrap();
    assert!(code.contains("Response::new(req.body)"), "{code}");
    std::fs::write(&src, code.replace("Response::new(req.body)", "Response::new(req.body.to_ascii_uppercase())")).unwrap();
    let took = dev.wait_for("devfn", b"HI", std::time::Duration::from_secs(120));
    println!("save to new answer: {} ms", took.as_millis());
    // A save that does not compile: reported, and the last good build serves on.
    std::fs::write(&src, "this is not rust\n").unwrap();
    let t = std::time::Instant::now();
    while !dev.log().contains("build failed; still serving the last good build") {
        assert!(t.elapsed() < std::time::Duration::from_secs(120), "no build failure reported:\n{}", dev.log());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(dev.answer("devfn", b"hi"), Some((200, b"HI".to_vec())));
}

/// `limes-pack dev` at a workspace root without a package of its own
/// serves every function crate of the workspace (#29), each built with the
/// SDK asked for by version (the patch and the local cargo config belong to
/// the root); a save in one member rebuilds that one, and the others keep
/// answering.
#[test]
fn dev_serves_a_workspace_of_functions() {
    let work = tempdir();
    let root = work.path().join("ws");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("Cargo.toml"), "[workspace]\nmembers = [\"wa\", \"wb\", \"shared\"]\nresolver = \"2\"\n").unwrap();
    for name in ["wa", "wb"] {
        let dir = new_crate_in(&root, name, "noop", &work.path().join("home"));
        // A member: its own `[workspace]` line goes, and profiles belong to the root.
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        let manifest = manifest.split("\n[profile.release]").next().unwrap().replace("\n[workspace]", "");
        std::fs::write(dir.join("Cargo.toml"), manifest).unwrap();
    }
    // A member that is not a function (a library they could share) is skipped.
    std::fs::create_dir_all(root.join("shared/src")).unwrap();
    std::fs::write(root.join("shared/Cargo.toml"), "[package]\nname = \"shared\"\nversion = \"0.1.0\"\nedition = \"2021\"\n").unwrap();
    std::fs::write(root.join("shared/src/lib.rs"), "").unwrap();
    let dev = DevServer::start(&root, work.path(), &[]);
    dev.wait_for("wa", b"hi", std::time::Duration::from_secs(600));
    dev.wait_for("wb", b"hi", std::time::Duration::from_secs(60));
    let local = std::fs::read_to_string(root.join(".cargo/config.toml")).unwrap();
    assert!(local.contains("limes-sdk"), "{local}");
    let src = root.join("wb/src/lib.rs");
    let code = std::fs::read_to_string(&src).unwrap();
    std::fs::write(&src, code.replace("Response::new(req.body)", "Response::new(req.body.to_ascii_uppercase())")).unwrap();
    dev.wait_for("wb", b"HI", std::time::Duration::from_secs(120));
    assert_eq!(dev.answer("wa", b"hi"), Some((200, b"hi".to_vec())));
    assert!(!dev.log().contains("rebuilt wa"), "only the member that changed is rebuilt:\n{}", dev.log());
}

/// `limes-pack new NAME` in `parent` under the home `home`.
fn new_crate_in(parent: &std::path::Path, name: &str, template: &str, home: &std::path::Path) -> std::path::PathBuf {
    ok(limes_pack_cmd().args(["new", name, "--template", template, "--dir"]).arg(parent).env("LIMES_PACK_HOME", home));
    parent.join(name)
}

/// A running `limes-pack dev` on a free port, its console collected; killed
/// when dropped.
struct DevServer {
    child: std::process::Child,
    addr: std::net::SocketAddr,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl DevServer {
    fn start(dir: &std::path::Path, work: &std::path::Path, extra: &[&str]) -> DevServer {
        use std::io::BufRead;
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let limes = std::path::Path::new(env!("CARGO_BIN_EXE_limes-pack")).with_file_name("limes");
        let mut child = limes_pack_cmd()
            .args(["dev", "--listen", &addr.to_string(), "--limes"])
            .arg(&limes)
            .args(extra)
            .arg(dir)
            .env("CARGO_TARGET_DIR", target_dir(work))
            .env("LIMES_PACK_HOME", work.join("home"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        for stream in [Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>, Box::new(child.stderr.take().unwrap())] {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stream).lines().map_while(Result::ok) {
                    log.lock().unwrap().push_str(&(line + "\n"));
                }
            });
        }
        DevServer { child, addr, log }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn answer(&self, function: &str, body: &[u8]) -> Option<(u16, Vec<u8>)> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(self.addr).ok()?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(30))).ok()?;
        write!(s, "POST /functions/{function} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n", body.len()).ok()?;
        s.write_all(body).ok()?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).ok()?;
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
        let status = String::from_utf8_lossy(&raw[..split]).split(' ').nth(1)?.parse().ok()?;
        Some((status, raw[split + 4..].to_vec()))
    }

    /// Ask `function` with "hi" until it answers `want`; how long that took.
    fn wait_for(&self, function: &str, want: &[u8], limit: std::time::Duration) -> std::time::Duration {
        let t = std::time::Instant::now();
        loop {
            if self.answer(function, b"hi").is_some_and(|(s, b)| s == 200 && b == want) {
                return t.elapsed();
            }
            assert!(t.elapsed() < limit, "no answer {:?} from {function} within {limit:?}; log:\n{}", String::from_utf8_lossy(want), self.log());
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Drop for DevServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A crate from `limes-pack new` holds no path of this machine: it asks
/// for the SDK by version, and limes-pack resolves it on every build.
/// Copied as a clone would be (no target, no git-ignored files) to another
/// directory and built under another home (a teammate, a CI runner), it
/// builds and answers; its local cargo config is written again for that
/// home, so plain cargo (and rust-analyzer) resolve it there too.
#[test]
fn a_new_crate_is_portable_to_another_home() {
    let work = tempdir();
    let dir = new_crate(work.path(), "portable", "noop");
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
    assert!(manifest.contains("limes-sdk = \"0.1\""), "{manifest}");
    assert!(!manifest.contains(work.path().to_str().unwrap()) && !manifest.contains("/sdk/"), "a machine path in Cargo.toml: {manifest}");
    let ignored = std::fs::read_to_string(dir.join(".gitignore")).unwrap();
    assert!(ignored.lines().any(|l| l == "/.cargo/config.toml"), "{ignored}");
    let local = std::fs::read_to_string(dir.join(".cargo/config.toml")).unwrap();
    assert!(local.contains(work.path().join("home/sdk").to_str().unwrap()), "{local}");

    // The clone: Cargo.toml, src, .gitignore.
    let clone = work.path().join("elsewhere/portable");
    std::fs::create_dir_all(clone.join("src")).unwrap();
    for f in ["Cargo.toml", ".gitignore", "src/lib.rs"] {
        std::fs::copy(dir.join(f), clone.join(f)).unwrap();
    }
    let home2 = work.path().join("home2");
    let out = work.path().join("out");
    let j = json(&ok(limes_pack_cmd()
        .args(["build", "--json", "--no-microvm", "--tier", "x86-64", "--out-dir"])
        .arg(&out)
        .arg(&clone)
        .env("LIMES_PACK_HOME", &home2)
        .env("CARGO_TARGET_DIR", target_dir(work.path()))));
    assert!(std::path::Path::new(j["bundle"].as_str().unwrap()).is_file(), "{j}");
    let local = std::fs::read_to_string(clone.join(".cargo/config.toml")).unwrap();
    assert!(local.contains(home2.join("sdk").to_str().unwrap()), "{local}");
    // Plain cargo, from the crate, as rust-analyzer runs it.
    ok(Command::new("cargo").args(["metadata", "--format-version", "1", "--no-deps", "--offline"]).current_dir(&clone));
    ok(Command::new("cargo").args(["metadata", "--format-version", "1", "--offline"]).current_dir(&clone));
    // A cargo config of the user's is never overwritten.
    std::fs::write(clone.join(".cargo/config.toml"), "# mine\n").unwrap();
    let o = ok(limes_pack_cmd()
        .args(["--quiet", "run", "--data", "still builds"])
        .arg(&clone)
        .env("LIMES_PACK_HOME", &home2)
        .env("CARGO_TARGET_DIR", target_dir(work.path())));
    assert_eq!(o.stdout, b"still builds");
    assert_eq!(std::fs::read_to_string(clone.join(".cargo/config.toml")).unwrap(), "# mine\n");
}

/// Crates from `limes-pack new` build their components in one target
/// directory under the home (#29): the SDK's dependencies compile once per
/// machine, not once per crate. Two crates of the same name never ship each
/// other's component, although cargo names a `cdylib`'s output after the
/// library alone and would call the other's newer file fresh.
#[test]
fn new_crates_share_the_sdk_build_and_never_each_other_s_component() {
    let work = tempdir();
    let home = work.path().join("home");
    let make = |parent: &str| {
        let dir = work.path().join(parent);
        std::fs::create_dir_all(&dir).unwrap();
        new_crate_in(&dir, "twin", "noop", &home)
    };
    let (a, b) = (make("a"), make("b"));
    let lib = b.join("src/lib.rs");
    let text = std::fs::read_to_string(&lib).unwrap().replace("Response::new(req.body)", "Response::new([b\"b:\".as_slice(), &req.body].concat())");
    std::fs::write(&lib, text).unwrap();
    // As a user runs it: no CARGO_TARGET_DIR (the suite's would be chosen
    // over the shared one, as any target directory the user sets is).
    let run = |krate: &std::path::Path| {
        let o = ok(limes_pack_cmd().args(["--quiet", "run", "--data", "x"]).arg(krate).env("LIMES_PACK_HOME", &home).env_remove("CARGO_TARGET_DIR"));
        String::from_utf8(o.stdout).unwrap()
    };
    assert_eq!(run(&a), "x");
    let t = std::time::Instant::now();
    assert_eq!(run(&b), "b:x");
    eprintln!("second crate's first run (SDK dependencies already built): {:?}", t.elapsed());
    // The same-named crate built in between: each still gets its own.
    assert_eq!(run(&a), "x");
    assert_eq!(run(&b), "b:x");

    // One copy of the SDK's dependencies, in the home; none in the crates.
    let shared = home.join("target").join("wasm32-wasip2");
    let mut copies = Vec::new();
    for profile in std::fs::read_dir(&shared).unwrap() {
        let deps = profile.unwrap().path().join("deps");
        for f in std::fs::read_dir(&deps).into_iter().flatten() {
            let name = f.unwrap().file_name().to_string_lossy().into_owned();
            if name.starts_with("libwit_bindgen-") && name.ends_with(".rlib") {
                copies.push(name);
            }
        }
    }
    assert_eq!(copies.len(), 1, "{copies:?}");
    for krate in [&a, &b] {
        assert!(!krate.join("target").join("wasm32-wasip2").exists(), "{} built its own dependencies", krate.display());
    }
}
