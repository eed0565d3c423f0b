//! A layered layout for pictures of graphs (`bnc compile --emit svg`): the Sugiyama recipe
//! cut down to what model graphs need (mostly chains, a few branches, and small trees of
//! parameters hanging off the ops that read them).
//!
//! 1. Ranks: a node reachable from the anchor (the graph's image input) sits at its
//!    longest path from the sources; any other node (a parameter, a parameter-only
//!    expression, the labels input) as late as possible, one rank above its first user,
//!    so that it is drawn beside the op that reads it.
//! 2. An edge spanning several ranks gets a virtual point on every rank it crosses.
//! 3. Order within each rank: barycenter sweeps down and up, keeping the order with the
//!    fewest crossings.
//! 4. x: the priority method. Within a rank, nodes on the anchor's paths are placed first
//!    (those in a cluster before the others) where their neighbours want them, so the main
//!    chain stays straight and a cluster's ops stand in one column; then virtual points,
//!    then the rest, each as close to its wish as the nodes already placed allow. Nodes of
//!    different clusters keep room for the cluster boxes between them.
//!
//! The layout never fails: a cycle (which the verifier rules out) only gives a worse picture.

use std::collections::VecDeque;

/// Horizontal room between neighbouring boxes.
const GAP_X: f64 = 20.0;
/// Vertical room between ranks.
const GAP_Y: f64 = 44.0;
/// Room between a cluster's members and its box.
pub const PAD: f64 = 9.0;
/// Height of a cluster's label, above its first member.
pub const LABEL_H: f64 = 14.0;
/// Room around the picture.
const MARGIN: f64 = 12.0;
/// Width reserved for an edge's virtual point.
const VIRTUAL_W: f64 = 6.0;

/// A box to place.
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    /// Width.
    pub width: f64,
    /// Height.
    pub height: f64,
    /// Whether the node is reachable from the anchor (placed by longest path, first).
    pub anchored: bool,
    /// The cluster the node is drawn in, if any.
    pub cluster: Option<usize>,
}

/// Where everything goes; coordinates grow right and down from the top-left corner.
#[derive(Clone, Debug, PartialEq)]
pub struct Layout {
    /// The centre of every item.
    pub centers: Vec<(f64, f64)>,
    /// The rank of every item.
    pub ranks: Vec<usize>,
    /// Every edge as a polyline from the source's bottom to the target's top.
    pub edges: Vec<Vec<(f64, f64)>>,
    /// Every cluster's box: left, top, right, bottom (label included).
    pub clusters: Vec<[f64; 4]>,
    /// The picture's width.
    pub width: f64,
    /// The picture's height.
    pub height: f64,
}

/// Node data of the layered graph: items first, then virtual points.
struct Layered {
    rank: Vec<usize>,
    width: Vec<f64>,
    height: Vec<f64>,
    priority: Vec<u8>,
    anchored: Vec<bool>,
    cluster: Vec<Option<usize>>,
    preds: Vec<Vec<usize>>,
    succs: Vec<Vec<usize>>,
}

impl Layered {
    fn push(&mut self, rank: usize, w: f64, h: f64, prio: u8, anch: bool, c: Option<usize>) {
        self.rank.push(rank);
        self.width.push(w);
        self.height.push(h);
        self.priority.push(prio);
        self.anchored.push(anch);
        self.cluster.push(c);
        self.preds.push(Vec::new());
        self.succs.push(Vec::new());
    }

    /// Minimum distance between the centres of `a` and its right neighbour `b`.
    fn sep(&self, a: usize, b: usize) -> f64 {
        let (ca, cb) = (self.cluster[a], self.cluster[b]);
        let apart = |c: Option<usize>| if c.is_some() && ca != cb { PAD } else { 0.0 };
        self.width[a] / 2.0 + self.width[b] / 2.0 + GAP_X + apart(ca) + apart(cb)
    }
}

