//! `bnc compile`: the pass pipeline with its dumps, remarks and timings, then the IR,
//! a picture of the graph (DOT or SVG, with fused kernels and folded BatchNorms), kernel
//! statistics, or the generated code.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};

use bnc::compiler::lower::{lower, train::plan};
use bnc::compiler::passes::{Mode, PassManager, folded_into, inference_pipeline, lookup};
use bnc::compiler::text::{Annotations, Cluster, print, to_dot_annotated, to_svg};
use bnc::runtime::model::{CompileConfig, InferenceModel};
use bnc::{CompileOptions, PrintAfter};

use super::{ModeArg, Verbosity};

/// What `bnc compile` prints at the end.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Emit {
    /// The canonical text IR.
    Ir,
    /// A Graphviz DOT graph with fused kernels as clusters (render with `dot -Tsvg`).
    Dot,
    /// An SVG picture of the graph, laid out by bnc itself (no Graphviz needed).
    Svg,
    /// The kernel list with FLOPs, bytes and activation memory (inference).
    Stats,
    /// The Cranelift IR of every kernel (of the training step with --mode train).
    Clif,
    /// The machine code of every kernel, as Cranelift's disassembly (of the training step
    /// with --mode train).
    Asm,
}

/// Arguments of `bnc compile`.
#[derive(Args)]
pub struct CompileArgs {
    /// The model file (`*.ir`).
    file: PathBuf,
    /// Compile for inference or for training.
    #[arg(long, value_enum, default_value = "infer")]
    mode: ModeArg,
    /// Run these passes (comma-separated) instead of the mode's default pipeline.
    #[arg(long, value_delimiter = ',')]
    passes: Option<Vec<String>>,
    /// Inference: do not fold BatchNorm into conv2d/dense; run it as a scale and shift.
    #[arg(long, conflicts_with = "passes")]
    no_fold: bool,
    /// Print the IR after every pass.
    #[arg(long)]
    print_after_all: bool,
    /// Print the IR after every pass that changed it.
    #[arg(long, conflicts_with = "print_after_all")]
    print_after_change: bool,
    /// Print the IR after the named pass (repeatable).
    #[arg(long, value_name = "NAME")]
    print_after: Vec<String>,
    /// Print each pass's wall time to stderr.
    #[arg(long)]
    time_passes: bool,
    /// Explain the passes' decisions (which BatchNorms were folded, and why not), as `#`
    /// comments before the output.
    #[arg(long)]
    explain: bool,
    /// What to print at the end.
    #[arg(long, value_enum, default_value = "ir")]
    emit: Emit,
    /// Batch sizes for the activation memory in `--emit stats` (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,256")]
    batch: Vec<usize>,
}

/// Runs `bnc compile`.
pub fn run(a: CompileArgs, v: Verbosity) -> anyhow::Result<()> {
    let mode = a.mode.mode();
    for name in &a.print_after {
        lookup(name)?;
    }
    let print_after = if a.print_after_all {
        PrintAfter::All
    } else if a.print_after_change {
        PrintAfter::Change
    } else if !a.print_after.is_empty() {
        PrintAfter::Named(a.print_after.clone())
    } else {
        PrintAfter::Never
    };
    let file = a.file.display().to_string();
    let passes = match (&a.passes, mode, a.no_fold) {
        (Some(p), _, _) => Some(p.clone()),
        (None, Mode::Infer, true) => Some(
            inference_pipeline(false)
                .iter()
                .map(|s| s.to_string())
                .collect(),
        ),
        (None, _, _) => None,
    };
    let source = bnc::load_model(&a.file)?;
    let opts = CompileOptions {
        passes,
        print_after,
    };
    let (g, steps) = bnc::compile(source.clone(), mode, &opts).map_err(|e| e.in_file(&file))?;
    let mut out = String::new();
    for step in &steps {
        if let Some(ir) = &step.ir {
            out.push_str(&format!("// ----- IR after {} -----\n{ir}\n", step.pass));
        }
    }
    if a.explain {
        for step in &steps {
            for r in &step.remarks {
                out.push_str(&format!("# {}: {}: {}\n", step.pass, r.node, r.message));
            }
        }
    }
    if a.time_passes || v == Verbosity::Verbose {
        eprintln!("{:<18} {:>10}  changed", "pass", "time");
        for s in &steps {
            eprintln!(
                "{:<18} {:>8.3}ms  {}",
                s.pass,
                s.elapsed.as_secs_f64() * 1e3,
                s.changed
            );
        }
    }
    match a.emit {
        Emit::Ir => out.push_str(&print(&g)),
        Emit::Dot => out.push_str(&to_dot_annotated(
            &g,
            &annotations(&g, &source, &steps, mode),
        )),
        Emit::Svg => out.push_str(&to_svg(&g, &annotations(&g, &source, &steps, mode))),
        Emit::Clif | Emit::Asm if mode == Mode::Train && a.passes.is_none() => {
            out.push_str(
                &train_code(&source, a.emit == Emit::Asm)
                    .with_context(|| format!("{file}: cannot generate training code"))?,
            );
        }
        Emit::Stats | Emit::Clif | Emit::Asm => {
            if mode != Mode::Infer || a.passes.is_some() {
                bail!(
                    "--emit stats describes the default inference pipeline, and --emit clif and \
                     asm compile a default pipeline; drop --passes (and --mode train for stats)"
                );
            }
            let cfg = CompileConfig {
                threads: 1,
                fold: !a.no_fold,
                code_text: matches!(a.emit, Emit::Clif | Emit::Asm),
                ..CompileConfig::default()
            };
            let m = InferenceModel::compile(&source, &cfg)
                .with_context(|| format!("{file}: cannot generate code"))?;
            out.push_str(&match a.emit {
                Emit::Stats => stats(&m, &a.batch),
                _ => code(&m, a.emit == Emit::Asm),
            });
        }
    }
    print!("{out}");
    Ok(())
}

