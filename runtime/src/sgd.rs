//! Stochastic gradient descent with PyTorch's semantics: `g = grad + wd·w`, then with
//! momentum `v = μ·v + g` and `w -= lr·v`, else `w -= lr·g`.

/// One trainable tensor with its gradient and momentum buffer.
#[derive(Clone, Debug, PartialEq)]
pub struct SgdParam {
    /// The parameter's name.
    pub name: String,
    /// Its shape (PyTorch layout).
    pub shape: Vec<usize>,
    /// Its value.
    pub value: Vec<f32>,
    /// The last gradient.
    pub grad: Vec<f32>,
    /// The momentum buffer (zero until the first step with momentum).
    pub velocity: Vec<f32>,
}

impl SgdParam {
    /// A parameter with zero gradient and velocity.
    pub fn new(name: &str, shape: &[usize], value: &[f32]) -> SgdParam {
        SgdParam {
            name: name.to_string(),
            shape: shape.to_vec(),
            value: value.to_vec(),
            grad: vec![0.0; value.len()],
            velocity: vec![0.0; value.len()],
        }
    }
}

/// The optimizer: its parameters and their state.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sgd {
    /// The parameters in a fixed order.
    pub params: Vec<SgdParam>,
}

impl Sgd {
    /// An optimizer over `params`.
    pub fn new(params: Vec<SgdParam>) -> Sgd {
        Sgd { params }
    }

    /// Applies one update with the stored gradients.
    pub fn step(&mut self, lr: f32, momentum: f32, weight_decay: f32) {
        for p in &mut self.params {
            for ((w, &g), v) in p.value.iter_mut().zip(&p.grad).zip(&mut p.velocity) {
                let g = g + weight_decay * *w;
                let d = if momentum != 0.0 {
                    *v = momentum * *v + g;
                    *v
                } else {
                    g
                };
                *w -= lr * d;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn momentum_and_weight_decay_follow_pytorch() {
        let mut p = SgdParam::new("w", &[1], &[1.0]);
        p.grad = vec![0.5];
        let mut s = Sgd::new(vec![p]);
        s.step(0.1, 0.9, 0.01);
        // g = 0.5 + 0.01 = 0.51, v = 0.51, w = 1 - 0.051.
        assert!((s.params[0].value[0] - 0.949).abs() < 1e-6);
        s.step(0.1, 0.9, 0.01);
        // g = 0.5 + 0.00949, v = 0.9*0.51 + g.
        let v = 0.9 * 0.51 + 0.5 + 0.00949;
        assert!((s.params[0].value[0] - (0.949 - 0.1 * v)).abs() < 1e-6);
    }
}
