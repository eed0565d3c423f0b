//! Random-graph differential testing: models drawn from the whole op set, with BatchNorm in
//! every position (see `random_graphs/generator.rs`, rendered to text by `render.rs`), each checked five ways against the
//! reference interpreter:
//!
//! 1. the inference pipelines, with and without `fold-bn`: interpreter before vs after;
//! 2. the train pipeline (`redundant-bias`, `autodiff`, `dce`): loss, logits and running
//!    statistics before vs after (a bias `redundant-bias` moves into a BatchNorm's
//!    `input_bias` still shifts its running mean, so they agree whatever the bias);
//! 3. the JIT (`InferenceModel`, folded and unfolded) against the interpreter in infer mode;
//! 4. the JIT trainer (`Trainer`, one SGD step with learning rate 0) against the
//!    interpreter in train mode: loss, every gradient (`interp::gradients`) and the
//!    running statistics. The trainer compiles chains of layers only; it refuses other
//!    models with a typed error, which is counted, not failed, but it must accept every
//!    chain the generator builds (half of all cases);
//! 5. the static bounds check of every kernel compiled in 3 and 4 (`codegen::bounds`).
//!
//! The normal run checks 500 cases from a fixed seed. `BNC_RANDOM_GRAPH_CASES=5000` runs
//! more and `BNC_RANDOM_GRAPH_SEED=N` draws others; `--nocapture` prints the statistics
//! (cases, refusals by reason, BatchNorm positions covered). A failure prints the shrunk
//! model as an IR file (its first line, a comment, holds the batch, threads and seed of
//! the check) and writes it to `$CARGO_TARGET_TMPDIR/random_graph_failure.ir`; `bnc
//! compile` accepts it, and `BNC_RANDOM_GRAPH_REPLAY=FILE` reruns the check on it.
//!
//! Tolerance: `max |a - b| / max(1, |b|) <= 1e-4` for every compared tensor.

#[path = "random_graphs/generator.rs"]
mod generator;
#[path = "random_graphs/render.rs"]
mod render;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use proptest::test_runner::{Config, RngSeed, TestCaseError, TestError, TestRunner};

use bnc_compiler::Tensor;
use bnc_compiler::codegen::bounds;
use bnc_compiler::interp::{Params, SplitMix64, gradients, init_params, run, run_all};
use bnc_compiler::ir::{Graph, Op};
use bnc_compiler::lower::LowerError;
use bnc_compiler::passes::{
    Mode, PassError, PassManager, Step, default_pipeline, inference_pipeline,
};
use bnc_compiler::text::parse;
use bnc_runtime::model::{CompileConfig, InferenceModel};
use bnc_runtime::train::{TrainConfig, TrainError, Trainer};
use bnc_runtime::weights::ParamStore;

const TOL: f32 = 1e-4;

/// How one case went, for the statistics.
#[derive(Debug, Default)]
struct Outcome {
    /// The JIT inference backend refused the model (allowed only with `batch_norm_train`).
    jit_refused: bool,
    /// Why autodiff refused the model, if it did.
    autodiff_refused: Option<String>,
    /// Why the trainer refused the model, if it did.
    trainer_refused: Option<String>,
    /// The BatchNorm positions the model has.
    positions: BTreeSet<&'static str>,
    /// The ops the model has.
    ops: BTreeSet<&'static str>,
    /// Kernels checked by the bounds check.
    kernels: usize,
    /// The train-mode BatchNorm conditioning of values and of gradients on the batch (see
    /// `bn_condition`).
    condition: (f32, f32),
}

#[derive(Debug, Default)]
struct Stats {
    cases: usize,
    chains: usize,
    trained: usize,
    trained_with_bn: usize,
    jit_refused: usize,
    kernels: usize,
    /// Cases whose train-mode tolerance for values was widened for an ill-conditioned
    /// BatchNorm (see `bn_condition`).
    widened_values: usize,
    /// Cases whose tolerance for gradients was widened.
    widened_gradients: usize,
    autodiff_refusals: BTreeMap<String, usize>,
    trainer_refusals: BTreeMap<String, usize>,
    positions: BTreeMap<&'static str, usize>,
    ops: BTreeMap<&'static str, usize>,
}

