//! The shipped models in `models/`: their canonical print after parsing and after shape
//! inference (snapshots), the `--print-after-all` dumps of LeNet-BN in both modes, the
//! round trip `print(parse(print(g))) == print(g)` at every step, and the parameter names
//! and PyTorch layouts that weights files and `state_dict`s rely on.

use std::path::{Path, PathBuf};

use bnc::compiler::ir::NodeKind;
use bnc::compiler::text::{parse, print};
use bnc::{CompileOptions, Graph, Mode, PrintAfter, Step};

fn models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models")
}

fn load(name: &str) -> Graph {
    let path = models_dir().join(name);
    bnc::load_model(&path).unwrap_or_else(|e| panic!("{e}"))
}

fn compile(g: Graph, mode: Mode, passes: Option<&[&str]>) -> (Graph, Vec<Step>) {
    let opts = CompileOptions {
        passes: passes.map(|p| p.iter().map(|s| s.to_string()).collect()),
        print_after: PrintAfter::All,
    };
    bnc::compile(g, mode, &opts).unwrap_or_else(|e| panic!("{e}"))
}

fn assert_round_trip(text: &str, when: &str) {
    let g = parse(text).unwrap_or_else(|e| panic!("{when}: {}: {e}\n{text}", e.span));
    assert_eq!(print(&g), text, "{when}: the round trip changed the IR");
}

/// The dumps the way `bnc compile --print-after-all` prints them.
fn dumps(steps: &[Step]) -> String {
    steps
        .iter()
        .map(|s| {
            let ir = s.ir.as_deref().unwrap_or("(no dump)\n");
            format!("// ----- IR after {} -----\n{ir}\n", s.pass)
        })
        .collect()
}

/// insta's `glob!` keeps its failure count in a process-wide stack, so a snapshot failing
/// on another test thread while a glob runs is charged to the glob (and does not fail its
/// own test); every snapshot test takes its turn instead.
fn glob_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[test]
fn parsed() {
    let _turn = glob_lock();
    insta::glob!("../models", "*.ir", |path| {
        let g = bnc::load_model(path).unwrap_or_else(|e| panic!("{e}"));
        insta::assert_snapshot!(print(&g));
    });
}

#[test]
fn inferred() {
    let _turn = glob_lock();
    insta::glob!("../models", "*.ir", |path| {
        let g = bnc::load_model(path).unwrap_or_else(|e| panic!("{e}"));
        let (g, _) = compile(g, Mode::Infer, Some(&["infer-shapes"]));
        insta::assert_snapshot!(print(&g));
    });
}

#[test]
fn lenet_bn_print_after_all_infer() {
    let _turn = glob_lock();
    let (_, steps) = compile(load("lenet_bn.ir"), Mode::Infer, None);
    insta::assert_snapshot!(dumps(&steps));
}

#[test]
fn lenet_bn_print_after_all_train() {
    let _turn = glob_lock();
    let (_, steps) = compile(load("lenet_bn.ir"), Mode::Train, None);
    insta::assert_snapshot!(dumps(&steps));
}

#[test]
fn every_model_round_trips_at_every_step() {
    let mut n = 0;
    for entry in std::fs::read_dir(models_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "ir") {
            continue;
        }
        n += 1;
        let name = path.display();
        let g = bnc::load_model(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_round_trip(&print(&g), &format!("{name} after parsing"));
        for mode in [Mode::Infer, Mode::Train] {
            let (g, steps) = compile(g.clone(), mode, None);
            assert!(!steps.is_empty());
            for s in &steps {
                let when = format!("{name} ({}) after {}", mode.name(), s.pass);
                assert_round_trip(s.ir.as_deref().unwrap(), &when);
            }
            assert_round_trip(&print(&g), &format!("{name} ({}) at the end", mode.name()));
        }
    }
    assert!(n >= 4, "only {n} models found");
}

/// The parameters of a model after shape inference, as `(name, shape)` in creation order.
fn params(name: &str) -> Vec<(String, Vec<usize>)> {
    let (g, _) = compile(load(name), Mode::Infer, Some(&["infer-shapes"]));
    g.params()
        .into_iter()
        .map(|id| {
            let node = g.node(id);
            assert_eq!(node.kind, NodeKind::Param);
            let ty = node.ty.as_ref().expect("typed after infer-shapes");
            let dims = ty.dims.iter().map(|d| d.fixed().expect("fixed")).collect();
            (node.name.clone(), dims)
        })
        .collect()
}

