//! What a picture of a graph shows (`bnc compile --emit dot|svg`): each node's label and
//! kind, and the annotations that the graph alone does not carry: the kernels that fused
//! ops run in (from the lowering) and the BatchNorms folded into a conv2d or dense (from
//! `fold-bn`'s remarks). The DOT writer and the SVG renderer both draw from this.

use std::collections::HashMap;

use crate::ir::{Graph, NodeId, NodeKind};

/// A kernel drawn as a box around the ops fused into it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    /// The kernel's name (`conv1+act1+pool1`).
    pub name: String,
    /// The fused nodes, producer first.
    pub nodes: Vec<NodeId>,
}

/// What a picture adds to the graph.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Annotations {
    /// The kernels, each drawn around its nodes.
    pub clusters: Vec<Cluster>,
    /// A note appended to a node's name, as in `conv1 (+bn1 folded)`.
    pub notes: HashMap<NodeId, String>,
}

/// How a node is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// A graph input: an ellipse.
    Input,
    /// A parameter: a grey note.
    Param,
    /// An op: a box (highlighted when it carries a note).
    Op,
}

/// One node as drawn: its shape, its label lines and whether it is annotated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeLook {
    /// How it is drawn.
    pub shape: Shape,
    /// Name (with the note, if any), op, type.
    pub lines: Vec<String>,
    /// Whether a note was appended to the name.
    pub noted: bool,
}

/// The label lines and shape of `id`.
pub fn look(g: &Graph, id: NodeId, ann: &Annotations) -> NodeLook {
    let n = g.node(id);
    let ty = n.ty.as_ref().map(|t| t.to_string()).unwrap_or_default();
    let note = ann.notes.get(&id);
    let name = match note {
        Some(note) => format!("{} ({note})", n.name),
        None => n.name.clone(),
    };
    let (shape, mut lines) = match &n.kind {
        NodeKind::Input => (Shape::Input, vec![name]),
        NodeKind::Param => (Shape::Param, vec![name]),
        NodeKind::Op(op) => (Shape::Op, vec![name, op.name().to_string()]),
    };
    if !ty.is_empty() {
        lines.push(ty);
    }
    NodeLook {
        shape,
        lines,
        noted: note.is_some(),
    }
}

/// The cluster of each clustered node (its index in `ann.clusters`).
pub fn cluster_of(ann: &Annotations) -> HashMap<NodeId, usize> {
    ann.clusters
        .iter()
        .enumerate()
        .flat_map(|(i, c)| c.nodes.iter().map(move |&n| (n, i)))
        .collect()
}
