//! `bnc init` (fresh weights) and `bnc run` (test-set accuracy and speed).

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::Args;

use bnc::compiler::Tensor;
use bnc::compiler::interp::init_params;
use bnc::compiler::passes::{Mode, PassManager};
use bnc::runtime::data::{DEFAULT_DIR, Split, load};
use bnc::runtime::model::{CompileConfig, InferenceModel};
use bnc::runtime::weights::ParamStore;

use super::{ExecArgs, Verbosity};

/// Parses a model and infers its shapes (what `init` needs to size parameters).
pub fn typed_model(file: &Path) -> anyhow::Result<bnc::Graph> {
    let name = file.display().to_string();
    let mut g = bnc::load_model(file)?;
    PassManager::new(&["infer-shapes"])?
        .run(&mut g, Mode::Infer)
        .map_err(|e| bnc::Error::from(e).in_file(&name))?;
    Ok(g)
}

/// Runs `bnc init`.
pub fn init(file: &Path, seed: u64, output: &Path, v: Verbosity) -> anyhow::Result<()> {
    let g = typed_model(file)?;
    let store: ParamStore = init_params(&g, seed).into_iter().collect();
    store.save(output)?;
    if v.details() {
        for (name, t) in store.iter() {
            eprintln!("{name:<24} {:?}", t.shape());
        }
    }
    if v.notes() {
        eprintln!("wrote {} tensors to {}", store.len(), output.display());
    }
    Ok(())
}

/// Arguments of `bnc run`.
#[derive(Args)]
pub struct RunArgs {
    /// The model file (`*.ir`).
    file: PathBuf,
    /// The weights (safetensors, PyTorch names and layouts).
    #[arg(long, value_name = "W.safetensors")]
    weights: PathBuf,
    /// The Fashion-MNIST directory.
    #[arg(long, default_value = DEFAULT_DIR)]
    data: PathBuf,
    #[command(flatten)]
    exec: ExecArgs,
    /// Write the logits as tensor `logits` f32[10000,10] in test-set order.
    #[arg(long, value_name = "logits.safetensors")]
    save_outputs: Option<PathBuf>,
    /// Print one JSON object {"test_accuracy", "images_per_s"} to stdout instead of text.
    #[arg(long)]
    json: bool,
}

/// Runs `bnc run`.
pub fn run(a: RunArgs, v: Verbosity) -> anyhow::Result<()> {
    let file = a.file.display().to_string();
    let g = bnc::load_model(&a.file)?;
    let cfg = CompileConfig {
        threads: a.exec.threads as usize,
        fold: !a.exec.no_fold,
        ..CompileConfig::default()
    };
    let mut model =
        InferenceModel::compile(&g, &cfg).with_context(|| format!("{file}: cannot compile"))?;
    let weights = ParamStore::load(&a.weights)?;
    let bind = Instant::now();
    model
        .bind(&weights)
        .with_context(|| format!("{}: cannot bind the weights", a.weights.display()))?;
    if v.details() {
        eprintln!(
            "parse to native code: {:.2} ms; bind (fold in f64, pack): {:.2} ms",
            model.compile_time().as_secs_f64() * 1e3,
            bind.elapsed().as_secs_f64() * 1e3
        );
        for k in &model.plan().kernels {
            eprintln!("kernel {:<28} {:?}", k.name, k.spec);
        }
    }
    let test = load(&a.data, Split::Test)?;
    let batch = NonZeroUsize::new(a.exec.batch as usize).unwrap_or(NonZeroUsize::MIN);
    let mut logits = Vec::with_capacity(test.len() * 10);
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    let mut batches = test.batches(batch);
    let mut correct = 0usize;
    let mut classes = 0;
    let start = Instant::now();
    while let Some(b) = batches.next_into(&mut images, &mut labels) {
        let x = Tensor::new(
            vec![b, 1, test.rows(), test.cols()],
            std::mem::take(&mut images),
        )
        .context("batch shape")?;
        let y = model.run(&x)?;
        images = x.into_f32().map(|(_, d)| d).unwrap_or_default();
        classes = y.shape()[1];
        let y = y.as_f32().unwrap_or(&[]);
        for (row, &label) in y.chunks(classes.max(1)).zip(&labels) {
            let arg = row
                .iter()
                .enumerate()
                .fold(0, |best, (i, &v)| if v > row[best] { i } else { best });
            correct += usize::from(arg as i32 == label);
        }
        logits.extend_from_slice(y);
    }
    let secs = start.elapsed().as_secs_f64();
    let accuracy = correct as f64 / test.len().max(1) as f64;
    let ips = test.len() as f64 / secs.max(1e-9);
    if let Some(path) = &a.save_outputs {
        let mut out = ParamStore::new();
        out.insert(
            "logits",
            Tensor::new(vec![test.len(), classes], logits).context("logits shape")?,
        );
        out.save(path)?;
    }
    if a.json {
        println!(
            "{}",
            serde_json::json!({ "test_accuracy": accuracy, "images_per_s": ips })
        );
    } else {
        println!("test accuracy: {accuracy:.4}");
        println!(
            "images/s: {ips:.0} ({} images, batch {}, {} threads)",
            test.len(),
            a.exec.batch,
            a.exec.threads
        );
    }
    Ok(())
}
