//! Attacks on the device, performed against the real `limes` binary: a
//! tampered or swapped store object, a store others can write, symlinks
//! planted in the store, tar extension entries, header bytes outside the
//! signed content, rollback and publisher games, and names that escape the
//! store. Each one must fail safe: refused with a clear message and the
//! exit code CI relies on, nothing outside the store touched.

mod common;
use common::*;
use limes_bundle::archive::{self, BundleLimits, SignaturePolicy};
use limes_bundle::keys::SecretKey;
use limes_bundle::manifest::{Manifest, MANIFEST_PATH, SIGNATURE_PATH};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const EXIT_VERIFY: i32 = 3;

/// A signed no-op bundle, built once per test process.
fn noop_bundle() -> &'static (TestKey, PathBuf) {
    static B: std::sync::OnceLock<(TestKey, PathBuf)> = std::sync::OnceLock::new();
    B.get_or_init(|| {
        let key = test_key();
        let out = key.dir.path().join("out");
        let built = build_signed(&pack("noop"), &key, &out);
        (key, built.bundle)
    })
}

/// Install the no-op bundle into a fresh store under `d`.
fn installed(d: &Path) -> PathBuf {
    let (key, bundle) = noop_bundle();
    let store = d.join("store");
    install(&store, bundle, key);
    store
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

fn cwasm_files(object: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(object.join("aot")).unwrap().map(|e| e.unwrap().path()).collect();
    v.sort();
    assert!(!v.is_empty());
    v
}

#[test]
fn a_tampered_artifact_is_never_mapped_and_reinstalling_repairs_it() {
    let d = tempdir();
    let store = installed(d.path());
    let object = object_dir(&store, "noop");
    // Same size, other machine code: flip bytes in the middle of every tier.
    for f in cwasm_files(&object) {
        tamper(&f, |b| {
            let mid = b.len() / 2;
            for x in &mut b[mid..mid + 64] {
                *x ^= 0x90;
            }
        });
    }
    let e = fails(limes_cmd(&store).args(["run", "noop", "--data", "x"]), EXIT_VERIFY);
    assert!(e.contains("does not match the signed manifest") && e.contains("aot/"), "{e}");
    // serve re-hashes when it loads, so it refuses the function too.
    let e = fails(limes_cmd(&store).args(["serve", "--listen", "127.0.0.1:0"]), EXIT_VERIFY);
    assert!(e.contains("does not match the signed manifest"), "{e}");
    // Reinstalling the genuine bundle replaces the damaged object.
    let (key, bundle) = noop_bundle();
    install(&store, bundle, key);
    let o = ok(limes_cmd(&store).args(["run", "noop", "--data", "genuine"]));
    assert_eq!(o.stdout, b"genuine");
}

#[test]
fn the_store_is_private_and_refused_when_others_can_write_it() {
    let d = tempdir();
    let (key, bundle) = noop_bundle();
    let store = d.path().join("store");
    let exe = env!("CARGO_BIN_EXE_limes");
    ok(Command::new("sh")
        .arg("-c")
        .arg("umask 002; exec \"$0\" --store \"$1\" install \"$2\" --trust \"$3\"")
        .arg(exe)
        .arg(&store)
        .arg(bundle)
        .arg(&key.public)
        .env_remove("LIMES_HOME")
        .env("LIMES_TRUST_DIR", trust_dir(&store)));
    assert_eq!(mode(&store), 0o700);
    fn walk(p: &Path) {
        for e in std::fs::read_dir(p).unwrap() {
            let p = e.unwrap().path();
            assert_eq!(mode(&p) & 0o077, 0, "{} is open to others ({:o})", p.display(), mode(&p));
            if p.is_dir() {
                walk(&p);
            }
        }
    }
    walk(&store);
    // A group-writable directory makes the store untrustworthy.
    let objects = store.join("objects");
    chmod(&objects, 0o770);
    let e = fails(limes_cmd(&store).args(["run", "noop"]), EXIT_VERIFY);
    assert!(e.contains(&objects.display().to_string()) && e.contains("chmod"), "{e}");
    chmod(&objects, 0o700);
    let object = object_dir(&store, "noop");
    chmod(&object, 0o575);
    let e = fails(limes_cmd(&store).args(["run", "noop"]), EXIT_VERIFY);
    assert!(e.contains("writable by its group or others"), "{e}");
    chmod(&object, 0o500);
    ok(limes_cmd(&store).args(["run", "noop"]));
    // Another owner (only root can arrange this).
    // SAFETY: geteuid has no arguments and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        let rec = store.join("functions/noop.json");
        std::os::unix::fs::lchown(&rec, Some(65534), None).unwrap();
        let e = fails(limes_cmd(&store).args(["run", "noop"]), EXIT_VERIFY);
        assert!(e.contains("owned by uid 65534") && e.contains("chown"), "{e}");
    }
}