/// Kahn's topological order, items in index order where free; nodes on a cycle come last.
fn topo(n: usize, edges: &[(usize, usize)]) -> Vec<usize> {
    let mut indeg = vec![0usize; n];
    let mut succs = vec![Vec::new(); n];
    for &(u, v) in edges {
        indeg[v] += 1;
        succs[u].push(v);
    }
    let mut queue: VecDeque<usize> = (0..n).filter(|&v| indeg[v] == 0).collect();
    let mut order = Vec::with_capacity(n);
    let mut seen = vec![false; n];
    while let Some(u) = queue.pop_front() {
        order.push(u);
        seen[u] = true;
        for &v in &succs[u] {
            indeg[v] -= 1;
            if indeg[v] == 0 {
                queue.push_back(v);
            }
        }
    }
    order.extend((0..n).filter(|&v| !seen[v]));
    order
}

fn ranks(items: &[Item], edges: &[(usize, usize)]) -> Vec<usize> {
    let n = items.len();
    let order = topo(n, edges);
    let (mut preds, mut succs) = (vec![Vec::new(); n], vec![Vec::new(); n]);
    for &(u, v) in edges {
        preds[v].push(u);
        succs[u].push(v);
    }
    let mut rank = vec![0usize; n];
    for &v in &order {
        rank[v] = preds[v].iter().map(|&u| rank[u] + 1).max().unwrap_or(0);
    }
    for &v in order.iter().rev() {
        if items[v].anchored {
            continue;
        }
        if let Some(first_use) = succs[v].iter().map(|&s| rank[s]).min() {
            rank[v] = rank[v].max(first_use.saturating_sub(1));
        }
    }
    let low = rank.iter().copied().min().unwrap_or(0);
    rank.iter().map(|r| r - low).collect()
}

fn crossings(layers: &[Vec<usize>], pos: &[usize], succs: &[Vec<usize>]) -> usize {
    let mut total = 0;
    for layer in layers {
        let ends: Vec<(usize, usize)> = layer
            .iter()
            .flat_map(|&u| succs[u].iter().map(move |&v| (u, v)))
            .map(|(u, v)| (pos[u], pos[v]))
            .collect();
        for (i, a) in ends.iter().enumerate() {
            total += ends[i + 1..]
                .iter()
                .filter(|b| (a.0 < b.0 && a.1 > b.1) || (a.0 > b.0 && a.1 < b.1))
                .count();
        }
    }
    total
}

fn mean(v: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    (n > 0).then(|| sum / n as f64)
}

/// Reorders each layer by the mean position of its neighbours on the adjacent layer.
fn sweep(layers: &mut [Vec<usize>], pos: &mut [usize], next: &[Vec<usize>], down: bool) {
    let n = layers.len();
    let ranks: Vec<usize> = if down {
        (1..n).collect()
    } else {
        (0..n.saturating_sub(1)).rev().collect()
    };
    for r in ranks {
        let key: Vec<(f64, usize)> = layers[r]
            .iter()
            .map(|&v| {
                let m = mean(next[v].iter().map(|&u| pos[u] as f64));
                (m.unwrap_or(pos[v] as f64), v)
            })
            .collect();
        let mut key = key;
        key.sort_by(|a, b| a.0.total_cmp(&b.0));
        layers[r] = key.into_iter().map(|(_, v)| v).collect();
        for (i, &v) in layers[r].iter().enumerate() {
            pos[v] = i;
        }
    }
}

/// Places the nodes of one layer by priority, each as close to its wish as the nodes
/// placed before it allow, keeping the order and the minimum separations.
fn place(l: &Layered, layer: &[usize], wish: &[f64], x: &mut [f64]) {
    let k = layer.len();
    // prefix[i]: minimum distance from the first node's centre to node i's centre.
    let mut prefix = vec![0.0; k];
    for i in 1..k {
        prefix[i] = prefix[i - 1] + l.sep(layer[i - 1], layer[i]);
    }
    let mut by_priority: Vec<usize> = (0..k).collect();
    by_priority.sort_by_key(|&i| std::cmp::Reverse(l.priority[layer[i]]));
    let mut placed: Vec<Option<f64>> = vec![None; k];
    for i in by_priority {
        let lo = (0..i)
            .rev()
            .find_map(|j| placed[j].map(|xj| xj + prefix[i] - prefix[j]))
            .unwrap_or(f64::NEG_INFINITY);
        let hi = (i + 1..k)
            .find_map(|j| placed[j].map(|xj| xj - (prefix[j] - prefix[i])))
            .unwrap_or(f64::INFINITY);
        placed[i] = Some(wish[i].clamp(lo, hi.max(lo)));
    }
    for (i, &v) in layer.iter().enumerate() {
        x[v] = placed[i].unwrap_or(0.0);
    }
}

