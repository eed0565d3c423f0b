//! Fuzzes the IDX dataset reader (raw and gzip); see `bnc::fuzzing::idx`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = bnc::fuzzing::idx(data);
});