#[test]
fn symlinks_planted_in_the_store_are_never_followed() {
    let d = tempdir();
    let store = installed(d.path());
    // A victim outside the store, private.
    let victim = d.path().join("victim");
    std::fs::create_dir(&victim).unwrap();
    std::fs::write(victim.join("secret"), b"keep me").unwrap();
    chmod(&victim.join("secret"), 0o600);
    chmod(&victim, 0o700);
    // Stale "staging directories" that are links to it: cleanup runs on the
    // next install and must unlink them, not chmod or empty their targets.
    for (name, target) in [("stage-evil", victim.clone()), ("stage-file", victim.join("secret"))] {
        let link = store.join("tmp").join(name);
        std::os::unix::fs::symlink(&target, &link).unwrap();
        ok(Command::new("touch").args(["-h", "-d", "2000-01-01"]).arg(&link));
    }
    let (key, bundle) = noop_bundle();
    ok(limes_cmd(&store).arg("install").arg(bundle).arg("--trust").arg(&key.public).arg("--force"));
    assert_eq!(mode(&victim), 0o700);
    assert_eq!(mode(&victim.join("secret")), 0o600);
    assert_eq!(std::fs::read(victim.join("secret")).unwrap(), b"keep me");
    assert!(std::fs::symlink_metadata(store.join("tmp/stage-evil")).is_err(), "the planted link was not removed");

    // The KVM-probe cache is replaced, never written through a link.
    let cache = store.join("microvm-accel");
    std::os::unix::fs::symlink(victim.join("secret"), &cache).unwrap();
    assert!(limes::store::read_nofollow(&cache, 16).is_err(), "a symlinked cache file was read");
    limes::store::write_atomic(&cache, b"tcg\n").unwrap();
    assert_eq!(std::fs::read(victim.join("secret")).unwrap(), b"keep me");
    assert!(std::fs::symlink_metadata(&cache).unwrap().file_type().is_file());

    // A record that is a link, and an artifact that is a link to a copy of
    // the genuine bytes: both refused.
    std::os::unix::fs::symlink(store.join("functions/noop.json"), store.join("functions/alias.json")).unwrap();
    let e = fails(limes_cmd(&store).args(["run", "alias"]), EXIT_VERIFY);
    assert!(e.contains("symlink"), "{e}");
    let object = object_dir(&store, "noop");
    chmod(&object.join("aot"), 0o700);
    for f in cwasm_files(&object) {
        let copy = d.path().join(f.file_name().unwrap());
        std::fs::copy(&f, &copy).unwrap();
        chmod(&f, 0o600);
        std::fs::remove_file(&f).unwrap();
        std::os::unix::fs::symlink(&copy, &f).unwrap();
    }
    chmod(&object.join("aot"), 0o500);
    let e = fails(limes_cmd(&store).args(["run", "noop"]), EXIT_VERIFY);
    assert!(e.contains("symlink"), "{e}");
}

/// The raw (uncompressed) tar stream of a bundle.
fn raw_tar(bundle: &Path) -> Vec<u8> {
    zstd::stream::decode_all(std::fs::File::open(bundle).unwrap()).unwrap()
}

/// Offsets of every entry header in a raw bundle tar, with entry sizes.
fn headers(raw: &[u8]) -> Vec<(usize, u64)> {
    let mut out = Vec::new();
    let mut at = 0;
    while raw[at..at + 512].iter().any(|&b| b != 0) {
        let h = tar::Header::from_byte_slice(&raw[at..at + 512]);
        let size = h.size().unwrap();
        out.push((at, size));
        at += 512 + size.div_ceil(512) as usize * 512;
    }
    out
}

