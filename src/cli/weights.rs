//! `bnc weights rename`: a safetensors file's tensors renamed with a name map, to move
//! weights between PyTorch `state_dict`s and bnc (see `docs/BATCHNORM.md`).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};

use bnc::runtime::rename::{Direction, NameMap, RenameError, rename_file};

/// What `bnc weights` does.
#[derive(Subcommand)]
pub enum WeightsCommand {
    /// Rename tensors with a map of `TORCH_NAME BNC_NAME` lines (PyTorch -> bnc, or back
    /// with --reverse). Going to bnc drops `num_batches_tracked`; going back adds it (0).
    Rename(RenameArgs),
}

/// A built-in name map.
#[derive(Clone, Copy, ValueEnum)]
pub enum Preset {
    /// d2l's LeNet-BN nn.Sequential (`0.weight`, `1.running_var`, ...) and models/lenet_bn.ir.
    D2lLenetBn,
}

impl Preset {
    fn text(self) -> (&'static str, &'static str) {
        match self {
            Preset::D2lLenetBn => (
                "models/d2l_lenet_bn.map",
                include_str!("../../models/d2l_lenet_bn.map"),
            ),
        }
    }
}

/// Arguments of `bnc weights rename`.
#[derive(Args)]
pub struct RenameArgs {
    /// The safetensors file to read.
    input: PathBuf,
    /// Where to write the renamed tensors.
    #[arg(short, long)]
    output: PathBuf,
    /// The name map: one `TORCH_NAME BNC_NAME` pair a line; a line naming a module
    /// (`1 bn1`) renames all its tensors (`1.weight` -> `bn1.weight`).
    #[arg(long, required_unless_present = "preset", conflicts_with = "preset")]
    map: Option<PathBuf>,
    /// A built-in map instead of --map.
    #[arg(long, value_enum)]
    preset: Option<Preset>,
    /// Rename from bnc's names back to PyTorch's.
    #[arg(long)]
    reverse: bool,
}

/// Runs `bnc weights`.
pub fn run(cmd: WeightsCommand) -> anyhow::Result<()> {
    match cmd {
        WeightsCommand::Rename(a) => rename(a),
    }
}

fn rename(a: RenameArgs) -> anyhow::Result<()> {
    let map = match (&a.map, a.preset) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            NameMap::parse(&text, &path.display().to_string())?
        }
        (None, Some(preset)) => {
            let (name, text) = preset.text();
            NameMap::parse(text, name)?
        }
        (None, None) => anyhow::bail!("give --map FILE or --preset NAME"),
    };
    let direction = if a.reverse {
        Direction::ToTorch
    } else {
        Direction::ToBnc
    };
    // Flattened to one message: the weights errors name the file and their cause already.
    let report = rename_file(&a.input, &a.output, &map, direction).map_err(|e| match e {
        RenameError::Weights(w) => anyhow::anyhow!("{w}"),
        other => anyhow::anyhow!("{}: {other}", a.input.display()),
    })?;
    let mut line = format!("renamed {} tensors", report.renamed);
    if !report.dropped.is_empty() {
        line += &format!(
            ", dropped {} num_batches_tracked (bnc keeps no batch counter)",
            report.dropped.len()
        );
    }
    if !report.added.is_empty() {
        line += &format!(
            ", added {} num_batches_tracked = 0 (PyTorch's strict load_state_dict needs them)",
            report.added.len()
        );
    }
    println!("{line}; wrote {}", a.output.display());
    if !a.reverse {
        println!(
            "running statistics copied unchanged; to keep training as PyTorch does, write \
             running_var=unbiased on each batch_norm (PyTorch momentum 0.1 = bnc momentum=0.9, \
             the default); see docs/BATCHNORM.md"
        );
    }
    Ok(())
}
