//! Keys, signatures, verification and reproducibility, through the real
//! `limes-pack` binary and the stock `minisign` tool.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

fn minisign() -> Command {
    // CI installs Debian's minisign (scripts/setup.sh); its absence is a
    // failure, not a skip, so the interop check can never silently vanish.
    assert!(Command::new("minisign").arg("-v").output().is_ok(), "the minisign tool is required (apt-get install minisign, or run scripts/setup.sh)");
    Command::new("minisign")
}

fn keygen(dir: &Path) -> (PathBuf, PathBuf) {
    ok(limes_pack_cmd().args(["keygen", "--dir"]).arg(dir));
    (dir.join("limes.key"), dir.join("limes.pub"))
}

fn build(krate: &Path, out: &Path, extra: &[&str]) -> PathBuf {
    let o = ok(limes_pack_cmd().args(["build", "--json", "--out-dir"]).arg(out).args(extra).arg(krate));
    json(&o)["bundle"].as_str().unwrap().into()
}

fn untar(bundle: &Path, dir: &Path) {
    ok(Command::new("tar").arg("--zstd").arg("-xf").arg(bundle).arg("-C").arg(dir));
}

#[test]
fn keygen_writes_a_private_key_and_refuses_to_overwrite() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempdir();
    let (sk, pk) = keygen(d.path());
    assert_eq!(std::fs::metadata(&sk).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(std::fs::read_to_string(&pk).unwrap().starts_with("untrusted comment:"));
    let e = fails(limes_pack_cmd().args(["keygen", "--dir"]).arg(d.path()), 1);
    assert!(e.contains("exists; pass --force"), "{e}");
    ok(limes_pack_cmd().args(["keygen", "--force", "--dir"]).arg(d.path()));
}

#[test]
fn signed_bundle_verifies_here_and_with_minisign() {
    let d = tempdir();
    let (sk, pk) = keygen(d.path());
    let bundle = build(&pack("noop"), d.path(), &["--sign", sk.to_str().unwrap()]);
    let out = ok(limes_pack_cmd().args(["verify", "--json"]).arg(&bundle).arg("--key").arg(&pk));
    assert_eq!(json(&out)["ok"], true);

    // The stock tool checks the signature over the manifest ...
    let x = d.path().join("x");
    std::fs::create_dir(&x).unwrap();
    untar(&bundle, &x);
    let out = ok(minisign().arg("-V").arg("-p").arg(&pk).arg("-m").arg(x.join("manifest.json")));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Trusted comment: limes bundle noop 0.1.0"), "{text}");
    // ... and the manifest's digests match the unpacked files.
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(x.join("manifest.json")).unwrap()).unwrap();
    for f in m["files"].as_array().unwrap() {
        let data = std::fs::read(x.join(f["path"].as_str().unwrap())).unwrap();
        assert_eq!(limes_bundle::sha256_hex(&data), f["sha256"].as_str().unwrap());
    }
    // A tampered manifest fails the stock tool too.
    let mut bytes = std::fs::read(x.join("manifest.json")).unwrap();
    let pos = bytes.iter().position(|&b| b == b'n').unwrap();
    bytes[pos] = b'N';
    std::fs::write(x.join("manifest.json"), bytes).unwrap();
    fails(minisign().arg("-V").arg("-p").arg(&pk).arg("-m").arg(x.join("manifest.json")), 1);

    // Wrong key: exit 3, names the key.
    let other = d.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let (_, other_pk) = keygen(&other);
    let e = fails(limes_pack_cmd().arg("verify").arg(&bundle).arg("--key").arg(&other_pk), 3);
    assert!(e.contains("which is not trusted"), "{e}");
    // A directory of keys containing the right one works.
    std::fs::copy(&pk, other.join("right.pub")).unwrap();
    ok(limes_pack_cmd().arg("verify").arg(&bundle).arg("--key").arg(&other));
}

#[test]
fn keys_from_the_minisign_tool_sign_bundles() {
    let d = tempdir();
    let sk = d.path().join("ms.key");
    let pk = d.path().join("ms.pub");
    ok(minisign().args(["-G", "-W", "-f"]).arg("-p").arg(&pk).arg("-s").arg(&sk));
    let bundle = build(&pack("noop"), d.path(), &["--sign", sk.to_str().unwrap()]);
    // One scheme in both binaries: `--trust` names public keys, `--key` the
    // secret key that signs; the old spellings still work.
    ok(limes_pack_cmd().arg("verify").arg(&bundle).arg("--key").arg(&pk));
    ok(limes_pack_cmd().arg("verify").arg(&bundle).arg("--trust").arg(&pk));
    // Key from an environment variable (CI secrets).
    let text = std::fs::read_to_string(&sk).unwrap();
    let out2 = d.path().join("env");
    let o = ok(limes_pack_cmd().args(["build", "--json", "--key", "env:MY_LIMES_KEY", "--out-dir"]).arg(&out2).arg(pack("noop")).env("MY_LIMES_KEY", text));
    assert!(json(&o)["signed_by"].is_string());
    assert_eq!(std::fs::read(&bundle).unwrap(), std::fs::read(out2.join("noop-0.1.0.limes")).unwrap());
}