fn install_bytes(store: &Path, bytes: &[u8], name: &str) -> std::process::Output {
    let (key, _) = noop_bundle();
    let f = store.parent().unwrap().join(name);
    std::fs::write(&f, bytes).unwrap();
    // A bounded address space: a reader that buffers an attacker's entry
    // would abort here instead of answering.
    Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 1048576; exec \"$0\" --store \"$1\" install \"$2\" --trust \"$3\"")
        .arg(env!("CARGO_BIN_EXE_limes"))
        .arg(store)
        .arg(&f)
        .arg(&key.public)
        .env_remove("LIMES_HOME")
        .env("LIMES_TRUST_DIR", trust_dir(store))
        .output()
        .unwrap()
}

#[test]
fn tar_extension_entries_are_refused_from_their_header() {
    let d = tempdir();
    let store = d.path().join("store");
    let (_, bundle) = noop_bundle();
    let raw = raw_tar(bundle);
    let hs = headers(&raw);
    let (sig_at, _) = hs[1];
    // A GNU long-name entry, and a pax header, of 256 MiB each before the
    // signature entry: the payload compresses to almost nothing.
    for (flag, what) in [(b'L', "GNU long-name"), (b'x', "pax extended header")] {
        let mut h = archive::canonical_header("././@LongLink", 256 << 20, 0).unwrap();
        h.as_mut_bytes()[156] = flag;
        h.set_cksum();
        let mut evil = raw[..sig_at].to_vec();
        evil.extend_from_slice(h.as_bytes());
        evil.resize(evil.len() + (256 << 20), b'A');
        evil.extend_from_slice(&raw[sig_at..]);
        let bytes = archive::compress_canonical(&evil);
        drop(evil);
        let out = install_bytes(&store, &bytes, "longname.limes");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(EXIT_VERIFY), "{what}: {}", &stderr[..stderr.len().min(2000)]);
        assert!(stderr.len() < 2048, "{what}: a {}-byte error message", stderr.len());
        assert!(stderr.contains(what), "{what}: {stderr}");
    }
    assert_eq!(std::fs::read_dir(store.join("objects")).unwrap().count(), 0);
}

#[test]
fn no_header_byte_can_change_while_verify_says_ok() {
    let d = tempdir();
    let store = d.path().join("store");
    let (key, bundle) = noop_bundle();
    let keys = limes_bundle::TrustedKeys::load(std::slice::from_ref(&key.public)).unwrap();
    let raw = raw_tar(bundle);
    let hs = headers(&raw);
    // ustar fields: (offset, length).
    let fields = [
        (0, 100),
        (100, 8),
        (108, 8),
        (116, 8),
        (124, 12),
        (136, 12),
        (148, 8),
        (156, 1),
        (157, 100),
        (257, 6),
        (263, 2),
        (265, 32),
        (297, 32),
        (329, 8),
        (337, 8),
        (345, 155),
        (500, 12),
    ];
    let mut variants = Vec::new();
    for &(at, size) in &hs {
        for &(off, len) in &fields {
            // Change the last byte of the field (a NUL becomes a digit or a
            // letter) and keep the checksum valid, as a careful attacker would.
            let mut m = raw.clone();
            let i = at + off + len - 1;
            m[i] = if m[i] == 0 { b'1' } else { m[i] ^ 0x01 };
            if off != 148 {
                let h = tar::Header::from_byte_slice(&m[at..at + 512]).clone();
                let mut h = h;
                h.set_cksum();
                m[at..at + 512].copy_from_slice(h.as_bytes());
            }
            variants.push((format!("header@{at}+{off}"), m));
        }
        // Padding after the entry's data.
        if size % 512 != 0 {
            let mut m = raw.clone();
            m[at + 512 + size as usize] = b'!';
            variants.push((format!("padding@{at}"), m));
        }
    }
    let end = hs.last().map(|&(at, size)| at + 512 + size.div_ceil(512) as usize * 512).unwrap();
    let mut m = raw.clone();
    m[end + 700] = 1;
    variants.push(("end blocks".into(), m));
    // A pax header whose `size` record hides bytes from tar's view.
    let (comp_at, _) = hs[2];
    let record = b"20 size=0000000000\n";
    let mut pax = archive::canonical_header("PaxHeaders/x", record.len() as u64, 0).unwrap();
    pax.as_mut_bytes()[156] = b'x';
    pax.set_cksum();
    let mut m = raw[..comp_at].to_vec();
    m.extend_from_slice(pax.as_bytes());
    m.extend_from_slice(record);
    m.resize(m.len().div_ceil(512) * 512, 0);
    m.extend_from_slice(&raw[comp_at..]);
    variants.push(("pax size override".into(), m));

    let mut refused = 0;
    for (name, m) in &variants {
        let bytes = archive::compress_canonical(m);
        let r = archive::read_stream(&bytes[..], bytes.len() as u64, &BundleLimits::default(), SignaturePolicy::Require(&keys), &mut archive::Discard);
        assert!(r.is_err(), "verify accepted {name}");
        refused += 1;
    }
    // And the real binary, for a sample of them.
    for (name, m) in variants.iter().step_by(7) {
        let out = install_bytes(&store, &archive::compress_canonical(m), "header.limes");
        assert_eq!(out.status.code(), Some(EXIT_VERIFY), "install of {name}: {}", String::from_utf8_lossy(&out.stderr));
    }
    println!("{refused} header variants refused");
    // The pristine bundle still verifies, and the recipe in docs/bundle-format.md with
    // standard tools agrees with it.
    archive::read_bundle(bundle, &BundleLimits::default(), SignaturePolicy::Require(&keys), &mut archive::Discard).unwrap();
    let x = d.path().join("x");
    std::fs::create_dir(&x).unwrap();
    ok(Command::new("tar").arg("--zstd").arg("-xf").arg(bundle).arg("-C").arg(&x));
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(x.join(MANIFEST_PATH)).unwrap()).unwrap();
    let list: String = m["files"].as_array().unwrap().iter().map(|f| format!("{}  {}\n", f["sha256"].as_str().unwrap(), f["path"].as_str().unwrap())).collect();
    std::fs::write(x.join("SUMS"), list).unwrap();
    ok(Command::new("sha256sum").args(["-c", "SUMS"]).current_dir(&x));
}

