//! Graph to canonical text: inputs first, then ops in a stable topological order, each
//! parameter declared on the line before its first user, every attribute and every known
//! type written out, and one `output` line. `parse(print(g))` prints the same text again.

use std::collections::HashSet;
use std::fmt::Write;

use crate::ir::{Graph, NodeId, NodeKind};

/// Prints the canonical form of a graph.
pub fn print(g: &Graph) -> String {
    print_marked(g, None)
}

/// Prints the canonical form with `mark` flagged by a trailing comment (verifier dumps).
pub fn print_marked(g: &Graph, mark: Option<NodeId>) -> String {
    let mut out = String::new();
    let order = g.topo_order().unwrap_or_else(|_| g.node_ids());
    let mut declared: HashSet<NodeId> = HashSet::new();
    let ty = |id: NodeId| {
        g.node(id)
            .ty
            .as_ref()
            .map(|t| format!(": {t}"))
            .unwrap_or_default()
    };
    let flag = |id: NodeId| if Some(id) == mark { "  # <-- here" } else { "" };
    for &id in &order {
        if matches!(g.node(id).kind, NodeKind::Input) {
            let _ = writeln!(out, "input {}{}{}", g.node(id).name, ty(id), flag(id));
        }
    }
    for &id in &order {
        let node = g.node(id);
        let NodeKind::Op(op) = &node.kind else {
            continue;
        };
        let operands = g.operands(id);
        for &o in &operands {
            if matches!(g.node(o).kind, NodeKind::Param) && declared.insert(o) {
                let _ = writeln!(out, "param {}{}{}", g.node(o).name, ty(o), flag(o));
            }
        }
        let mut args: Vec<String> = operands.iter().map(|&o| g.node(o).name.clone()).collect();
        args.extend(op.attrs().into_iter().map(|(k, v)| format!("{k}={v}")));
        let _ = writeln!(
            out,
            "{} = {}({}){}{}",
            node.name,
            op.name(),
            args.join(", "),
            ty(id),
            flag(id)
        );
    }
    // Parameters nothing uses are still part of the graph until dead-code elimination.
    for &id in &order {
        if matches!(g.node(id).kind, NodeKind::Param) && !declared.contains(&id) {
            let _ = writeln!(out, "param {}{}{}", g.node(id).name, ty(id), flag(id));
        }
    }
    let outs: Vec<&str> = g
        .outputs()
        .iter()
        .map(|&o| g.node(o).name.as_str())
        .collect();
    let _ = writeln!(out, "output {}", outs.join(", "));
    out
}