#[test]
fn bad_keys_fail_clearly_and_leave_no_bundle() {
    let d = tempdir();
    let (_, pk) = keygen(d.path());
    let out = d.path().join("out");
    let e = fails(limes_pack_cmd().args(["build", "--sign"]).arg(&pk).arg("--out-dir").arg(&out).arg(pack("noop")), 1);
    assert!(e.contains("is this the .pub file?"), "{e}");
    let e = fails(limes_pack_cmd().args(["build", "--sign", "/nonexistent.key", "--out-dir"]).arg(&out).arg(pack("noop")), 1);
    assert!(e.contains("/nonexistent.key"), "{e}");
    let e = fails(limes_pack_cmd().args(["build", "--sign", "env:NOPE_UNSET", "--out-dir"]).arg(&out).arg(pack("noop")), 1);
    assert!(e.contains("NOPE_UNSET is not set"), "{e}");
    let enc_sk = d.path().join("enc.key");
    // A password-protected minisign key is refused with the fix named.
    let mut child = minisign()
        .args(["-G", "-f"])
        .arg("-p")
        .arg(d.path().join("enc.pub"))
        .arg("-s")
        .arg(&enc_sk)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        let _ = stdin.write_all(b"pw\npw\n");
    }
    if child.wait().unwrap().success() {
        let e = fails(limes_pack_cmd().args(["build", "--sign"]).arg(&enc_sk).arg("--out-dir").arg(&out).arg(pack("noop")), 1);
        assert!(e.contains("password-protected"), "{e}");
    }
    assert!(!out.join("noop-0.1.0.limes").exists());
}

#[test]
fn flipped_bytes_fail_verification_naming_what_broke() {
    let d = tempdir();
    let (sk, pk) = keygen(d.path());
    let bundle = build(&pack("noop"), d.path(), &["--sign", sk.to_str().unwrap()]);
    let orig = std::fs::read(&bundle).unwrap();
    let bad = d.path().join("bad.limes");
    // Through the binary at a spread of offsets (exit 3 + a message) ...
    let step = orig.len() / 40;
    for i in (0..orig.len()).step_by(step.max(1)) {
        let mut m = orig.clone();
        m[i] ^= 0x20;
        std::fs::write(&bad, &m).unwrap();
        let e = fails(limes_pack_cmd().arg("verify").arg(&bad).arg("--key").arg(&pk), 3);
        assert!(e.contains("failed verification:"), "offset {i}: {e}");
    }
    // ... and, through the library, every byte of the headers and the
    // first and last blocks plus a dense sample of the rest (every byte of a
    // small bundle is covered by the limes-bundle unit tests).
    let keys = limes_bundle::TrustedKeys::load(std::slice::from_ref(&pk)).unwrap();
    let n = orig.len();
    let positions = (0..1024.min(n)).chain((1024..n).step_by(61)).chain(n.saturating_sub(512)..n);
    for i in positions {
        let mut m = orig.clone();
        m[i] ^= 0x01;
        let r = limes_bundle::archive::read_stream(
            &m[..],
            m.len() as u64,
            &Default::default(),
            limes_bundle::archive::SignaturePolicy::Require(&keys),
            &mut limes_bundle::archive::Discard,
        );
        assert!(r.is_err(), "flipping byte {i} of {} was accepted", orig.len());
    }
}

#[test]
fn builds_are_byte_identical_and_honour_source_date_epoch() {
    let d = tempdir();
    let (sk, _) = keygen(d.path());
    let a = build(&pack("mandelbrot"), &d.path().join("a"), &["--no-cache", "--sign", sk.to_str().unwrap()]);
    let b = build(&pack("mandelbrot"), &d.path().join("b"), &["--no-cache", "--sign", sk.to_str().unwrap()]);
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap(), "two builds differ");
    let o = ok(limes_pack_cmd().args(["build", "--json", "--out-dir"]).arg(d.path().join("c")).arg(pack("mandelbrot")).env("SOURCE_DATE_EPOCH", "1700000000"));
    let c = PathBuf::from(json(&o)["bundle"].as_str().unwrap());
    let x = d.path().join("xc");
    std::fs::create_dir(&x).unwrap();
    let list = ok(Command::new("tar").args(["--zstd", "-tvf"]).arg(&c).arg("--full-time"));
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(text.lines().all(|l| l.contains("2023-11-14")), "{text}");
    assert!(text.lines().all(|l| l.starts_with("-r--r--r-- 0/0")), "{text}");
    let e = fails(limes_pack_cmd().args(["build", "--out-dir"]).arg(&x).arg(pack("noop")).env("SOURCE_DATE_EPOCH", "yesterday"), 1);
    assert!(e.contains("SOURCE_DATE_EPOCH"), "{e}");
}

