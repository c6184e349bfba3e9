//! The device-side bundle reader on arbitrary bytes: it must never panic,
//! never allocate past its limits, and never accept anything unsigned.
#![no_main]
use libfuzzer_sys::fuzz_target;
use limes_bundle::archive::{read_stream, BundleLimits, Discard, SignaturePolicy};
use limes_bundle::{PublicKey, TrustedKeys};

// The key the seed corpus is signed with (fuzz/corpus/bundle_reader).
const SEED_KEY: &str = include_str!("../seed.pub");

fuzz_target!(|data: &[u8]| {
    let limits = BundleLimits { max_unpacked: 64 << 20, ..Default::default() };
    let keys = TrustedKeys::new(vec![PublicKey::from_text(SEED_KEY, "seed").unwrap()]);
    let _ = read_stream(data, data.len() as u64, &limits, SignaturePolicy::Require(&keys), &mut Discard);
    let _ = read_stream(data, data.len() as u64, &limits, SignaturePolicy::Unverified, &mut Discard);
});