/// A validly signed no-op bundle with an edited manifest.
fn resigned(key: &SecretKey, out: &Path, edit: impl FnOnce(&mut Manifest), comment: Option<&str>) -> PathBuf {
    rewrite_with(&noop_bundle().1, key, out, edit, comment)
}

#[test]
fn rollback_and_publisher_games_are_refused() {
    let d = tempdir();
    let (key, _) = noop_bundle();
    let sk = SecretKey::from_file(&key.secret).unwrap();
    let store = d.path().join("store");
    let install = |b: &Path, extra: &[&str]| {
        let mut c = limes_cmd(&store);
        c.arg("install").arg(b).arg("--trust").arg(key.dir.path()).args(extra);
        c
    };
    let version = |v: &'static str| move |m: &mut Manifest| m.function.version = v.into();
    // Pre-release parts compare as numbers: rc.9 is older than rc.10.
    let rc10 = resigned(&sk, &d.path().join("rc10.limes"), version("1.0.0-rc.10"), None);
    let rc9 = resigned(&sk, &d.path().join("rc9.limes"), version("1.0.0-rc.9"), None);
    ok(&mut install(&rc10, &[]));
    let e = fails(&mut install(&rc9, &[]), 1);
    assert!(e.contains("rollback") && e.contains("1.0.0-rc.10"), "{e}");
    // The same version with other content is refused unless forced.
    let two_oh = |desc: &'static str| {
        move |m: &mut Manifest| {
            m.function.version = "2.0.0".into();
            m.function.description = Some(desc.into())
        }
    };
    let a = resigned(&sk, &d.path().join("a.limes"), two_oh("a"), None);
    let b = resigned(&sk, &d.path().join("b.limes"), two_oh("b"), None);
    ok(&mut install(&a, &[]));
    ok(&mut install(&a, &[]));
    let e = fails(&mut install(&b, &[]), 1);
    assert!(e.contains("already installed with different content") && e.contains("--force"), "{e}");
    ok(&mut install(&b, &["--force"]));
    // Another trusted key may not take over a name pinned to the first.
    let other = SecretKey::generate().unwrap();
    std::fs::write(key.dir.path().join("other.pub"), other.public().to_text()).unwrap();
    let takeover = resigned(&other, &d.path().join("t.limes"), version("9.9.9"), None);
    let e = fails(&mut install(&takeover, &[]), EXIT_VERIFY);
    assert!(e.contains("--rotate-key") && e.contains(&sk.public().id().to_string()), "{e}");
    // ... not even after `remove`: the pin outlives the record.
    ok(limes_cmd(&store).args(["remove", "noop"]));
    fails(&mut install(&takeover, &[]), EXIT_VERIFY);
    ok(&mut install(&takeover, &["--rotate-key"]));
    let o = ok(limes_cmd(&store).args(["--json", "list"]));
    assert!(String::from_utf8_lossy(&o.stdout).contains("9.9.9"));
    // A signature whose trusted comment names another function or version.
    let lying = resigned(&sk, &d.path().join("l.limes"), version("10.0.0"), Some("limes bundle noop 0.0.1 schema limes.bundle/v1"));
    let e = fails(&mut install(&lying, &["--rotate-key"]), EXIT_VERIFY);
    assert!(e.contains("trusted comment"), "{e}");
    std::fs::remove_file(key.dir.path().join("other.pub")).unwrap();
}

