//! Fuzz target: the lab-file parser never panics, and anything it accepts
//! survives `to_yaml` → `parse` unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match labspan_proto::lab::parse("fuzz.yaml", text) {
        Ok(lab) => {
            let again = labspan_proto::lab::parse("again.yaml", &labspan_proto::lab::to_yaml(&lab));
            assert_eq!(again.as_ref().ok(), Some(&lab), "roundtrip changed the lab");
        }
        Err(d) => assert!(!d.is_empty(), "rejected without a diagnostic"),
    }
});