/// The x a node would like: the x of its neighbours in `next` that share its cluster (so a
/// kernel's ops stand in one column), else the mean x of its neighbours (for a node on the
/// anchor's paths, of its anchored neighbours when it has some).
fn wish(l: &Layered, v: usize, next: &[Vec<usize>], x: &[f64]) -> f64 {
    let same = l.cluster[v].and_then(|c| {
        mean(
            next[v]
                .iter()
                .filter(|&&u| l.cluster[u] == Some(c))
                .map(|&u| x[u]),
        )
    });
    if let Some(m) = same {
        return m;
    }
    let anchored = mean(next[v].iter().filter(|&&u| l.anchored[u]).map(|&u| x[u]));
    let all = mean(next[v].iter().map(|&u| x[u]));
    match (l.anchored[v], anchored, all) {
        (true, Some(a), _) => a,
        (_, _, Some(a)) => a,
        _ => x[v],
    }
}

/// Lays out `items` joined by `edges` (source, target), each edge drawn downwards.
pub fn layout(items: &[Item], edges: &[(usize, usize)]) -> Layout {
    let n = items.len();
    let rank = ranks(items, edges);
    let mut l = Layered {
        rank: Vec::new(),
        width: Vec::new(),
        height: Vec::new(),
        priority: Vec::new(),
        anchored: Vec::new(),
        cluster: Vec::new(),
        preds: Vec::new(),
        succs: Vec::new(),
    };
    for (it, &r) in items.iter().zip(&rank) {
        let prio = match (it.anchored, it.cluster) {
            (true, Some(_)) => 4,
            (true, None) => 3,
            _ => 0,
        };
        l.push(r, it.width, it.height, prio, it.anchored, it.cluster);
    }
    // Each edge as a chain of layered nodes: source, virtual points, target.
    let mut chains = Vec::with_capacity(edges.len());
    for &(u, v) in edges {
        let mut chain = vec![u];
        if rank[v] > rank[u] {
            for r in rank[u] + 1..rank[v] {
                let anch = items[u].anchored;
                l.push(r, VIRTUAL_W, 0.0, if anch { 2 } else { 1 }, anch, None);
                chain.push(l.rank.len() - 1);
            }
            chain.push(v);
            for w in chain.windows(2) {
                l.succs[w[0]].push(w[1]);
                l.preds[w[1]].push(w[0]);
            }
        } else {
            chain.push(v);
        }
        chains.push(chain);
    }
    let total = l.rank.len();
    let depth = l.rank.iter().max().map_or(0, |r| r + 1);
    let mut layers: Vec<Vec<usize>> = vec![Vec::new(); depth];
    let order = topo(n, edges);
    for &v in order.iter().chain(&(n..total).collect::<Vec<_>>()) {
        layers[l.rank[v]].push(v);
    }
    let mut pos = vec![0usize; total];
    for layer in &layers {
        for (i, &v) in layer.iter().enumerate() {
            pos[v] = i;
        }
    }
    let mut best = (crossings(&layers, &pos, &l.succs), layers.clone());
    for round in 0..12 {
        let down = round % 2 == 0;
        sweep(
            &mut layers,
            &mut pos,
            if down { &l.preds } else { &l.succs },
            down,
        );
        let c = crossings(&layers, &pos, &l.succs);
        if c < best.0 {
            best = (c, layers.clone());
        }
    }
    let layers = best.1;

    // x: packed first, then priority placement sweeps.
    let mut x = vec![0.0; total];
    for layer in &layers {
        let mut at = 0.0;
        for (i, &v) in layer.iter().enumerate() {
            if i > 0 {
                at += l.sep(layer[i - 1], v);
            }
            x[v] = at;
        }
    }
    for round in 0..8 {
        let down = round % 2 == 0;
        let (next, ranks): (&[Vec<usize>], Vec<usize>) = if down {
            (&l.preds, (1..depth).collect())
        } else {
            (&l.succs, (0..depth.saturating_sub(1)).rev().collect())
        };
        for r in ranks {
            let wishes: Vec<f64> = layers[r].iter().map(|&v| wish(&l, v, next, &x)).collect();
            place(&l, &layers[r], &wishes, &mut x);
        }
    }

    // y: ranks stacked, each as tall as its tallest node.
    let mut y = vec![0.0; total];
    let mut top = MARGIN + LABEL_H + PAD;
    for layer in &layers {
        let h = layer.iter().map(|&v| l.height[v]).fold(0.0, f64::max);
        for &v in layer {
            y[v] = top + h / 2.0;
        }
        top += h + GAP_Y;
    }

    // Shift right so that every box and cluster lies in the picture.
    let clusters_of = |x: &[f64]| {
        let count = items
            .iter()
            .filter_map(|i| i.cluster)
            .max()
            .map_or(0, |c| c + 1);
        let mut boxes = vec![
            [
                f64::INFINITY,
                f64::INFINITY,
                f64::NEG_INFINITY,
                f64::NEG_INFINITY
            ];
            count
        ];
        for (v, it) in items.iter().enumerate() {
            if let Some(c) = it.cluster {
                let b = &mut boxes[c];
                b[0] = b[0].min(x[v] - it.width / 2.0 - PAD);
                b[1] = b[1].min(y[v] - it.height / 2.0 - PAD - LABEL_H);
                b[2] = b[2].max(x[v] + it.width / 2.0 + PAD);
                b[3] = b[3].max(y[v] + it.height / 2.0 + PAD);
            }
        }
        boxes
    };
    let left = (0..total)
        .map(|v| x[v] - l.width[v] / 2.0)
        .chain(clusters_of(&x).iter().map(|b| b[0]))
        .fold(f64::INFINITY, f64::min);
    let shift = if left.is_finite() { MARGIN - left } else { 0.0 };
    for xv in &mut x {
        *xv += shift;
    }
    let clusters = clusters_of(&x);
    let right = (0..total)
        .map(|v| x[v] + l.width[v] / 2.0)
        .chain(clusters.iter().map(|b| b[2]))
        .fold(0.0, f64::max);
    let bottom = (0..total)
        .map(|v| y[v] + l.height[v] / 2.0)
        .chain(clusters.iter().map(|b| b[3]))
        .fold(0.0, f64::max);

    let edges = polylines(&l, &chains, &x, &y, n);
    Layout {
        centers: (0..n).map(|v| (x[v], y[v])).collect(),
        ranks: rank,
        edges,
        clusters,
        width: right + MARGIN,
        height: bottom + MARGIN,
    }
}