fn owned(list: &[(&str, &[usize])]) -> Vec<(String, Vec<usize>)> {
    list.iter()
        .map(|(n, s)| (n.to_string(), s.to_vec()))
        .collect()
}

/// LeNet-BN's parameters, named and laid out as PyTorch's `state_dict` would have them.
const LENET_BN_PARAMS: &[(&str, &[usize])] = &[
    ("conv1.weight", &[6, 1, 5, 5]),
    ("conv1.bias", &[6]),
    ("bn1.weight", &[6]),
    ("bn1.bias", &[6]),
    ("bn1.running_mean", &[6]),
    ("bn1.running_var", &[6]),
    ("conv2.weight", &[16, 6, 5, 5]),
    ("conv2.bias", &[16]),
    ("bn2.weight", &[16]),
    ("bn2.bias", &[16]),
    ("bn2.running_mean", &[16]),
    ("bn2.running_var", &[16]),
    ("fc1.weight", &[120, 256]),
    ("fc1.bias", &[120]),
    ("bn3.weight", &[120]),
    ("bn3.bias", &[120]),
    ("bn3.running_mean", &[120]),
    ("bn3.running_var", &[120]),
    ("fc2.weight", &[84, 120]),
    ("fc2.bias", &[84]),
    ("bn4.weight", &[84]),
    ("bn4.bias", &[84]),
    ("bn4.running_mean", &[84]),
    ("bn4.running_var", &[84]),
    ("fc3.weight", &[10, 84]),
    ("fc3.bias", &[10]),
];

#[test]
fn lenet_bn_has_pytorch_parameter_names_and_layouts() {
    assert_eq!(params("lenet_bn.ir"), owned(LENET_BN_PARAMS));
}

#[test]
fn lenet_has_the_same_parameters_minus_batch_norm() {
    let expected: Vec<_> = LENET_BN_PARAMS
        .iter()
        .filter(|(n, _)| !n.starts_with("bn"))
        .copied()
        .collect();
    assert_eq!(expected.len(), 10);
    assert_eq!(params("lenet.ir"), owned(&expected));
}

#[test]
fn compiled_lenet_bn_keeps_every_parameter_and_moves_redundant_biases_in_train_mode() {
    for mode in [Mode::Infer, Mode::Train] {
        let (g, _) = compile(load("lenet_bn.ir"), mode, None);
        let names: Vec<String> = g.params().iter().map(|&p| g.node(p).name.clone()).collect();
        let expected: Vec<String> = LENET_BN_PARAMS.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(names, expected, "{}", mode.name());
    }
    // In train mode redundant-bias moves the biases that a BatchNorm's batch mean cancels
    // (conv1, conv2, fc1, fc2 all feed one) to that BatchNorm's running-mean update, where
    // fuse-bn-train's batch_stats reads them; fc3's bias stays on fc3.
    let (g, _) = compile(load("lenet_bn.ir"), Mode::Train, None);
    let user_op = |param: &str| {
        let users = g.users(g.lookup(param).unwrap());
        users
            .iter()
            .map(|&(u, _)| g.node(u).op().unwrap().name())
            .collect::<Vec<_>>()
    };
    for bias in ["conv1.bias", "conv2.bias", "fc1.bias", "fc2.bias"] {
        assert_eq!(user_op(bias), ["batch_stats"], "{bias}");
    }
    assert_eq!(user_op("fc3.bias"), ["dense"]);
}

/// `docs/IR.md` shows LeNet-BN as written and as printed; both listings must be current.
#[test]
fn the_lenet_bn_listings_in_docs_ir_md_are_current() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/IR.md")).expect("docs/IR.md");
    let hand = std::fs::read_to_string(models_dir().join("lenet_bn.ir")).unwrap();
    assert!(
        doc.contains(&format!("```ir\n{hand}```")),
        "docs/IR.md does not show models/lenet_bn.ir as it is"
    );
    let (g, _) = compile(load("lenet_bn.ir"), Mode::Infer, Some(&["infer-shapes"]));
    let canonical = print(&g);
    assert!(
        doc.contains(&format!("```ir\n{canonical}```")),
        "docs/IR.md does not show the canonical form of lenet_bn.ir after infer-shapes:\n{canonical}"
    );
}
