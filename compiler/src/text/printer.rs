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
        param_only: g.param_only(),
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
        if !p.param_only.contains(&id) {
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
    /// The nodes that depend on parameters only.
    param_only: HashSet<NodeId>,
}

impl Printer<'_> {
    /// Prints `id` after every parameter-only operand it has that is not printed yet,
    /// depth first in slot order. The walk keeps its own stack, so a chain of any length
    /// of parameter-only values cannot overflow the thread's.
    fn emit(&mut self, root: NodeId) {
        let mut stack = vec![(root, false)];
        let mut visiting = HashSet::new();
        while let Some((id, operands_done)) = stack.pop() {
            if self.done.contains(&id) {
                continue;
            }
            if operands_done {
                self.write(id);
                continue;
            }
            if !visiting.insert(id) {
                // On a cycle (only a broken graph in a verifier dump has one).
                continue;
            }
            stack.push((id, true));
            for &o in self.g.operands(id).iter().rev() {
                if self.param_only.contains(&o) && !self.done.contains(&o) {
                    stack.push((o, false));
                }
            }
        }
    }

    /// Writes the line of `id`.
    fn write(&mut self, id: NodeId) {
        let g = self.g;
        let operands = g.operands(id);
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

#[cfg(test)]
mod tests {
    use super::print;
    use crate::text::parse;

    /// `n` parameter-only values, each using the previous one three times, feeding one op.
    fn shared_chain(n: usize) -> String {
        let mut src = String::from("input x: f32[N,4]\nparam w0: f32[4]\n");
        for i in 1..n {
            let p = i - 1;
            src.push_str(&format!("w{i} = channel_affine(w{p}, w{p}, w{p})\n"));
        }
        let last = n - 1;
        src.push_str(&format!("y = scale_shift(x, w{last}, w{last})\noutput y\n"));
        src
    }

    /// A value shared by every later one once made deciding "parameter-only" exponential
    /// (3^n visits, a hang on a 26-line model); it is linear now.
    #[test]
    fn shared_parameter_only_values_print_in_linear_time() {
        let src = shared_chain(200);
        let g = parse(&src).unwrap();
        assert_eq!(print(&g), src);
        assert!(g.is_param_only(g.lookup("w199").unwrap()));
        assert!(!g.is_param_only(g.lookup("y").unwrap()));
    }

    /// A chain of 50 000 parameter-only values prints without overflowing a test thread's
    /// 2 MiB stack (the printer and `is_param_only` once recursed once per value).
    #[test]
    fn long_parameter_only_chains_print_without_recursion() {
        let mut src = String::from("input x: f32[N,4]\nparam w0: f32[4]\nparam s: f32[4]\n");
        let n = 50_000;
        for i in 1..n {
            src.push_str(&format!("w{i} = channel_affine(w{}, s, s)\n", i - 1));
        }
        src.push_str(&format!("y = scale_shift(x, w{}, s)\noutput y\n", n - 1));
        let g = parse(&src).unwrap();
        let printed = print(&g);
        assert_eq!(printed.lines().count(), n + 4);
        assert_eq!(g.param_only().len(), n + 1);
    }
}
