//! Fuzzes the safetensors weights reader; see `bnc::fuzzing::safetensors`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = bnc::fuzzing::safetensors(data);
});