/// `max |a - b| / max(1, |b|)`, infinite on a length mismatch or a NaN on one side only.
fn metric(a: &Tensor, b: &Tensor) -> f32 {
    if a.shape() != b.shape() {
        return f32::INFINITY;
    }
    let (Some(a), Some(b)) = (a.as_f32(), b.as_f32()) else {
        return f32::INFINITY;
    };
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            if x.is_nan() || y.is_nan() {
                if x.is_nan() && y.is_nan() {
                    0.0
                } else {
                    f32::INFINITY
                }
            } else {
                (x - y).abs() / y.abs().max(1.0)
            }
        })
        .fold(0.0, f32::max)
}

fn close(what: &str, got: &Tensor, want: &Tensor) -> Result<(), String> {
    close_within(what, got, want, TOL)
}

fn close_within(what: &str, got: &Tensor, want: &Tensor, tol: f32) -> Result<(), String> {
    let e = metric(got, want);
    if e <= tol {
        Ok(())
    } else {
        Err(format!(
            "{what}: error {e} > {tol}\n  got  {got:?}\n  want {want:?}"
        ))
    }
}

/// How much train-mode BatchNorms amplify rounding errors on this batch, forward and
/// backward. Rounding an input `x` of a BatchNorm to `f32` moves its normalized value
/// `xhat` by up to `f32::EPSILON * K`, with `K = max|x_c| / s_c` and `s_c = sqrt(var_c +
/// eps)` over the batch; the backward pass multiplies that by the gain `|gamma_c| / s_c`.
/// So the JIT (which computes in `f32`) and the interpreter (which rounds every op to
/// `f32`) legitimately differ by about `f32::EPSILON * K` in values and by about
/// `f32::EPSILON * K * max(1, gain)` in gradients downstream of a BatchNorm whose batch has
/// a large mean and a small spread (for a batch of two images, two nearly equal ones),
/// most visibly in gradients that cancel to zero exactly. Returns the largest `K` and the
/// largest `K * max(1, gain)` over the model's train-mode BatchNorms and channels. The
/// comparisons allow `TOL * max(1, factor / 100)`, which leaves a factor of 16 between
/// the tolerance and `f32::EPSILON * factor` for the error to accumulate over ops.
fn bn_condition(g: &Graph, values: &BTreeMap<String, Tensor>) -> (f32, f32) {
    let (mut k, mut k_grad) = (1.0f64, 1.0f64);
    for id in g.node_ids() {
        let Some(Op::BatchNormTrain(a)) = g.node(id).op() else {
            continue;
        };
        let Some(x) = values.get(&g.node(g.operands(id)[0]).name) else {
            continue;
        };
        let gammas = values
            .get(&g.node(g.operands(id)[1]).name)
            .and_then(Tensor::as_f32);
        let (shape, data) = (x.shape(), x.as_f32().unwrap_or(&[]));
        let (b, c) = (shape[0], shape[1]);
        let hw: usize = shape[2..].iter().product();
        for ch in 0..c {
            let vals: Vec<f64> = (0..b)
                .flat_map(|n| (0..hw).map(move |i| f64::from(data[(n * c + ch) * hw + i])))
                .collect();
            let m = vals.len().max(1) as f64;
            let mean = vals.iter().sum::<f64>() / m;
            let var = vals.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / m;
            let max = vals.iter().fold(0.0f64, |a, v| a.max(v.abs()));
            let spread = (var + a.eps).sqrt();
            let gamma = gammas
                .and_then(|t| t.get(ch))
                .map_or(1.0, |&v| f64::from(v).abs());
            k = k.max(max / spread);
            k_grad = k_grad.max(max / spread * (gamma / spread).max(1.0));
        }
    }
    (k as f32, k_grad as f32)
}

fn pipeline(g: &Graph, passes: &[&str], mode: Mode) -> Result<(Graph, Vec<Step>), PassError> {
    let mut g = g.clone();
    let steps = PassManager::new(passes)?.run(&mut g, mode)?;
    Ok((g, steps))
}

