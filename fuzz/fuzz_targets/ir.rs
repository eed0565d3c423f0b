//! Fuzzes the model text reader (parse, print round trip, passes, lowering); see `bnc::fuzzing::ir`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = bnc::fuzzing::ir(data);
});