#[test]
fn names_never_escape_the_store() {
    let d = tempdir();
    let store = installed(d.path());
    let victim = d.path().join("victim.json");
    std::fs::write(&victim, b"{}").unwrap();
    for evil in ["../../victim", "../functions/noop", "/etc/passwd", ".hidden", ""] {
        let e = fails(limes_cmd(&store).args(["remove", evil]), 1);
        assert!(e.contains("is not a function name"), "{evil}: {e}");
        let e = fails(limes_cmd(&store).args(["run", evil]), 1);
        assert!(!e.is_empty());
    }
    assert!(victim.exists());
    ok(limes_cmd(&store).args(["run", "noop"]));
}

#[test]
fn version_order_is_semver() {
    use limes::store::version_cmp;
    use std::cmp::Ordering::*;
    for (a, b, o) in [
        ("1.0.0-rc.9", "1.0.0-rc.10", Less),
        ("1.0.0-alpha", "1.0.0-alpha.1", Less),
        ("1.0.0-alpha.1", "1.0.0-alpha.beta", Less),
        ("1.0.0-beta.11", "1.0.0-rc.1", Less),
        ("1.0.0-rc.1", "1.0.0", Less),
        ("1.2.10", "1.2.9", Greater),
        ("1.0.0+build.5", "1.0.0+build.6", Equal),
        ("2.0.0", "10.0.0", Less),
    ] {
        assert_eq!(version_cmp(a, b), o, "{a} vs {b}");
        assert_eq!(version_cmp(b, a), o.reverse(), "{b} vs {a}");
    }
    let _ = SIGNATURE_PATH;
}

/// Copy a store object to a new name, with `edit` applied to its files
/// (path, bytes) while writable; returns the copy's directory.
fn copy_object(from: &Path, to: &Path, edit: &mut dyn FnMut(&str, &mut Vec<u8>)) {
    fn walk(from: &Path, to: &Path, rel: &str, edit: &mut dyn FnMut(&str, &mut Vec<u8>)) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().to_string();
            let r = if rel.is_empty() { name.clone() } else { format!("{rel}/{name}") };
            if e.file_type().unwrap().is_dir() {
                walk(&e.path(), &to.join(&name), &r, edit);
            } else {
                let mut b = std::fs::read(e.path()).unwrap();
                edit(&r, &mut b);
                std::fs::write(to.join(&name), b).unwrap();
            }
        }
    }
    walk(from, to, "", edit);
}

/// Point `name`'s record at `object` as an attacker with write access to
/// the store would: the manifest digest of the object, fresh stamps of
/// every file, and the given signer; everything made read-only first.
fn repoint(store: &Path, name: &str, object: &str, signer: Option<&str>) {
    use std::os::unix::fs::MetadataExt;
    let dir = store.join("objects").join(object);
    fn seal(p: &Path) {
        for e in std::fs::read_dir(p).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                seal(&p);
                chmod(&p, 0o500);
            } else {
                chmod(&p, 0o400);
            }
        }
    }
    seal(&dir);
    chmod(&dir, 0o500);
    let rec_path = store.join(format!("functions/{name}.json"));
    let mut rec: serde_json::Value = serde_json::from_slice(&std::fs::read(&rec_path).unwrap()).unwrap();
    let manifest_sha = limes_bundle::sha256_hex(&std::fs::read(dir.join(MANIFEST_PATH)).unwrap());
    let mut stamps = serde_json::Map::new();
    for rel in rec["stamps"].as_object().unwrap().keys() {
        let m = std::fs::symlink_metadata(dir.join(rel)).unwrap();
        stamps.insert(rel.clone(), serde_json::json!({"dev": m.dev(), "ino": m.ino(), "size": m.len(), "ctime": m.ctime(), "ctime_nsec": m.ctime_nsec()}));
    }
    rec["object"] = object.into();
    rec["manifest_sha256"] = manifest_sha.into();
    rec["stamps"] = stamps.into();
    if let Some(s) = signer {
        rec["signer"] = s.into();
    }
    std::fs::write(&rec_path, serde_json::to_vec_pretty(&rec).unwrap()).unwrap();
}