/// Every chain as points: from the source's bottom edge, through its virtual points, to
/// the target's top edge. Several edges at one box spread over its middle, in the order
/// of where they come from, so that they do not cross at the box.
fn polylines(
    l: &Layered,
    chains: &[Vec<usize>],
    x: &[f64],
    y: &[f64],
    n: usize,
) -> Vec<Vec<(f64, f64)>> {
    let mut outs: Vec<Vec<(f64, usize)>> = vec![Vec::new(); n];
    let mut ins: Vec<Vec<(f64, usize)>> = vec![Vec::new(); n];
    for (e, c) in chains.iter().enumerate() {
        let (first, last) = (c[0], c[c.len() - 1]);
        outs[first].push((x[c[1]], e));
        ins[last].push((x[c[c.len() - 2]], e));
    }
    let spread = |ends: &mut Vec<(f64, usize)>, v: usize| -> Vec<(usize, f64)> {
        ends.sort_by(|a, b| a.0.total_cmp(&b.0));
        let k = ends.len();
        let step = if k > 1 {
            (l.width[v] * 0.6 / (k - 1) as f64).min(14.0)
        } else {
            0.0
        };
        ends.iter()
            .enumerate()
            .map(|(i, &(_, e))| (e, (i as f64 - (k - 1) as f64 / 2.0) * step))
            .collect()
    };
    let mut out_off = vec![0.0; chains.len()];
    let mut in_off = vec![0.0; chains.len()];
    for v in 0..n {
        for (e, off) in spread(&mut outs[v], v) {
            out_off[e] = off;
        }
        for (e, off) in spread(&mut ins[v], v) {
            in_off[e] = off;
        }
    }
    chains
        .iter()
        .enumerate()
        .map(|(e, c)| {
            let (u, v) = (c[0], c[c.len() - 1]);
            let mut pts = vec![(x[u] + out_off[e], y[u] + l.height[u] / 2.0)];
            pts.extend(c[1..c.len() - 1].iter().map(|&d| (x[d], y[d])));
            pts.push((x[v] + in_off[e], y[v] - l.height[v] / 2.0));
            pts
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(anchored: bool, cluster: Option<usize>) -> Item {
        Item {
            width: 60.0,
            height: 30.0,
            anchored,
            cluster,
        }
    }

    fn overlaps(a: [f64; 4], b: [f64; 4]) -> bool {
        a[0] < b[2] && b[0] < a[2] && a[1] < b[3] && b[1] < a[3]
    }

    /// A chain with a parameter per op, a branch that rejoins, a skip edge, and clusters:
    /// edges point down, boxes do not overlap, clusters hold their members only.
    #[test]
    fn a_chain_with_parameters_and_a_branch_lays_out_cleanly() {
        // 0 input; 1 conv (param 2); 3 act; 4 left, 5 right (param 6); 7 add; 8 output.
        let items = vec![
            item(true, None),
            item(true, Some(0)),
            item(false, None),
            item(true, Some(0)),
            item(true, None),
            item(true, None),
            item(false, None),
            item(true, Some(1)),
            item(true, None),
        ];
        let edges = [
            (0, 1),
            (2, 1),
            (1, 3),
            (3, 4),
            (3, 5),
            (6, 5),
            (4, 7),
            (5, 7),
            (7, 8),
            (0, 7),
        ];
        let lay = layout(&items, &edges);
        for (&(u, v), pts) in edges.iter().zip(&lay.edges) {
            assert!(lay.ranks[v] > lay.ranks[u], "{u} -> {v}");
            assert!(
                pts.windows(2).all(|w| w[1].1 > w[0].1),
                "{u} -> {v}: {pts:?}"
            );
        }
        // A parameter sits one rank above its user.
        assert_eq!(lay.ranks[2] + 1, lay.ranks[1]);
        assert_eq!(lay.ranks[6] + 1, lay.ranks[5]);
        let boxes: Vec<[f64; 4]> = lay
            .centers
            .iter()
            .zip(&items)
            .map(|(&(x, y), it)| {
                let (w, h) = (it.width / 2.0, it.height / 2.0);
                [x - w, y - h, x + w, y + h]
            })
            .collect();
        for (i, a) in boxes.iter().enumerate() {
            assert!(a[0] >= 0.0 && a[2] <= lay.width && a[3] <= lay.height);
            for b in &boxes[i + 1..] {
                assert!(!overlaps(*a, *b), "{a:?} {b:?}");
            }
        }
        for (c, cb) in lay.clusters.iter().enumerate() {
            for (b, it) in boxes.iter().zip(&items) {
                let inside = b[0] >= cb[0] && b[2] <= cb[2] && b[1] >= cb[1] && b[3] <= cb[3];
                assert_eq!(inside, it.cluster == Some(c), "{b:?} in {cb:?}");
                if it.cluster != Some(c) {
                    assert!(!overlaps(*b, *cb), "{b:?} overlaps cluster {cb:?}");
                }
            }
        }
        // A cluster's ops stand in one column.
        assert_eq!(lay.centers[1].0, lay.centers[3].0);
    }

    #[test]
    fn an_empty_graph_and_a_cycle_do_not_panic() {
        let lay = layout(&[], &[]);
        assert!(lay.centers.is_empty());
        let lay = layout(&[item(true, None), item(true, None)], &[(0, 1), (1, 0)]);
        assert_eq!(lay.edges.len(), 2);
    }
}
