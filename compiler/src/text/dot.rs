//! Graphviz DOT output of a graph (`bnc compile --emit dot`): ops as boxes labelled with
//! name, op and type; inputs as ellipses; parameters as small grey notes.

use std::fmt::Write;

use crate::ir::{Graph, NodeKind};

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Renders the graph as a DOT digraph.
pub fn to_dot(g: &Graph) -> String {
    let mut out = String::from(
        "digraph bnc {\n  rankdir=TB;\n  node [fontname=\"monospace\", fontsize=10];\n",
    );
    let order = g.topo_order().unwrap_or_else(|_| g.node_ids());
    for &id in &order {
        let n = g.node(id);
        let ty = n.ty.as_ref().map(|t| t.to_string()).unwrap_or_default();
        let (shape, label) = match &n.kind {
            NodeKind::Input => ("ellipse", format!("{}\\n{}", escape(&n.name), ty)),
            NodeKind::Param => ("note", format!("{}\\n{}", escape(&n.name), ty)),
            NodeKind::Op(op) => (
                "box",
                format!("{}\\n{}\\n{}", escape(&n.name), op.name(), ty),
            ),
        };
        let style = if matches!(n.kind, NodeKind::Param) {
            ", color=grey, fontcolor=grey40"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "  n{} [shape={shape}, label=\"{label}\"{style}];",
            id_num(id)
        );
    }
    for &id in &order {
        for (slot, o) in g.operand_slots(id) {
            let _ = writeln!(
                out,
                "  n{} -> n{} [label=\"{slot}\"];",
                id_num(o),
                id_num(id)
            );
        }
    }
    for (i, &o) in g.outputs().iter().enumerate() {
        let _ = writeln!(
            out,
            "  out{i} [shape=plaintext, label=\"output {i}\"];\n  n{} -> out{i};",
            id_num(o)
        );
    }
    out.push_str("}\n");
    out
}

fn id_num(id: crate::ir::NodeId) -> String {
    id.to_string().trim_start_matches('%').to_string()
}