/// Parameters for the typed graph `g`: Xavier weights from `init_params`, and biases,
/// BatchNorm gammas, betas and running statistics drawn away from their defaults, so that
/// folding, scale/shift and `redundant-bias` have something to do.
fn params(g: &Graph, seed: u64) -> Params {
    let mut p = init_params(g, seed);
    let mut rng = SplitMix64::new(seed ^ 0x9e37_79b9_7f4a_7c15);
    for (name, t) in p.iter_mut() {
        let Some(v) = t.as_f32_mut() else { continue };
        let (owner, slot) = name.rsplit_once('.').unwrap_or(("", name));
        let bn_like = ["bn", "ss", "fold"].iter().any(|p| owner.starts_with(p));
        let range = match slot {
            "running_var" => Some((0.25, 2.0)),
            "running_mean" | "bias" | "b" => Some((-0.5, 0.5)),
            "weight" if bn_like => Some((0.5, 1.5)),
            "w" => Some((-0.5, 0.5)),
            _ => None,
        };
        if let Some((lo, hi)) = range {
            v.iter_mut().for_each(|x| *x = rng.uniform(lo, hi));
        }
    }
    p
}

/// The positions of the BatchNorms of typed graph `g` that the suite promises to cover.
fn bn_positions(g: &Graph) -> BTreeSet<&'static str> {
    let mut out = BTreeSet::new();
    let is_bn = |op: &Op| {
        matches!(
            op,
            Op::BatchNorm(_) | Op::BatchNormInfer(_) | Op::BatchNormTrain(_)
        )
    };
    let passes_through = |op: &Op| matches!(op, Op::Sigmoid | Op::Relu | Op::Tanh);
    for id in g.node_ids() {
        if !g.node(id).op().is_some_and(is_bn) {
            continue;
        }
        let producer = g.operands(id)[0];
        match g.node(producer).op() {
            Some(Op::Conv2d(_)) => out.insert("after conv2d"),
            Some(Op::Dense(_)) => out.insert("after dense"),
            _ => out.insert("after a non-linear op or the input"),
        };
        if g.users(producer).len() > 1 {
            out.insert("on a shared producer");
        }
        // Follow the value through activations to what consumes it.
        let mut frontier = vec![id];
        while let Some(v) = frontier.pop() {
            for (u, _) in g.users(v) {
                match g.node(u).op() {
                    Some(Op::Conv2d(_)) => {
                        out.insert("before conv2d");
                    }
                    Some(Op::Dense(_)) => {
                        out.insert("before dense");
                    }
                    Some(Op::Add) => {
                        out.insert("on a residual branch (add)");
                    }
                    Some(op) if passes_through(op) => frontier.push(u),
                    _ => {}
                }
            }
        }
    }
    out
}

