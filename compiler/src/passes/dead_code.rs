//! `dce`: removes every op and parameter that no output depends on. Inputs stay, because
//! they are the graph's calling convention even when unused.
//!
//! ```text
//! before:  a = relu(x)
//!          b = sigmoid(x)      # nothing uses b
//!          output a
//! after:   a = relu(x)
//!          output a
//! ```

use std::collections::HashSet;

use super::{Pass, PassContext, PassError};
use crate::ir::{Graph, NodeKind};

/// The `dce` pass.
pub struct DeadCodeElimination;

impl Pass for DeadCodeElimination {
    fn name(&self) -> &'static str {
        "dce"
    }

    fn run(&mut self, g: &mut Graph, _cx: &mut PassContext) -> Result<bool, PassError> {
        let mut live = HashSet::new();
        let mut stack: Vec<_> = g.outputs().to_vec();
        while let Some(id) = stack.pop() {
            if live.insert(id) {
                stack.extend(g.operands(id));
            }
        }
        let dead: Vec<_> = g
            .node_ids()
            .into_iter()
            .filter(|id| !live.contains(id) && !matches!(g.node(*id).kind, NodeKind::Input))
            .collect();
        for &id in &dead {
            g.remove(id);
        }
        Ok(!dead.is_empty())
    }
}
