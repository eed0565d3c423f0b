//! An SVG picture of a graph (`bnc compile --emit svg`), drawn without Graphviz: the
//! layered layout of `layout.rs`, boxes for ops, ellipses for inputs, grey notes for
//! parameters, kernels as rounded rectangles around their fused ops, and folded
//! BatchNorms in the name of the op they were folded into (`conv1 (+bn1 folded)`).
//! Every node is a `<g>` whose `<title>` is its name, so a browser shows it on hover.

use std::collections::HashSet;
use std::fmt::Write;

use super::layout::{Item, LABEL_H, PAD, layout};
use super::picture::{Annotations, Shape, cluster_of, look};
use crate::DType;
use crate::ir::{Graph, NodeKind};

/// Font size of labels, in pixels.
const FONT: f64 = 11.0;
/// Advance of one monospace character at that size (DejaVu Sans Mono: 0.602 em).
const CHAR_W: f64 = 0.61 * FONT;
/// Height of one label line.
const LINE_H: f64 = 14.0;
/// Font size of a kernel's name.
const LABEL_FONT: f64 = 10.0;

/// Escapes text for XML content and attribute values.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// What one drawn box is.
enum Drawn {
    Node(Shape, Vec<String>, bool, String),
    Output(String),
}

/// Renders the graph as a standalone SVG document.
pub fn to_svg(g: &Graph, ann: &Annotations) -> String {
    let order = g.topo_order().unwrap_or_else(|_| g.node_ids());
    let index: std::collections::HashMap<_, _> =
        order.iter().enumerate().map(|(i, &id)| (id, i)).collect();
    let clusters = cluster_of(ann);
    // Anchored: reachable from an image input (any input but integer labels).
    let mut anchored: HashSet<usize> = HashSet::new();
    for &id in &order {
        let n = g.node(id);
        let from_image = matches!(n.kind, NodeKind::Input)
            && n.ty.as_ref().is_none_or(|t| t.dtype != DType::I32);
        let from_anchor = g.operands(id).iter().any(|o| anchored.contains(&index[o]));
        if from_image || from_anchor {
            anchored.insert(index[&id]);
        }
    }
    let mut items = Vec::new();
    let mut drawn = Vec::new();
    for &id in &order {
        let l = look(g, id, ann);
        let chars = l.lines.iter().map(|s| s.chars().count()).max().unwrap_or(1);
        let mut width = chars as f64 * CHAR_W + 16.0;
        if l.shape == Shape::Input {
            width *= 1.25;
        }
        items.push(Item {
            width,
            height: l.lines.len() as f64 * LINE_H + 10.0,
            anchored: anchored.contains(&index[&id]),
            cluster: clusters.get(&id).copied(),
        });
        drawn.push(Drawn::Node(
            l.shape,
            l.lines,
            l.noted,
            g.node(id).name.clone(),
        ));
    }
    let mut edges: Vec<(usize, usize)> = Vec::new();
    for &id in &order {
        for o in g.operands(id) {
            edges.push((index[&o], index[&id]));
        }
    }
    for (i, o) in g.outputs().iter().enumerate() {
        let label = format!("output {i}");
        items.push(Item {
            width: label.len() as f64 * CHAR_W + 8.0,
            height: LINE_H + 4.0,
            anchored: true,
            cluster: None,
        });
        drawn.push(Drawn::Output(label));
        edges.push((index[o], items.len() - 1));
    }
    let lay = layout(&items, &edges);

    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w:.0}\" height=\"{h:.0}\" viewBox=\"0 0 {w:.0} {h:.0}\" font-family=\"DejaVu Sans Mono, monospace\" font-size=\"{FONT}\">",
        w = lay.width.ceil(),
        h = lay.height.ceil()
    );
    s.push_str(
        "<defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"7\" markerHeight=\"7\" orient=\"auto\"><path d=\"M0,0 L10,5 L0,10 z\" fill=\"#555\"/></marker></defs>\n",
    );
    s.push_str("<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n");
    // Cluster boxes under the edges; their labels (on a patch of the box's colour) over.
    let boxes: Vec<(&str, [f64; 4])> = ann
        .clusters
        .iter()
        .zip(&lay.clusters)
        .filter(|(_, b)| b[0].is_finite())
        .map(|(c, b)| (c.name.as_str(), *b))
        .collect();
    for (name, b) in &boxes {
        let _ = writeln!(
            s,
            "<rect class=\"kernel\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" rx=\"8\" fill=\"#eef4fb\" stroke=\"#6b8cae\"><title>kernel {}</title></rect>",
            b[0],
            b[1],
            b[2] - b[0],
            b[3] - b[1],
            xml_escape(name)
        );
    }
    for pts in &lay.edges {
        let mut d = format!("M{:.1},{:.1}", pts[0].0, pts[0].1);
        for w in pts.windows(2) {
            let (p, q) = (w[0], w[1]);
            let my = (p.1 + q.1) / 2.0;
            let _ = write!(
                d,
                " C{:.1},{my:.1} {:.1},{my:.1} {:.1},{:.1}",
                p.0, q.0, q.0, q.1
            );
        }
        let _ = writeln!(
            s,
            "<path d=\"{d}\" fill=\"none\" stroke=\"#555\" stroke-width=\"1\" marker-end=\"url(#arrow)\"/>"
        );
    }
    for (name, b) in &boxes {
        let w = name.chars().count() as f64 * LABEL_FONT * 0.61 + 6.0;
        let _ = writeln!(
            s,
            "<g class=\"kernel-label\"><rect x=\"{:.1}\" y=\"{:.1}\" width=\"{w:.1}\" height=\"{:.1}\" fill=\"#eef4fb\"/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"{LABEL_FONT}\" fill=\"#3d5a80\">{}</text></g>",
            b[0] + PAD - 3.0,
            b[1] + 2.0,
            LABEL_H - 1.0,
            b[0] + PAD,
            b[1] + LABEL_H - 2.0,
            xml_escape(name)
        );
    }
    for ((d, it), &(cx, cy)) in drawn.iter().zip(&items).zip(&lay.centers) {
        let (x0, y0) = (cx - it.width / 2.0, cy - it.height / 2.0);
        match d {
            Drawn::Output(label) => {
                let _ = writeln!(
                    s,
                    "<text x=\"{cx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                    cy + FONT * 0.35,
                    xml_escape(label)
                );
            }
            Drawn::Node(shape, lines, noted, name) => {
                let (outline, text_fill) = match shape {
                    Shape::Input => (
                        format!(
                            "<ellipse cx=\"{cx:.1}\" cy=\"{cy:.1}\" rx=\"{:.1}\" ry=\"{:.1}\" fill=\"#e8f5e9\" stroke=\"#2e7d32\"/>",
                            it.width / 2.0,
                            it.height / 2.0
                        ),
                        "#000",
                    ),
                    Shape::Param => {
                        let (x1, y1) = (x0 + it.width, y0 + it.height);
                        let fold = 7.0;
                        (
                            format!(
                                "<path d=\"M{x0:.1},{y0:.1} L{:.1},{y0:.1} L{x1:.1},{:.1} L{x1:.1},{y1:.1} L{x0:.1},{y1:.1} Z\" fill=\"#fafafa\" stroke=\"#9e9e9e\"/>",
                                x1 - fold,
                                y0 + fold
                            ),
                            "#666",
                        )
                    }
                    Shape::Op => (
                        format!(
                            "<rect x=\"{x0:.1}\" y=\"{y0:.1}\" width=\"{:.1}\" height=\"{:.1}\" rx=\"2\" fill=\"{}\" stroke=\"#333\"/>",
                            it.width,
                            it.height,
                            if *noted { "#fff3c4" } else { "#ffffff" }
                        ),
                        "#000",
                    ),
                };
                let _ = write!(
                    s,
                    "<g class=\"node\"><title>{}</title>{outline}<text text-anchor=\"middle\" fill=\"{text_fill}\">",
                    xml_escape(name)
                );
                let first = cy - (lines.len() as f64 - 1.0) * LINE_H / 2.0 + FONT * 0.35;
                for (i, line) in lines.iter().enumerate() {
                    let weight = if i == 0 { " font-weight=\"bold\"" } else { "" };
                    let _ = write!(
                        s,
                        "<tspan x=\"{cx:.1}\" y=\"{:.1}\"{weight}>{}</tspan>",
                        first + i as f64 * LINE_H,
                        xml_escape(line)
                    );
                }
                s.push_str("</text></g>\n");
            }
        }
    }
    s.push_str("</svg>\n");
    s
}