/// The batch, threads and seed a case's IR file records in its first line.
fn header(text: &str) -> Option<(usize, usize, u64)> {
    let line = text.lines().next()?.strip_prefix("# random graph: ")?;
    let get = |key: &str| -> Option<u64> {
        let rest = line.split(key).nth(1)?;
        rest.trim()
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    Some((
        get("batch")? as usize,
        get("threads")? as usize,
        get("seed")?,
    ))
}

/// Runs every check on one model; `Err` describes the first disagreement.
fn check(text: &str, batch: usize, threads: usize, seed: u64) -> Result<Outcome, String> {
    let mut outcome = Outcome::default();
    let g =
        parse(text).map_err(|e| format!("the generated model does not parse: {}: {e}", e.span))?;
    let (typed, _) = pipeline(&g, &["infer-shapes"], Mode::Infer)
        .map_err(|e| format!("the generated model does not type: {e}"))?;
    outcome.positions = bn_positions(&typed);
    outcome.ops = typed
        .node_ids()
        .into_iter()
        .filter_map(|id| typed.node(id).op().map(Op::name))
        .collect();
    let params = params(&typed, seed);
    let store: ParamStore = params.clone().into_iter().collect();
    let x_ty = typed
        .node(typed.inputs()[0])
        .ty
        .clone()
        .expect("typed input");
    let shape = x_ty.concrete(batch);
    let mut rng = SplitMix64::new(seed.wrapping_add(1));
    let n: usize = shape.iter().product();
    let x = Tensor::new(shape, (0..n).map(|_| rng.uniform(-1.0, 1.0)).collect()).expect("shape");
    let logits_ty = typed
        .node(typed.outputs()[0])
        .ty
        .clone()
        .expect("typed output");
    let classes = logits_ty.concrete(batch)[1];
    let labels: Vec<i32> = (0..batch)
        .map(|_| rng.below(classes as u64) as i32)
        .collect();
    let inputs = HashMap::from([
        ("x".to_string(), x.clone()),
        (
            "labels".to_string(),
            Tensor::new_i32(vec![batch], labels.clone()).expect("labels"),
        ),
    ]);
    let interp = |g: &Graph, mode: Mode, p: &mut Params| {
        run(g, mode, &inputs, p)
            .map_err(|e| format!("the interpreter refused a {} graph: {e}", mode.name()))
    };

    // 1. The inference pipelines preserve the model's meaning.
    let reference = interp(&typed, Mode::Infer, &mut params.clone())?.outputs;
    for fold in [true, false] {
        let (opt, _) = pipeline(&g, inference_pipeline(fold), Mode::Infer)
            .map_err(|e| format!("inference pipeline (fold={fold}) failed: {e}"))?;
        let out = interp(&opt, Mode::Infer, &mut params.clone())?.outputs;
        for (i, (got, want)) in out.iter().zip(&reference).enumerate() {
            close(
                &format!("inference pipeline (fold={fold}), output {i}"),
                got,
                want,
            )?;
        }
    }

    // 3. The JIT in infer mode against the interpreter, with every kernel bounds-checked.
    let has_train_bn = outcome.ops.contains("batch_norm_train");
    for fold in [true, false] {
        let mut m = match InferenceModel::compile(
            &g,
            &CompileConfig {
                threads,
                fold,
                ..CompileConfig::default()
            },
        ) {
            Ok(m) => m,
            Err(_) if has_train_bn => {
                outcome.jit_refused = true;
                continue;
            }
            Err(e) => return Err(format!("the JIT refused the model (fold={fold}): {e}")),
        };
        let specs = m.plan().specs();
        bounds::check_specs(&specs).map_err(|e| format!("bounds (fold={fold}): {e}"))?;
        outcome.kernels += specs.len();
        m.bind(&store)
            .map_err(|e| format!("bind (fold={fold}): {e}"))?;
        let out = m
            .run_all(&x)
            .map_err(|e| format!("JIT run (fold={fold}): {e}"))?;
        for (i, (got, want)) in out.iter().zip(&reference).enumerate() {
            close(
                &format!("JIT (fold={fold}, threads={threads}), output {i}"),
                got,
                want,
            )?;
        }
    }

    // 2. The train pipeline: loss, logits and running statistics before and after.
    let (before, _) = pipeline(
        &g,
        &["infer-shapes", "lower-batch-norm", "attach-loss"],
        Mode::Train,
    )
    .map_err(|e| format!("attach-loss refused the model: {e}"))?;
    let mut after_forward = params.clone();
    let forward = run_all(&before, Mode::Train, &inputs, &mut after_forward)
        .map_err(|e| format!("the interpreter refused the train graph: {e}"))?;
    let (condition, grad_condition) = bn_condition(&before, &forward.values);
    let train_tol = TOL * (condition / 100.0).max(1.0);
    let grad_tol = TOL * (grad_condition / 100.0).max(1.0);
    outcome.condition = (condition, grad_condition);
    let full = match pipeline(&g, default_pipeline(Mode::Train), Mode::Train) {
        Ok(full) => full,
        Err(PassError::NotDifferentiable { op, .. }) => {
            // Hand-folded ops and batch_norm_infer have no gradient rule: a typed refusal.
            outcome.autodiff_refused = Some(format!("{op} has no gradient rule"));
            return Ok(outcome);
        }
        Err(e) => return Err(format!("the train pipeline failed: {e}")),
    };
    let reference_step =
        gradients(&g, &inputs, &params).map_err(|e| format!("interp::gradients: {e}"))?;
    close_within(
        "train pipeline, loss",
        &Tensor::scalar(reference_step.loss),
        &forward.outputs[0],
        train_tol,
    )?;
    close_within(
        "train pipeline, logits",
        &reference_step.logits,
        &forward.outputs[1],
        train_tol,
    )?;
    // redundant-bias moved the bias of each producer it names to the BatchNorm after it,
    // whose running mean still adds it: the running statistics are the model's own.
    for remark in full
        .1
        .iter()
        .filter(|s| s.pass == "redundant-bias")
        .flat_map(|s| &s.remarks)
    {
        let producer = before
            .lookup(&remark.node)
            .ok_or("remark names an unknown node")?;
        let [(bn, 0)] = before.users(producer)[..] else {
            return Err(format!(
                "redundant-bias removed the bias of `{}`, which has other users",
                remark.node
            ));
        };
        if !matches!(before.node(bn).op(), Some(Op::BatchNormTrain(_))) {
            return Err(format!(
                "redundant-bias removed the bias of `{}`, not before a batch_norm_train",
                remark.node
            ));
        }
    }
    let expected_running = &after_forward;
    for (name, got) in &reference_step.running {
        let want = expected_running
            .get(name)
            .ok_or_else(|| format!("no running statistic {name}"))?;
        close_within(&format!("train pipeline, {name}"), got, want, train_tol)?;
    }

    // 4. The JIT trainer against the interpreter: one step with learning rate 0.
    let cfg = TrainConfig {
        lr: 0.0,
        momentum: 0.0,
        weight_decay: 0.0,
        threads,
        batch,
    };
    let mut trainer = match Trainer::new(&g, store, &cfg) {
        Ok(t) => t,
        Err(TrainError::Lower(LowerError::Unsupported { op, hint, .. })) => {
            outcome.trainer_refused = Some(format!("{op}: {hint}"));
            return Ok(outcome);
        }
        Err(e) => return Err(format!("the trainer failed: {e}")),
    };
    let specs = trainer.plan().specs();
    bounds::check_specs(&specs).map_err(|e| format!("bounds (train): {e}"))?;
    outcome.kernels += specs.len();
    let step = trainer
        .step(x.as_f32().expect("f32"), &labels)
        .map_err(|e| format!("the trainer's step failed: {e}"))?;
    close_within(
        "trainer, loss",
        &Tensor::scalar(step.loss),
        &Tensor::scalar(reference_step.loss),
        train_tol,
    )?;
    let grads = trainer.gradients();
    for (name, got) in grads.iter() {
        match reference_step.grads.get(name) {
            Some(want) => {
                close_within(&format!("trainer, gradient of {name}"), got, want, grad_tol)?
            }
            None => {
                // A bias redundant-bias removed: the BatchNorm cancels it, so its gradient is 0.
                let zero = Tensor::zeros(got.shape());
                close_within(
                    &format!("trainer, gradient of the cancelled bias {name}"),
                    got,
                    &zero,
                    grad_tol,
                )?;
            }
        }
    }
    if let Some(missing) = reference_step.grads.keys().find(|n| grads.get(n).is_none()) {
        return Err(format!("the trainer has no gradient for {missing}"));
    }
    // The trainer keeps every bias, so its running statistics are the model's own.
    let trained = trainer.params();
    for name in reference_step.running.keys() {
        let got = trained
            .get(name)
            .ok_or_else(|| format!("the trainer has no {name}"))?;
        let want = after_forward
            .get(name)
            .ok_or_else(|| format!("no running statistic {name}"))?;
        close_within(&format!("trainer, {name}"), got, want, train_tol)?;
    }
    Ok(outcome)
}

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Reruns the check on a model file written by a failing run.
fn replay(path: &str) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let (batch, threads, seed) =
        header(&text).unwrap_or_else(|| panic!("{path}: no `# random graph: ...` first line"));
    match check(&text, batch, threads, seed) {
        Ok(outcome) => eprintln!("{path}: all checks pass: {outcome:?}"),
        Err(e) => panic!("{path}: {e}"),
    }
}

