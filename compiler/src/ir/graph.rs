//! The graph: a petgraph `StableGraph` behind typed ids. Every node produces exactly one
//! value, so a `NodeId` also names that value. Edges run from an operand to its user and
//! carry the operand slot; operands are always read back by slot, never in edge order.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;

use petgraph::Direction;
use petgraph::stable_graph::{NodeIndex, StableGraph};
use petgraph::visit::EdgeRef;

use super::op::Op;
use super::types::{Span, TensorType};

/// A node (and the value it produces). Its printed form is `%N`; the text format names
/// nodes by their `name` instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(u32);

impl NodeId {
    fn index(self) -> NodeIndex {
        NodeIndex::new(self.0 as usize)
    }

    fn from_index(i: NodeIndex) -> NodeId {
        NodeId(i.index() as u32)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "%{}", self.0)
    }
}

/// What a node is.
#[derive(Clone, Debug, PartialEq)]
pub enum NodeKind {
    /// A graph input, bound by the caller at run time.
    Input,
    /// A named parameter whose data lives in the runtime's parameter store.
    Param,
    /// An operation on its operands.
    Op(Op),
}

/// A node of the graph.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// The unique name; parameters are named `<owner>.<slot>` (`conv1.weight`).
    pub name: String,
    /// Input, parameter or op.
    pub kind: NodeKind,
    /// The result type; `None` until shape inference for ops and undeclared parameters.
    pub ty: Option<TensorType>,
    /// Where the node was written (0:0 for nodes that passes create).
    pub span: Span,
}

impl Node {
    /// The op, if this is an op node.
    pub fn op(&self) -> Option<&Op> {
        match &self.kind {
            NodeKind::Op(op) => Some(op),
            _ => None,
        }
    }
}

/// A dataflow graph of single-result nodes with named inputs, parameters and outputs.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    g: StableGraph<Node, u32>,
    names: HashMap<String, NodeId>,
    outputs: Vec<NodeId>,
}

/// A node's name was already taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DuplicateName {
    /// The node that holds the name.
    pub existing: NodeId,
}

impl Graph {
    /// An empty graph.
    pub fn new() -> Graph {
        Graph::default()
    }

    /// Adds a node without operands; fails if the name is taken.
    pub fn add_node(&mut self, node: Node) -> Result<NodeId, DuplicateName> {
        if let Some(&existing) = self.names.get(&node.name) {
            return Err(DuplicateName { existing });
        }
        let name = node.name.clone();
        let id = NodeId::from_index(self.g.add_node(node));
        self.names.insert(name, id);
        Ok(id)
    }

    /// Adds an op node with its operands in slot order; fails if the name is taken.
    pub fn add_op(
        &mut self,
        name: impl Into<String>,
        op: Op,
        operands: &[NodeId],
        span: Span,
    ) -> Result<NodeId, DuplicateName> {
        let id = self.add_node(Node {
            name: name.into(),
            kind: NodeKind::Op(op),
            ty: None,
            span,
        })?;
        for (slot, &o) in operands.iter().enumerate() {
            self.connect(o, id, slot as u32);
        }
        Ok(id)
    }

    /// Adds an edge making `from` operand `slot` of `to`.
    pub fn connect(&mut self, from: NodeId, to: NodeId, slot: u32) {
        self.g.add_edge(from.index(), to.index(), slot);
    }

    /// The node with this id. Panics on a removed id, which is a compiler bug.
    pub fn node(&self, id: NodeId) -> &Node {
        &self.g[id.index()]
    }

