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
    let mut p = Printer {
        g,
        mark,
        out: String::new(),
        done: HashSet::new(),
    };
    let order = g.topo_order().unwrap_or_else(|_| g.node_ids());
    for &id in &order {
        if matches!(g.node(id).kind, NodeKind::Input) {
            p.emit(id);
        }
    }
    // Parameter-only values are declared just before their first use, so that a folded
    // weight reads next to the op that uses it.
    for &id in &order {
        if !g.is_param_only(id) {
            p.emit(id);
        }
    }
    // Whatever nothing uses is still part of the graph until dead-code elimination.
    for &id in &order {
        p.emit(id);
    }
    let outs: Vec<&str> = g
        .outputs()
        .iter()
        .map(|&o| g.node(o).name.as_str())
        .collect();
    let _ = writeln!(p.out, "output {}", outs.join(", "));
    p.out
}

struct Printer<'g> {
    g: &'g Graph,
    mark: Option<NodeId>,
    out: String,
    done: HashSet<NodeId>,
}

impl Printer<'_> {
    /// Prints `id` after every parameter-only operand it has that is not printed yet.
    fn emit(&mut self, id: NodeId) {
        if self.done.contains(&id) {
            return;
        }
        let g = self.g;
        let operands = g.operands(id);
        for &o in &operands {
            if g.is_param_only(o) {
                self.emit(o);
            }
        }
        self.done.insert(id);
        let node = g.node(id);
        let ty = node
            .ty
            .as_ref()
            .map(|t| format!(": {t}"))
            .unwrap_or_default();
        let flag = if Some(id) == self.mark {
            "  # <-- here"
        } else {
            ""
        };
        let _ = match &node.kind {
            NodeKind::Input => writeln!(self.out, "input {}{ty}{flag}", node.name),
            NodeKind::Param => writeln!(self.out, "param {}{ty}{flag}", node.name),
            NodeKind::Op(op) => {
                let mut args: Vec<String> =
                    operands.iter().map(|&o| g.node(o).name.clone()).collect();
                args.extend(op.attrs().into_iter().map(|(k, v)| format!("{k}={v}")));
                writeln!(
                    self.out,
                    "{} = {}({}){ty}{flag}",
                    node.name,
                    op.name(),
                    args.join(", ")
                )
            }
        };
    }
}
