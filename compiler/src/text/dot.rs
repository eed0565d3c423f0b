//! Graphviz DOT output of a graph (`bnc compile --emit dot`): ops as boxes labelled with
//! name, op and type; inputs as ellipses; parameters as small grey notes; each fused kernel
//! as a `subgraph cluster_*` around its ops; annotated nodes (a conv2d with a BatchNorm
//! folded into it) filled and named `conv1 (+bn1 folded)`.

use std::fmt::Write;

use super::picture::{Annotations, Shape, look};
use crate::ir::{Graph, NodeId};

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Renders the graph as a DOT digraph without annotations.
pub fn to_dot(g: &Graph) -> String {
    to_dot_annotated(g, &Annotations::default())
}

/// Renders the graph as a DOT digraph with its kernels as clusters and its notes.
pub fn to_dot_annotated(g: &Graph, ann: &Annotations) -> String {
    let mut out = String::from(
        "digraph bnc {\n  rankdir=TB;\n  node [fontname=\"monospace\", fontsize=10];\n",
    );
    let order = g.topo_order().unwrap_or_else(|_| g.node_ids());
    for &id in &order {
        let l = look(g, id, ann);
        let label: Vec<String> = l.lines.iter().map(|s| escape(s)).collect();
        let (shape, style) = match l.shape {
            Shape::Input => ("ellipse", ""),
            Shape::Param => ("note", ", color=grey, fontcolor=grey40"),
            Shape::Op if l.noted => ("box", ", style=filled, fillcolor=\"#fff3c4\""),
            Shape::Op => ("box", ""),
        };
        let _ = writeln!(
            out,
            "  n{} [shape={shape}, label=\"{}\"{style}];",
            id_num(id),
            label.join("\\n")
        );
    }
    for (i, c) in ann.clusters.iter().enumerate() {
        let _ = writeln!(
            out,
            "  subgraph cluster_{i} {{\n    label=\"{}\"; style=\"rounded,filled\"; fillcolor=\"#eef4fb\"; color=\"#6b8cae\"; fontname=\"monospace\"; fontsize=9;",
            escape(&c.name)
        );
        for &n in &c.nodes {
            let _ = writeln!(out, "    n{};", id_num(n));
        }
        out.push_str("  }\n");
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

fn id_num(id: NodeId) -> String {
    id.to_string().trim_start_matches('%').to_string()
}
