//! Memory planning: every kernel output is a value with a lifetime (from the kernel that
//! writes it to the last kernel that reads it; graph outputs live to the end). Values
//! whose lifetimes do not overlap share a buffer, chosen best-fit, so the activation
//! memory of a deep network is a few buffers, not one per layer. A kernel's output never
//! shares a buffer with its inputs: lifetimes that touch at a kernel overlap.

use super::Arg;

/// A value during planning: the caller's input, or the i-th produced value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Val {
    /// The graph input.
    Input,
    /// A kernel output, numbered in production order.
    V(usize),
}

impl Val {
    /// The argument before buffer assignment (`Slot` holds the value number until
    /// `assign` maps it to a buffer).
    pub fn arg(self) -> Arg {
        match self {
            Val::Input => Arg::Input,
            Val::V(i) => Arg::Slot(i),
        }
    }
}

/// Records lifetimes, then assigns buffers.
#[derive(Default)]
pub struct Planner {
    len: Vec<usize>,
    birth: Vec<usize>,
    last_use: Vec<usize>,
}

impl Planner {
    /// Kernel `k` reads `uses` and writes a new value of `len` elements per image.
    pub fn produce(&mut self, len: usize, k: usize, uses: &[Val]) -> Val {
        for u in uses {
            if let Val::V(i) = *u {
                self.last_use[i] = self.last_use[i].max(k);
            }
        }
        self.len.push(len);
        self.birth.push(k);
        self.last_use.push(k);
        Val::V(self.len.len() - 1)
    }

    /// Keeps a value alive to the end (a graph output).
    pub fn keep(&mut self, v: Val) {
        if let Val::V(i) = v {
            self.last_use[i] = usize::MAX;
        }
    }

    /// Assigns buffers; returns their sizes and the buffer of each value.
    pub fn assign(&self) -> (Vec<usize>, Vec<usize>) {
        let mut slot_len: Vec<usize> = Vec::new();
        let mut slot_busy_until: Vec<usize> = Vec::new();
        let mut map = Vec::with_capacity(self.len.len());
        for v in 0..self.len.len() {
            let (len, birth) = (self.len[v], self.birth[v]);
            let free = |s: &usize| slot_busy_until[*s] < birth;
            let fit = (0..slot_len.len())
                .filter(free)
                .filter(|&s| slot_len[s] >= len)
                .min_by_key(|&s| slot_len[s]);
            let slot = match fit.or_else(|| {
                (0..slot_len.len())
                    .filter(free)
                    .max_by_key(|&s| slot_len[s])
            }) {
                Some(s) => {
                    slot_len[s] = slot_len[s].max(len);
                    s
                }
                None => {
                    slot_len.push(len);
                    slot_busy_until.push(0);
                    slot_len.len() - 1
                }
            };
            slot_busy_until[slot] = self.last_use[v];
            map.push(slot);
        }
        (slot_len, map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_ping_pongs_between_two_buffers() {
        let mut p = Planner::default();
        let a = p.produce(100, 0, &[Val::Input]);
        let b = p.produce(50, 1, &[a]);
        let c = p.produce(80, 2, &[b]);
        let d = p.produce(10, 3, &[c]);
        p.keep(d);
        let (slots, map) = p.assign();
        assert_eq!(slots.len(), 2);
        assert_ne!(map[0], map[1]);
        assert_eq!(map[0], map[2]);
        assert_ne!(map[2], map[3]);
    }

    #[test]
    fn a_value_read_later_is_not_overwritten() {
        let mut p = Planner::default();
        let a = p.produce(10, 0, &[Val::Input]);
        let b = p.produce(10, 1, &[a]);
        let c = p.produce(10, 2, &[b, a]);
        p.keep(c);
        let (_, map) = p.assign();
        assert_ne!(map[0], map[1]);
        assert_ne!(map[0], map[2]);
        assert_ne!(map[1], map[2]);
    }
}