#[test]
fn sign_command_signs_an_unsigned_bundle() {
    let d = tempdir();
    let (sk, pk) = keygen(d.path());
    let bundle = build(&pack("noop"), d.path(), &[]);
    let e = fails(limes_pack_cmd().arg("verify").arg(&bundle).arg("--key").arg(&pk), 3);
    assert!(e.contains("not signed"), "{e}");
    ok(limes_pack_cmd().arg("sign").arg(&bundle).arg("--key").arg(&sk));
    ok(limes_pack_cmd().arg("verify").arg(&bundle).arg("--key").arg(&pk));
    // An unsigned build never silently replaces the signed bundle.
    let signed = std::fs::read(&bundle).unwrap();
    let e = fails(limes_pack_cmd().args(["build", "--out-dir"]).arg(d.path()).arg(pack("noop")), 1);
    assert!(e.contains("holds a signed bundle") && e.contains("--sign"), "{e}");
    assert_eq!(std::fs::read(&bundle).unwrap(), signed);
    let insp = json(&ok(limes_pack_cmd().args(["inspect", "--json"]).arg(&bundle)));
    assert!(insp["signer_key_id"].is_string());
    // Signing a damaged bundle is refused and the file is left as it was.
    let mut m = std::fs::read(&bundle).unwrap();
    let n = m.len();
    m[n / 2] ^= 1;
    std::fs::write(&bundle, &m).unwrap();
    fails(limes_pack_cmd().arg("sign").arg(&bundle).arg("--key").arg(&sk), 3);
    assert_eq!(std::fs::read(&bundle).unwrap(), m);
}

/// `inspect` shows an attacker's manifest text escaped (no terminal control
/// sequences reach the screen) and never panics on odd field lengths.
#[test]
fn inspect_escapes_manifest_text_and_survives_short_digests() {
    use limes_bundle::archive::{read_bundle, write_bundle, BundleLimits, InMemory, SignaturePolicy, Source};
    let key = test_key();
    let d = tempdir();
    let built = build_signed(&pack("noop"), &key, d.path());
    let mut mem = InMemory::default();
    let v = read_bundle(&built.bundle, &BundleLimits::default(), SignaturePolicy::Unverified, &mut mem).unwrap();
    let mut m = v.manifest.clone();
    m.function.description = Some("x\u{1b}[2K\r\u{1b}[32mOK: signature by TRUSTED key\u{1b}[0m".into());
    m.provenance.source_digest = "ab".into();
    let files: Vec<(String, Source<'_>)> = mem.0.iter().map(|(p, b)| (p.clone(), Source::Bytes(b))).collect();
    let evil = d.path().join("evil.limes");
    write_bundle(&evil, &m.to_json(), None, &files, m.provenance.source_date_epoch).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_limes-pack")).arg("inspect").arg(&evil).output().unwrap();
    assert!(out.status.success(), "inspect failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(!out.stdout.contains(&0x1b) && !out.stdout.contains(&b'\r'), "control bytes reached the terminal");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("\\u{1b}[2K") && text.contains("unsigned"), "{text}");
}

/// Wrong inputs get messages that say what is wrong, once, with the exit
/// code CI relies on.
#[test]
fn wrong_files_are_named_for_what_they_are() {
    let key = test_key();
    let d = tempdir();
    let built = build_signed(&pack("noop"), &key, d.path());
    let verify = |bundle: &Path, key: &Path| {
        let mut c = limes_pack_cmd();
        c.arg("verify").arg(bundle).arg("--key").arg(key);
        c
    };
    // A missing file: the OS error once, no talk of verification.
    let e = fails(&mut verify(&d.path().join("nosuch.limes"), &key.public), 1);
    assert_eq!(e.matches("No such file or directory").count(), 1, "{e}");
    assert!(e.contains("nosuch.limes") && !e.contains("failed verification"), "{e}");
    // Things that are not bundles say what they are.
    let component = d.path().join("component.wasm");
    let mut mem = limes_bundle::archive::InMemory::default();
    limes_bundle::archive::read_bundle(&built.bundle, &Default::default(), limes_bundle::archive::SignaturePolicy::Unverified, &mut mem).unwrap();
    std::fs::write(&component, &mem.0.iter().find(|(p, _)| p == "component.wasm").unwrap().1).unwrap();
    let e = fails(&mut verify(&component, &key.public), 3);
    assert!(e.contains("not a limes bundle: the file is a WebAssembly component"), "{e}");
    let e = fails(&mut verify(&key.public, &key.public), 3);
    assert!(e.contains("not a limes bundle: the file is a minisign public key"), "{e}");
    // A directory (say, the build's output directory) is named as one.
    let e = fails(limes_pack_cmd().arg("inspect").arg(d.path()), 1);
    assert!(e.contains("is a directory, not a bundle") && !e.contains("zstd"), "{e}");
    // The secret key where the public key belongs.
    let e = fails(&mut verify(&built.bundle, &key.secret), 1);
    assert!(e.contains("is a secret key") && e.contains(".pub"), "{e}");
}