/// What the pictures add to the compiled graph `g`: the kernels its ops run in (from the
/// inference lowering, or the forward layers of the training plan) and, on each conv2d or
/// dense, the BatchNorm that `fold-bn` folded into it. A graph that the backends cannot
/// lower is drawn without kernels.
fn annotations(
    g: &bnc::Graph,
    source: &bnc::Graph,
    steps: &[bnc::Step],
    mode: Mode,
) -> Annotations {
    let mut ann = Annotations::default();
    for step in steps.iter().filter(|s| s.pass == "fold-bn") {
        for r in &step.remarks {
            if let Some(id) = folded_into(r).and_then(|p| g.lookup(p)) {
                ann.notes.insert(id, format!("+{} folded", r.node));
            }
        }
    }
    match mode {
        Mode::Infer => {
            if let Ok(p) = lower(g) {
                ann.clusters = p
                    .kernels
                    .into_iter()
                    .map(|k| Cluster {
                        name: k.name,
                        nodes: k.nodes,
                    })
                    .collect();
            }
        }
        Mode::Train => {
            // The training plan is built from the default train pipeline's output (as the
            // Trainer does); its forward layers are found in the compiled graph by name.
            let mut fused = source.clone();
            let planned = PassManager::for_mode(Mode::Train)
                .run(&mut fused, Mode::Train)
                .ok()
                .and_then(|_| plan(&fused).ok());
            for layer in planned.map(|p| p.layers).unwrap_or_default() {
                let nodes: Option<Vec<_>> = layer.name.split('+').map(|n| g.lookup(n)).collect();
                if let Some(nodes) = nodes {
                    ann.clusters.push(Cluster {
                        name: layer.name,
                        nodes,
                    });
                }
            }
        }
    }
    ann
}

fn stats(m: &InferenceModel, batches: &[usize]) -> String {
    let plan = m.plan();
    let mut s = format!(
        "{:<28} {:>12} {:>12}  spec\n",
        "kernel", "MFLOP/image", "KB/image"
    );
    for k in &plan.kernels {
        let flops = bnc::compiler::codegen::flops(&k.spec) as f64 / 1e6;
        let bytes = bnc::compiler::codegen::bytes(&k.spec) as f64 / 1e3;
        s.push_str(&format!(
            "{:<28} {flops:>12.4} {bytes:>12.2}  {:?}\n",
            k.name, k.spec
        ));
    }
    let st = plan.stats();
    s.push_str(&format!("kernels: {}\n", st.kernels));
    s.push_str(&format!(
        "flops per image: {} ({:.3} MFLOP)\n",
        st.flops_per_image,
        st.flops_per_image as f64 / 1e6
    ));
    s.push_str(&format!("bytes moved per image: {}\n", st.bytes_per_image));
    s.push_str(&format!(
        "activation buffers: {} (f32 per image: {:?})\n",
        plan.slots.len(),
        plan.slots
    ));
    for &b in batches {
        let kb = st.activation_bytes_per_image as f64 * b as f64 / 1024.0;
        s.push_str(&format!(
            "peak activation memory at batch {b}: {kb:.1} KiB\n"
        ));
    }
    s
}

/// The code of every training kernel, as the trainer compiles it: the default train
/// pipeline, its training plan, one kernel per layer and role.
fn train_code(source: &bnc::Graph, asm: bool) -> anyhow::Result<String> {
    let mut fused = source.clone();
    PassManager::for_mode(Mode::Train).run(&mut fused, Mode::Train)?;
    let named = plan(&fused)?.named_specs();
    let specs: Vec<_> = named.iter().map(|(_, s)| *s).collect();
    let jit = bnc::compiler::codegen::JitKernels::compile_with_text(&specs)?;
    let mut s = String::new();
    for (i, (name, _)) in named.iter().enumerate() {
        s.push_str(&format!("; ----- kernel {i}: {name} -----\n"));
        let text = if asm { jit.disasm(i) } else { jit.clif(i) };
        s.push_str(text.unwrap_or("; (no text)\n"));
        s.push('\n');
    }
    Ok(s)
}

fn code(m: &InferenceModel, asm: bool) -> String {
    let mut s = String::new();
    for (i, k) in m.plan().kernels.iter().enumerate() {
        s.push_str(&format!("; ----- kernel {i}: {} -----\n", k.name));
        let text = if asm {
            m.kernels().disasm(i).unwrap_or("; (no disassembly)\n")
        } else {
            m.kernels().clif(i).unwrap_or("; (no CLIF)\n")
        };
        s.push_str(text);
        s.push('\n');
    }
    s
}
