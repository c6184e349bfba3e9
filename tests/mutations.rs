//! Hostile bundles: from signed bundles of the reference packs, generate
//! mutated variants (bit flips in every region, truncations, added, removed,
//! reordered and duplicated entries, path traversal, links and device
//! nodes, lying sizes, decompression bombs, schema violations, wrong and
//! unknown keys, a valid signature over another manifest). Every variant
//! must be refused by `verify` and by `install`, with nothing written
//! outside the store and no partial entry left in it.
//!
//! `LIMES_MUTATIONS=N` sets how many bit-flip/truncation variants per pack
//! (default 400: with the structural cases, over 1000 in all).

mod common;
use common::*;
use limes_bundle::archive::{self, read_bundle, BundleLimits, Discard, InMemory, SignaturePolicy};
use limes_bundle::keys::SecretKey;
use limes_bundle::manifest::{Manifest, MANIFEST_PATH, SIGNATURE_PATH};
use limes_bundle::TrustedKeys;
use std::path::Path;

/// One tar entry of a hand-made archive.
#[derive(Clone)]
struct E {
    path: String,
    kind: tar::EntryType,
    data: Vec<u8>,
    /// Size written in the header when it should lie.
    declared: Option<u64>,
    link: Option<String>,
}

fn file(path: &str, data: &[u8]) -> E {
    E { path: path.into(), kind: tar::EntryType::Regular, data: data.to_vec(), declared: None, link: None }
}

/// A tar stream of `entries`, compressed canonically, so that only the
/// structural checks can refuse it.
fn pack_entries(entries: &[E], trailing_zeros: usize) -> Vec<u8> {
    let mut raw = Vec::new();
    for e in entries {
        // Start from the writer's own header, so the pristine reconstruction
        // is byte-identical and each variant differs only where it means to.
        let mut h = archive::canonical_header("x", 0, 0).unwrap();
        h.set_entry_type(e.kind);
        let _ = h.set_path(&e.path).or_else(|_| {
            // Paths tar::Header refuses (absolute, `..`) are written raw.
            let name = &mut h.as_old_mut().name;
            name.fill(0);
            name[..e.path.len().min(100)].copy_from_slice(&e.path.as_bytes()[..e.path.len().min(100)]);
            Ok::<(), std::io::Error>(())
        });
        if let Some(l) = &e.link {
            h.set_link_name(l).unwrap();
        }
        h.set_size(e.declared.unwrap_or(e.data.len() as u64));
        h.set_cksum();
        raw.extend_from_slice(h.as_bytes());
        raw.extend_from_slice(&e.data);
        while raw.len() % 512 != 0 {
            raw.push(0);
        }
    }
    raw.extend(std::iter::repeat_n(0u8, 1024 + trailing_zeros));
    archive::compress_canonical(&raw)
}

struct Original {
    manifest: Manifest,
    manifest_bytes: Vec<u8>,
    signature: String,
    files: Vec<(String, Vec<u8>)>,
    bytes: Vec<u8>,
}

fn original(bundle: &Path) -> Original {
    let mut mem = InMemory::default();
    let v = read_bundle(bundle, &BundleLimits::default(), SignaturePolicy::Unverified, &mut mem).unwrap();
    Original { manifest: v.manifest, manifest_bytes: v.manifest_bytes, signature: v.signature.unwrap(), files: mem.0, bytes: std::fs::read(bundle).unwrap() }
}

impl Original {
    fn entries(&self) -> Vec<E> {
        let mut v = vec![file(MANIFEST_PATH, &self.manifest_bytes), file(SIGNATURE_PATH, self.signature.as_bytes())];
        v.extend(self.files.iter().map(|(p, d)| file(p, d)));
        v
    }
    /// Re-sign an edited manifest with `key` and pack it with the files.
    fn resigned(&self, key: &SecretKey, edit: impl FnOnce(&mut Manifest)) -> Vec<u8> {
        let mut m = self.manifest.clone();
        edit(&mut m);
        let json = serde_json::to_vec_pretty(&m).unwrap();
        let mut es = self.entries();
        es[0] = file(MANIFEST_PATH, &json);
        es[1] = file(SIGNATURE_PATH, key.sign(&json, &m.trusted_comment()).as_bytes());
        pack_entries(&es, 0)
    }
}