    /// The node with this id, mutably.
    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.g[id.index()]
    }

    /// Whether `id` names a live node.
    pub fn contains(&self, id: NodeId) -> bool {
        self.g.contains_node(id.index())
    }

    /// Looks a node up by name.
    pub fn lookup(&self, name: &str) -> Option<NodeId> {
        self.names.get(name).copied()
    }

    /// Renames a node; fails if the new name is taken by another node.
    pub fn rename(&mut self, id: NodeId, name: impl Into<String>) -> Result<(), DuplicateName> {
        let name = name.into();
        match self.names.get(&name) {
            Some(&existing) if existing != id => return Err(DuplicateName { existing }),
            _ => {}
        }
        let old = std::mem::replace(&mut self.node_mut(id).name, name.clone());
        self.names.remove(&old);
        self.names.insert(name, id);
        Ok(())
    }

    /// All live node ids, in creation order.
    pub fn node_ids(&self) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self.g.node_indices().map(NodeId::from_index).collect();
        v.sort();
        v
    }

    /// The operands of `id` as `(slot, operand)` pairs sorted by slot. Slots are checked
    /// to be `0..n` by the verifier.
    pub fn operand_slots(&self, id: NodeId) -> Vec<(u32, NodeId)> {
        let mut v: Vec<(u32, NodeId)> = self
            .g
            .edges_directed(id.index(), Direction::Incoming)
            .map(|e| (*e.weight(), NodeId::from_index(e.source())))
            .collect();
        v.sort();
        v
    }

    /// The operands of `id` in slot order.
    pub fn operands(&self, id: NodeId) -> Vec<NodeId> {
        self.operand_slots(id).into_iter().map(|(_, o)| o).collect()
    }

    /// The users of `id` as `(user, slot)` pairs, sorted.
    pub fn users(&self, id: NodeId) -> Vec<(NodeId, u32)> {
        let mut v: Vec<(NodeId, u32)> = self
            .g
            .edges_directed(id.index(), Direction::Outgoing)
            .map(|e| (NodeId::from_index(e.target()), *e.weight()))
            .collect();
        v.sort();
        v
    }

    /// Makes every user of `old` (and the output list) use `new` instead.
    pub fn replace_all_uses(&mut self, old: NodeId, new: NodeId) {
        for (user, slot) in self.users(old) {
            self.set_operand(user, slot, new);
        }
        for o in &mut self.outputs {
            if *o == old {
                *o = new;
            }
        }
    }

    /// Replaces operand `slot` of `user` with `new`.
    pub fn set_operand(&mut self, user: NodeId, slot: u32, new: NodeId) {
        self.remove_edge_at(user, slot);
        self.connect(new, user, slot);
    }

    /// Removes operand `slot` of `user` (for rewrites that shrink an op's operand list).
    pub fn remove_edge_at(&mut self, user: NodeId, slot: u32) {
        let edge = self
            .g
            .edges_directed(user.index(), Direction::Incoming)
            .find(|e| *e.weight() == slot)
            .map(|e| e.id());
        if let Some(e) = edge {
            self.g.remove_edge(e);
        }
    }

    /// Removes a node and its edges. The caller makes sure nothing uses it any more.
    pub fn remove(&mut self, id: NodeId) {
        if let Some(node) = self.g.remove_node(id.index()) {
            self.names.remove(&node.name);
        }
        self.outputs.retain(|&o| o != id);
    }

    /// The input nodes, in creation order.
    pub fn inputs(&self) -> Vec<NodeId> {
        self.filter(|n| matches!(n.kind, NodeKind::Input))
    }

    /// The parameter nodes, in creation order.
    pub fn params(&self) -> Vec<NodeId> {
        self.filter(|n| matches!(n.kind, NodeKind::Param))
    }

    fn filter(&self, f: impl Fn(&Node) -> bool) -> Vec<NodeId> {
        self.node_ids()
            .into_iter()
            .filter(|&id| f(self.node(id)))
            .collect()
    }

    /// The graph outputs, in order.
    pub fn outputs(&self) -> &[NodeId] {
        &self.outputs
    }

    /// Sets the graph outputs.
    pub fn set_outputs(&mut self, outputs: Vec<NodeId>) {
        self.outputs = outputs;
    }

    /// Node ids in a topological order that is stable: among ready nodes the one created
    /// first comes first. On a cycle, returns the nodes that lie on or behind it.
    pub fn topo_order(&self) -> Result<Vec<NodeId>, Vec<NodeId>> {
        let ids = self.node_ids();
        let mut indegree: HashMap<NodeId, usize> = ids
            .iter()
            .map(|&id| (id, self.operand_slots(id).len()))
            .collect();
        let mut ready: BTreeSet<NodeId> =
            ids.iter().copied().filter(|id| indegree[id] == 0).collect();
        let mut order = Vec::with_capacity(ids.len());
        while let Some(id) = ready.pop_first() {
            order.push(id);
            for (user, _) in self.users(id) {
                if let Some(d) = indegree.get_mut(&user) {
                    *d -= 1;
                    if *d == 0 {
                        ready.insert(user);
                    }
                }
            }
        }
        if order.len() == ids.len() {
            Ok(order)
        } else {
            Err(ids.into_iter().filter(|id| indegree[id] > 0).collect())
        }
    }

    /// Whether a node's value depends on parameters only (no input): such values are
    /// computed once when weights are bound, not per batch. To ask about many nodes, use
    /// [`Graph::param_only`], which answers for all of them in one pass.
    pub fn is_param_only(&self, id: NodeId) -> bool {
        let mut memo = HashMap::new();
        self.visit_param_only(id, &mut memo);
        memo.get(&id) == Some(&Some(true))
    }

    /// Every node whose value depends on parameters only (see [`Graph::is_param_only`]).
    pub fn param_only(&self) -> HashSet<NodeId> {
        let mut memo = HashMap::new();
        for id in self.node_ids() {
            self.visit_param_only(id, &mut memo);
        }
        memo.into_iter()
            .filter_map(|(id, v)| (v == Some(true)).then_some(id))
            .collect()
    }

    /// Decides `is_param_only` for `root` and everything it depends on, recording each
    /// answer in `memo` (`None` while a node's operands are being decided). The walk is
    /// iterative and visits each node once, so neither a chain of a million ops nor a
    /// value shared by every later one (`w2 = f(w1, w1)`, `w3 = f(w2, w2)`, ...) can
    /// overflow the stack or take exponential time; a node on a cycle counts as
    /// depending on an input.
    fn visit_param_only(&self, root: NodeId, memo: &mut HashMap<NodeId, Option<bool>>) {
        let mut stack = vec![(root, false)];
        while let Some((id, operands_done)) = stack.pop() {
            if operands_done {
                let all = self
                    .operand_slots(id)
                    .iter()
                    .all(|(_, o)| memo.get(o) == Some(&Some(true)));
                memo.insert(id, Some(all));
                continue;
            }
            if memo.contains_key(&id) {
                continue;
            }
            match self.node(id).kind {
                NodeKind::Param => {
                    memo.insert(id, Some(true));
                }
                NodeKind::Input => {
                    memo.insert(id, Some(false));
                }
                NodeKind::Op(_) => {
                    memo.insert(id, None);
                    stack.push((id, true));
                    for (_, o) in self.operand_slots(id) {
                        if !memo.contains_key(&o) {
                            stack.push((o, false));
                        }
                    }
                }
            }
        }
    }

    /// The number of live nodes.
    pub fn len(&self) -> usize {
        self.g.node_count()
    }

    /// True when the graph has no nodes.
    pub fn is_empty(&self) -> bool {
        self.g.node_count() == 0
    }
}