/// Attack (file writes to the store, no key): copy the installed object,
/// replace machine code in every tier, rewrite those files' digests in the
/// copy's manifest, and point the record at the copy with the matching
/// manifest digest and fresh stamps, so that everything the store can check
/// against itself agrees. Its signature does not: the loader checks it on
/// every load against keys outside the store, so `run` and `serve` refuse
/// the function and `list` shows it unverified.
#[test]
fn a_writable_store_cannot_run_native_code_no_trusted_key_signed() {
    let d = tempdir();
    let store = installed(d.path());
    let object = object_dir(&store, "noop");
    let staging = store.join("objects").join("forging");
    let mut new_digests = Vec::new();
    copy_object(&object, &staging, &mut |rel, b| {
        if rel.ends_with(".cwasm") {
            let mid = b.len() / 2;
            for x in &mut b[mid..mid + 64] {
                *x ^= 0x90;
            }
            new_digests.push((rel.to_string(), limes_bundle::sha256_hex(b)));
        }
    });
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(staging.join(MANIFEST_PATH)).unwrap()).unwrap();
    for f in m["files"].as_array_mut().unwrap() {
        if let Some((_, sha)) = new_digests.iter().find(|(p, _)| f["path"] == p.as_str()) {
            f["sha256"] = sha.clone().into();
        }
    }
    std::fs::write(staging.join(MANIFEST_PATH), serde_json::to_vec(&m).unwrap()).unwrap();
    let forged = limes_bundle::sha256_hex(&std::fs::read(staging.join(MANIFEST_PATH)).unwrap());
    std::fs::rename(&staging, store.join("objects").join(&forged)).unwrap();
    repoint(&store, "noop", &forged, None);

    let e = fails(limes_cmd(&store).args(["run", "noop", "--data", "x"]), EXIT_VERIFY);
    assert!(e.contains("signature is invalid"), "{e}");
    let e = fails(limes_cmd(&store).args(["serve", "--listen", "127.0.0.1:0"]), EXIT_VERIFY);
    assert!(e.contains("signature is invalid"), "{e}");
    let o = ok(limes_cmd(&store).arg("list"));
    let listed = String::from_utf8_lossy(&o.stdout);
    assert!(listed.contains("UNVERIFIED") && listed.contains("signature is invalid"), "{listed}");
    // A trust directory inside the store is refused: the store's writer
    // would choose the keys.
    let e = fails(limes_cmd(&store).args(["run", "noop"]).env("LIMES_TRUST_DIR", store.join("tmp")), EXIT_VERIFY);
    assert!(e.contains("inside the store"), "{e}");
}

/// Attack (file writes to the store): point a function's record at an
/// object another trusted key signed for the same name. The publisher pinned
/// in the trust directory, which the store's writer cannot move, refuses it.
#[test]
fn a_writable_store_cannot_switch_a_function_to_another_publisher() {
    let d = tempdir();
    let store = installed(d.path());
    let other = test_key();
    let built = build_signed(&pack("noop"), &other, &d.path().join("other-out"));
    let other_store = d.path().join("other-store");
    ok(limes_cmd(&other_store).arg("install").arg(&built.bundle).arg("--trust").arg(&other.public));
    // Both keys are trusted on this device.
    std::fs::copy(&other.public, trust_dir(&store).join("other.pub")).unwrap();
    let theirs = object_dir(&other_store, "noop");
    let name = theirs.file_name().unwrap().to_string_lossy().to_string();
    copy_object(&theirs, &store.join("objects").join(&name), &mut |_, _| {});
    let signer = limes_bundle::keys::PublicKey::from_file(&other.public).unwrap().id().to_string();
    repoint(&store, "noop", &name, Some(&signer));
    let e = fails(limes_cmd(&store).args(["run", "noop", "--data", "x"]), EXIT_VERIFY);
    assert!(e.contains("refusing a change of publisher"), "{e}");
}
