//! What the fuzz targets in `fuzz/` do with one input, shared with the test that replays
//! the committed corpus (`tests/corpus.rs`), so that a crash the fuzzer found stays fixed
//! in the normal test run. See `docs/FUZZING.md`.
//!
//! Each function feeds arbitrary bytes to one reader of user input and describes the
//! outcome in one line: `ok ...` or the typed error's message. None may panic, abort, hang
//! or allocate more than the input justifies on any input; the IR target also asserts the
//! text format's invariant `print(parse(print(g))) == print(g)`, so a violation is a crash
//! the fuzzer reports.

use std::path::Path;

use bnc_compiler::lower::{lower, train};
use bnc_compiler::passes::{Mode, PassManager};
use bnc_compiler::text::{parse, parse_bytes, print};
use bnc_runtime::data::parse_idx;
use bnc_runtime::weights::ParamStore;

/// The model text reader: parse; if that succeeds, check the print/parse round trip, run
/// both default pipelines (shape inference, BatchNorm lowering and folding, loss,
/// autodiff), lower the inference graph to a plan and build the JIT trainer's plan. No
/// native code is generated.
pub fn ir(bytes: &[u8]) -> String {
    let g = match parse_bytes(bytes) {
        Ok(g) => g,
        Err(e) => return format!("parse error: {}: {e}", e.span),
    };
    let text = print(&g);
    let again = parse(&text).unwrap_or_else(|e| panic!("printed form does not parse: {e}"));
    assert_eq!(print(&again), text, "print(parse(print(g))) != print(g)");

    let mut g_infer = g.clone();
    let infer = match PassManager::for_mode(Mode::Infer).run(&mut g_infer, Mode::Infer) {
        Ok(_) => match lower(&g_infer) {
            Ok(plan) => format!("{} kernels", plan.kernels.len()),
            Err(e) => format!("lower: {e}"),
        },
        Err(e) => e.to_string(),
    };
    let mut g_train = g.clone();
    let trained = PassManager::for_mode(Mode::Train).run(&mut g_train, Mode::Train);
    let train = match &trained {
        Ok(_) => format!("{} outputs", g_train.outputs().len()),
        Err(e) => e.to_string(),
    };
    // The JIT trainer's plan is built from the default train pipeline's output.
    let plan = match trained {
        Ok(_) => match train::plan(&g_train) {
            Ok(plan) => format!("{} layers", plan.layers.len()),
            Err(e) => e.to_string(),
        },
        Err(e) => e.to_string(),
    };
    format!("ok; infer: {infer}; train: {train}; train plan: {plan}")
}

/// The weights reader: decode a safetensors file.
pub fn safetensors(bytes: &[u8]) -> String {
    match ParamStore::decode(bytes, Path::new("fuzz.safetensors")) {
        Ok(store) => {
            let elements: usize = store.iter().map(|(_, t)| t.len()).sum();
            format!("ok: {} tensors, {elements} elements", store.len())
        }
        Err(e) => e.to_string(),
    }
}

/// The dataset reader: parse an IDX file (raw or gzip) as ranks 1 to 3 (Fashion-MNIST
/// asks for 1, labels, and 3, images) and as the rank a raw header declares.
pub fn idx(bytes: &[u8]) -> String {
    let mut ranks = vec![1, 2, 3];
    if let Some(&declared) = bytes.get(3).filter(|_| bytes.starts_with(&[0, 0]))
        && !ranks.contains(&usize::from(declared))
    {
        ranks.push(usize::from(declared));
    }
    let mut outcomes = Vec::new();
    for ndims in ranks {
        let outcome = match parse_idx(bytes, Path::new("fuzz.idx"), ndims) {
            Ok(array) => {
                let count: usize = array.dims().iter().product();
                assert_eq!(array.data().len(), count, "IDX data length");
                format!("ok: dims {:?}", array.dims())
            }
            Err(e) => e.to_string(),
        };
        outcomes.push(format!("rank {ndims}: {outcome}"));
    }
    outcomes.join("; ")
}
