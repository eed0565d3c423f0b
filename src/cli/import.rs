//! `bnc import`: an ONNX file becomes a bnc model (`.ir`) and its weights (`.safetensors`).

use std::path::PathBuf;

use clap::Args;

use bnc::import::{ImportError, import_file};

/// Arguments of `bnc import`.
#[derive(Args)]
pub struct ImportArgs {
    /// The ONNX model (`*.onnx`).
    file: PathBuf,
    /// Where to write the model as bnc IR text.
    #[arg(short, long)]
    output: PathBuf,
    /// Where to write the weights (safetensors, bnc's names and layouts).
    #[arg(long)]
    weights: PathBuf,
}

/// Runs `bnc import`.
pub fn run(a: ImportArgs) -> anyhow::Result<()> {
    let source = a.file.display().to_string();
    // One message per error: file errors name their file, the others get the model's.
    let flat = |e: ImportError| match e {
        ImportError::Read { .. } | ImportError::Write { .. } | ImportError::Weights(_) => {
            anyhow::anyhow!("{e}")
        }
        other => anyhow::anyhow!("{source}: {other}"),
    };
    let imported = import_file(&a.file).map_err(flat)?;
    imported
        .save(&source, &a.output, &a.weights)
        .map_err(flat)?;
    let ops = imported
        .graph
        .node_ids()
        .into_iter()
        .filter(|&id| imported.graph.node(id).op().is_some())
        .count();
    println!(
        "imported {} ONNX nodes (opset {}) as {ops} bnc ops: wrote {} and {} tensors to {}",
        imported.nodes,
        imported.opset,
        a.output.display(),
        imported.params.len(),
        a.weights.display()
    );
    Ok(())
}
