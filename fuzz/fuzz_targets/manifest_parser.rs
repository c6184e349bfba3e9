//! The manifest parser and schema checks on arbitrary bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = limes_bundle::Manifest::from_json(data) {
        // Whatever parses must re-serialise and parse to the same value.
        let again = limes_bundle::Manifest::from_json(&m.to_json()).expect("round trip");
        assert_eq!(m, again);
    }
});