#[test]
fn random_graphs_agree_with_the_interpreter() {
    if let Ok(path) = std::env::var("BNC_RANDOM_GRAPH_REPLAY") {
        replay(&path);
        return;
    }
    let cases: u32 = env_or("BNC_RANDOM_GRAPH_CASES", 500);
    let seed: u64 = env_or("BNC_RANDOM_GRAPH_SEED", 0xb17c_5eed);
    let config = Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        max_shrink_iters: 4096,
        ..Config::default()
    };
    let stats = RefCell::new(Stats::default());
    let mut runner = TestRunner::new(config);
    let result = runner.run(&generator::case(), |case| {
        let outcome =
            check(&case.ir(), case.batch, case.threads, case.seed).map_err(TestCaseError::fail)?;
        let mut s = stats.borrow_mut();
        s.cases += 1;
        s.chains += usize::from(case.chain);
        s.jit_refused += usize::from(outcome.jit_refused);
        s.kernels += outcome.kernels;
        s.widened_values += usize::from(outcome.condition.0 > 100.0);
        s.widened_gradients += usize::from(outcome.condition.1 > 100.0);
        if let Some(r) = outcome.autodiff_refused {
            *s.autodiff_refusals.entry(r).or_default() += 1;
        } else if let Some(r) = outcome.trainer_refused {
            *s.trainer_refusals.entry(r).or_default() += 1;
        } else {
            s.trained += 1;
            s.trained_with_bn += usize::from(outcome.ops.contains("batch_norm"));
        }
        for p in outcome.positions {
            *s.positions.entry(p).or_default() += 1;
        }
        for op in outcome.ops {
            *s.ops.entry(op).or_default() += 1;
        }
        Ok(())
    });
    if let Err(TestError::Fail(reason, case)) = &result {
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("random_graph_failure.ir");
        let text = case.ir();
        let saved = std::fs::write(&path, &text).map_or_else(
            |e| format!("(could not write {}: {e})", path.display()),
            |()| format!("written to {}", path.display()),
        );
        panic!(
            "{reason}\n\nminimal failing model, {saved}; rerun with \
             BNC_RANDOM_GRAPH_REPLAY={}:\n\n{text}",
            path.display()
        );
    }
    result.expect("the random-graph run");
    let s = stats.into_inner();
    eprintln!("random graphs: {s:#?}");
    // The suite must really exercise what it claims: the JIT trainer on many models (every
    // chain, half of the cases), and each BatchNorm position and op many times.
    if cases >= 500 {
        assert!(
            s.trained * 2 >= s.cases * 9 / 10,
            "the trainer ran on only {} of {} cases",
            s.trained,
            s.cases
        );
        assert!(
            s.trained_with_bn * 4 >= s.cases,
            "only {} trained models have a BatchNorm",
            s.trained_with_bn
        );
        for position in [
            "after conv2d",
            "after dense",
            "after a non-linear op or the input",
            "before conv2d",
            "before dense",
            "on a residual branch (add)",
            "on a shared producer",
        ] {
            let n = s.positions.get(position).copied().unwrap_or(0);
            assert!(n * 50 >= s.cases, "BatchNorm {position}: only {n} cases");
        }
        // Backward ops and the loss come with every train-mode check (autodiff adds them),
        // and so do the fused BatchNorm ops (fuse-bn-train makes them).
        let added_by_training = |name: &str| {
            name.contains("_grad")
                || matches!(
                    name,
                    "unflatten"
                        | "softmax_cross_entropy"
                        | "batch_stats"
                        | "batch_norm_apply"
                        | "select_row"
                )
        };
        let missing: Vec<&str> = bnc_compiler::ir::OPS
            .iter()
            .map(|o| o.name)
            .filter(|name| !added_by_training(name) && !s.ops.contains_key(name))
            .collect();
        assert!(
            missing.is_empty(),
            "forward ops never generated: {missing:?}"
        );
    }
}