/// Deterministic pseudo-random numbers (no dependency, reproducible runs).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn no_mutated_bundle_is_accepted() {
    let key = test_key();
    let sk = SecretKey::from_file(&key.secret).unwrap();
    let other = SecretKey::generate().unwrap();
    let keys = TrustedKeys::load(std::slice::from_ref(&key.public)).unwrap();
    let both = TrustedKeys::new(vec![sk.public(), other.public()]);
    let d = tempdir();
    let per_pack: usize = std::env::var("LIMES_MUTATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(400);
    let mut variants: Vec<(String, Vec<u8>)> = Vec::new();
    let mut rng = Lcg(0x5eed);
    let originals: Vec<Original> = ["noop", "mandelbrot", "image"].iter().map(|p| original(&build_signed(&pack(p), &key, &d.path().join(p)).bundle)).collect();

    for (idx, o) in originals.iter().enumerate() {
        let n = o.bytes.len();
        // Bit flips spread over every region of the file: the first and last
        // KiB densely, the rest at random.
        for i in 0..per_pack {
            let pos = match i % 4 {
                0 => rng.below(n.min(1024)),
                1 => n - 1 - rng.below(n.min(1024)),
                _ => rng.below(n),
            };
            let mut m = o.bytes.clone();
            m[pos] ^= 1 << (rng.below(8));
            variants.push((format!("flip@{pos}"), m));
        }
        for i in 0..per_pack / 8 {
            let cut = if i == 0 { 0 } else { rng.below(n) };
            variants.push((format!("truncate@{cut}"), o.bytes[..cut].to_vec()));
        }
        let es = o.entries();
        fn add(variants: &mut Vec<(String, Vec<u8>)>, name: &str, entries: Vec<E>, tz: usize) {
            variants.push((name.to_string(), pack_entries(&entries, tz)));
        }
        // Sanity: the reconstruction of the original is accepted.
        let same = pack_entries(&es, 0);
        read_bundle_bytes(&same, &keys).expect("reconstructed original must verify");

        let mut v = es.clone();
        v.push(file("extra.bin", b"surprise"));
        add(&mut variants, "added entry", v, 0);
        let mut v = es.clone();
        v.remove(2);
        add(&mut variants, "removed entry", v, 0);
        let mut v = es.clone();
        v.swap(2, 3);
        add(&mut variants, "reordered entries", v, 0);
        let mut v = es.clone();
        v.insert(3, es[2].clone());
        add(&mut variants, "duplicated entry", v, 0);
        let mut v = es.clone();
        v.insert(2, es[0].clone());
        add(&mut variants, "duplicated manifest", v, 0);
        let mut v = es.clone();
        v.swap(0, 1);
        add(&mut variants, "signature first", v, 0);
        let mut v = es.clone();
        v.remove(1);
        add(&mut variants, "signature removed", v, 0);
        for evil in ["../escape", "/etc/passwd", "aot/../../escape", "./component.wasm"] {
            let mut v = es.clone();
            v[2].path = evil.into();
            add(&mut variants, &format!("path {evil}"), v.clone(), 0);
            v.push(file(evil, b"x"));
            add(&mut variants, &format!("extra path {evil}"), v, 0);
        }
        for (kind, link) in [
            (tar::EntryType::Symlink, Some("/etc/passwd")),
            (tar::EntryType::Link, Some("manifest.json")),
            (tar::EntryType::Char, None),
            (tar::EntryType::Block, None),
            (tar::EntryType::Fifo, None),
            (tar::EntryType::Directory, None),
            (tar::EntryType::GNULongName, None),
            (tar::EntryType::XHeader, None),
        ] {
            let mut v = es.clone();
            v[2].kind = kind;
            v[2].link = link.map(String::from);
            if link.is_some() || kind != tar::EntryType::GNULongName {
                v[2].data.clear();
            }
            add(&mut variants, &format!("{kind:?} entry"), v, 0);
        }
        let mut v = es.clone();
        v[2].declared = Some(v[2].data.len() as u64 + 4096);
        add(&mut variants, "declared size larger than data", v, 0);
        let mut v = es.clone();
        v[2].declared = Some(v[2].data.len() as u64 - 1);
        add(&mut variants, "declared size smaller than data", v, 0);
        let mut v = es.clone();
        v[0].declared = Some(1 << 40);
        add(&mut variants, "huge declared manifest", v, 0);
        // Decompression bomb: 200 MiB of zeros after the archive (a few KiB
        // compressed).
        add(&mut variants, "bomb after archive", es.clone(), 200 << 20);

        // Schema violations and signature games, all validly signed where
        // that makes the test stronger.
        variants.push(("unknown schema".into(), o.resigned(&sk, |m| m.schema = "limes.bundle/v2".into())));
        variants.push(("unsafe file path in manifest".into(), o.resigned(&sk, |m| m.files[0].path = "../x".into())));
        variants.push(("bad digest in manifest".into(), o.resigned(&sk, |m| m.files[0].sha256 = "f".repeat(64))));
        // A tier claiming another architecture's target (an unknown tier
        // name is allowed: it is never mapped).
        variants.push((
            "tier with another architecture's target".into(),
            o.resigned(&sk, |m| {
                if let Some(a) = m.aot.first_mut() {
                    a.target = if a.target.starts_with("x86_64") { "aarch64-unknown-linux-gnu".into() } else { "x86_64-unknown-linux-gnu".into() }
                }
            }),
        ));
        variants.push(("profile digest mismatch".into(), o.resigned(&sk, |m| m.engine.profile.consume_fuel = true)));
        variants.push(("unlisted component".into(), o.resigned(&sk, |m| m.component = "nope.wasm".into())));
        variants.push(("signed by an untrusted key".into(), o.resigned(&other, |_| {})));
        let mut v = es.clone();
        v[1] = file(SIGNATURE_PATH, b"untrusted comment: x\nRWQAAAAAAAAAAAAA\n");
        add(&mut variants, "garbage signature", v, 0);
        // A valid signature, by the trusted key, over another manifest.
        let mut v = es.clone();
        v[1] = file(SIGNATURE_PATH, sk.sign(&originals[(idx + 1) % originals.len()].manifest_bytes, "other").as_bytes());
        add(&mut variants, "signature over another manifest", v, 0);
        let mut json: serde_json::Value = serde_json::from_slice(&o.manifest_bytes).unwrap();
        json["unexpected"] = true.into();
        let bytes = serde_json::to_vec(&json).unwrap();
        let mut v = es.clone();
        v[0] = file(MANIFEST_PATH, &bytes);
        v[1] = file(SIGNATURE_PATH, sk.sign(&bytes, "x").as_bytes());
        add(&mut variants, "unknown manifest field", v, 0);
    }

    // "Unknown key id": verifying with a key set that lacks the signer.
    let untrusting = TrustedKeys::new(vec![other.public()]);
    let o = &originals[0];
    assert!(matches!(read_bundle_bytes(&o.bytes, &untrusting), Err(limes_bundle::BundleError::UntrustedKey(_))));
    // The pristine bundles are accepted by both key sets that trust them.
    for o in &originals {
        read_bundle_bytes(&o.bytes, &keys).unwrap();
        read_bundle_bytes(&o.bytes, &both).unwrap();
    }

    let store_dir = d.path().join("store");
    let store = limes::Store::open(&store_dir).unwrap();
    let probe = d.path().join("probe.limes");
    let mut refused = 0usize;
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    for (name, bytes) in &variants {
        let verify = read_bundle_bytes(bytes, &keys);
        assert!(verify.is_err(), "verify accepted mutant {name:?}");
        std::fs::write(&probe, bytes).unwrap();
        let install = store.install(&probe, &keys, limes::store::InstallPolicy { allow_downgrade: true, force: true, rotate_key: true, ..Default::default() });
        assert!(install.is_err(), "install accepted mutant {name:?}");
        let msg = install.unwrap_err().to_string();
        assert!(!msg.is_empty());
        refused += 1;
        *kinds.entry(name.split('@').next().unwrap().to_string()).or_default() += 1;
    }
    for sub in ["objects", "functions", "tmp"] {
        assert_eq!(std::fs::read_dir(store_dir.join(sub)).unwrap().count(), 0, "{sub}/ is not empty after the mutants");
    }
    let outside: Vec<_> = std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect();
    for n in &outside {
        assert!(["store", "probe.limes", "noop", "mandelbrot", "image"].contains(&n.as_str()), "unexpected file {n} next to the store");
    }
    println!("mutation suite: {refused} variants, {refused} refused by verify and by install, 0 accepted");
    for (k, n) in &kinds {
        println!("  {n:5}  {k}");
    }
    assert!(refused >= 1000 || per_pack < 400, "only {refused} variants");
}

fn read_bundle_bytes(bytes: &[u8], keys: &TrustedKeys) -> Result<(), limes_bundle::BundleError> {
    archive::read_stream(bytes, bytes.len() as u64, &BundleLimits::default(), SignaturePolicy::Require(keys), &mut Discard).map(|_| ())
}
