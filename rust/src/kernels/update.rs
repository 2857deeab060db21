//! The optimizer update of one tensor, element by element, in place: the loop of
//! [`crate::optim`], which holds the rules, computes these coefficients and drives many tensors.
//!
//! Every coefficient is in the parameter's dtype `T` (`f32` or `f64`), as Paddle's CPU kernels
//! hold them, and each rule's loop does Paddle's operations in Paddle's order: no reassociation
//! and no FMA contraction (Rust does neither), so every ISA computes the same bits. The gradient
//! is only read; coupled L2 decay (`g' = g + weight_decay*p`) is formed in a register.

use crate::element::Lane;
use crate::isa::{Isa, dispatch};

/// One tensor's buffers: the parameter (updated), its gradient (read only) and its state arrays
/// (updated). Unused state slots are empty.
#[derive(Debug)]
pub struct Slots<'a, T> {
    pub param: &'a mut [T],
    pub grad: &'a [T],
    pub state1: &'a mut [T],
    pub state2: &'a mut [T],
}

/// SGD: `g' = g + weight_decay*p;  p <- p - lr*g'`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sgd<T> {
    pub lr: T,
    /// The L2 coefficient; 0 adds no term at all (`0 * inf` would be NaN).
    pub weight_decay: T,
}

/// Momentum with L2 decay fused (`CPUDenseMomentumFunctor`), state 1 the velocity `v`:
/// `g' = p*weight_decay + g;  v <- v*momentum + g'`, then `p <- p - lr*v` (heavy ball) or
/// `p <- p - (g' + v*momentum)*lr` (Nesterov).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Momentum<T> {
    pub lr: T,
    /// The L2 coefficient; 0 adds no term.
    pub weight_decay: T,
    /// The velocity's decay `mu`.
    pub momentum: T,
    pub nesterov: bool,
}

/// Adam or AdamW, states 1 and 2 the moments `m1`, `m2`:
/// `p' = p - decoupled_decay*p` (AdamW; `p' = p` for Adam);  `g' = g + weight_decay*p`;
/// `m1 <- beta1*m1 + one_minus_beta1*g';  m2 <- beta2*m2 + one_minus_beta2*g'*g'`;
/// `p <- p' + neg_lr_t * (m1 / (sqrt(m2) + eps_t))`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Adam<T> {
    /// Adam's coupled L2 coefficient; 0 (no term) for AdamW.
    pub weight_decay: T,
    /// AdamW's decoupled decay `lr * coeff`; `None` for Adam. (`Some(0)` is not `None`: an
    /// infinite parameter becomes NaN, as in Paddle.)
    pub decoupled_decay: Option<T>,
    pub beta1: T,
    /// `1 - beta1`, rounded in `T`.
    pub one_minus_beta1: T,
    pub beta2: T,
    /// `1 - beta2`, rounded in `T`.
    pub one_minus_beta2: T,
    /// `-lr_t`, the negated bias-corrected step `lr * sqrt(1 - beta2^t) / (1 - beta1^t)`.
    pub neg_lr_t: T,
    /// The scaled epsilon `eps * sqrt(1 - beta2^t)`.
    pub eps_t: T,
}

/// One tensor's update rule with its coefficients.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Coefficients<T> {
    Sgd(Sgd<T>),
    Momentum(Momentum<T>),
    Adam(Adam<T>),
}

dispatch! {
    /// Update one tensor in place under `c`. The state slots the rule needs must be at least as
    /// long as the parameter, the gradient too (checked by slicing: a shorter one panics before
    /// any element is written); the caller ([`crate::optim::step`]) checks lengths first.
    pub fn apply<T: Lane>(s: Slots<'_, T>, c: Coefficients<T>, isa: Isa) => apply_body;
}

#[inline(always)]
fn apply_body<T: Lane>(s: Slots<'_, T>, c: Coefficients<T>, _isa: Isa) {
    let n = s.param.len();
    let (p, g) = (s.param, &s.grad[..n]);
    match c {
        Coefficients::Sgd(c) => {
            let l2 = c.weight_decay != T::ZERO;
            for i in 0..n {
                let gi = if l2 {
                    g[i] + c.weight_decay * p[i]
                } else {
                    g[i]
                };
                p[i] = p[i] - c.lr * gi;
            }
        }
        Coefficients::Momentum(c) => {
            let l2 = c.weight_decay != T::ZERO;
            let v = &mut s.state1[..n];
            for i in 0..n {
                let gi = if l2 {
                    p[i] * c.weight_decay + g[i]
                } else {
                    g[i]
                };
                let vi = v[i] * c.momentum + gi;
                v[i] = vi;
                p[i] = if c.nesterov {
                    p[i] - (gi + vi * c.momentum) * c.lr
                } else {
                    p[i] - c.lr * vi
                };
            }
        }
        Coefficients::Adam(c) => {
            let l2 = c.weight_decay != T::ZERO;
            let (decoupled, decay) = match c.decoupled_decay {
                Some(d) => (true, d),
                None => (false, T::ZERO),
            };
            let m1 = &mut s.state1[..n];
            let m2 = &mut s.state2[..n];
            for i in 0..n {
                let pi = if decoupled { p[i] - decay * p[i] } else { p[i] };
                let gi = if l2 {
                    g[i] + c.weight_decay * p[i]
                } else {
                    g[i]
                };
                let m1i = c.beta1 * m1[i] + c.one_minus_beta1 * gi;
                let m2i = c.beta2 * m2[i] + c.one_minus_beta2 * gi * gi;
                m1[i] = m1i;
                m2[i] = m2i;
                p[i] = pi + c.neg_lr_t * (m1i / (m2i.sqrt() + c.eps_t));
            }
        }
    }
}
