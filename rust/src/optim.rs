//! Fused in-place optimizer updates: many parameters, one call, Paddle's update rules.
//!
//! One [`step`] updates every parameter of a call (and its optimizer state) in place. The
//! gradient is only read: coupled L2 decay (`g' = g + wd * p`) is formed per element in a
//! register, never written back. Each rule follows Paddle's CPU kernel operation for operation,
//! in the parameter's own dtype (`f32` or `f64`), with the per-tensor scalars (bias-corrected
//! learning rate, scaled epsilon) formed as Paddle forms them:
//!
//! - SGD (`sgd` kernel, L2 from `append_regularization_ops`):
//!   `g' = g + wd*p;  p <- p - lr*g'`
//! - Momentum (`momentum_kernel_impl.h`, `CPUDenseMomentumFunctor`, L2 fused as `l2_decay`):
//!   `g' = p*wd + g;  v <- v*mu + g';  p <- p - lr*v`, or with Nesterov `p <- p - (g' + v*mu)*lr`
//! - Adam (`cpu/adam_kernel.cc` + `jit/refer` `Adam`), `t` the step being taken:
//!   `lr_t = lr * (sqrt(1 - beta2^t) / (1 - beta1^t));  eps_t = eps * sqrt(1 - beta2^t)`
//!   `m1 <- beta1*m1 + (1-beta1)*g';  m2 <- beta2*m2 + (1-beta2)*g'*g'`
//!   `p <- p + (-lr_t) * (m1 / (sqrt(m2) + eps_t))`
//! - AdamW (`cpu/adamw_kernel.cc`, `lr_ratio = 1`): decoupled decay on the raw gradient,
//!   `p_tmp = p - lr*coeff*p`, then the Adam update of `p_tmp` with `g` (no L2 term).
//!
//! This module holds the rules and forms each tensor's coefficients ([`update::Coefficients`]);
//! the per-element loop is [`crate::kernels::update`]. Work is cut into [`CHUNK`]-element pieces
//! and run through [`multi::run`]; every element's update depends only on that element, so
//! results are bitwise identical for any thread count and any chunking. The kernel never
//! reassociates or fuses (no FMA contraction in Rust), so every ISA path gives the same bits.

use crate::element::Lane;
use crate::isa::{self, Isa};
use crate::kernels::update::{self, Coefficients};
use crate::multi::{self, CHUNK};

pub use crate::kernels::update::Slots;

/// The update rule shared by every tensor of one call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rule {
    /// Plain SGD with coupled L2 decay. No state.
    Sgd,
    /// Heavy-ball or Nesterov momentum with L2 decay fused; state 1 is the velocity.
    Momentum { mu: f64, nesterov: bool },
    /// Adam (coupled L2 decay) or, with `decoupled`, AdamW (`weight_decay` is AdamW's `coeff`);
    /// state 1 is moment1, state 2 is moment2.
    Adam {
        beta1: f64,
        beta2: f64,
        epsilon: f64,
        decoupled: bool,
    },
}

impl Rule {
    /// How many state arrays each tensor carries under this rule.
    pub fn states(self) -> usize {
        match self {
            Rule::Sgd => 0,
            Rule::Momentum { .. } => 1,
            Rule::Adam { .. } => 2,
        }
    }
}

/// Per-tensor hyperparameters (a parameter group or a per-parameter learning-rate multiplier
/// can make these differ between the tensors of one call).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hyper {
    /// The learning rate for this tensor (global lr times any multiplier).
    pub lr: f64,
    /// L2 coefficient (SGD, Momentum, Adam) or AdamW's decoupled `coeff`; 0 means none.
    pub weight_decay: f64,
    /// `beta1^t` and `beta2^t` for the step being taken (Adam only; Paddle's `Beta1Pow` input,
    /// which starts at `beta1` on the first step).
    pub beta1_pow: f64,
    pub beta2_pow: f64,
}

impl Hyper {
    /// Hyperparameters without Adam's bias-correction powers.
    pub fn new(lr: f64, weight_decay: f64) -> Self {
        Hyper {
            lr,
            weight_decay,
            beta1_pow: 0.0,
            beta2_pow: 0.0,
        }
    }
}

/// One tensor of a call, in its dtype.
#[derive(Debug)]
pub enum Update<'a> {
    F32(Slots<'a, f32>, Hyper),
    F64(Slots<'a, f64>, Hyper),
}

/// Why a call was refused (nothing was touched).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LengthMismatch {
    /// The tensor's position in the call.
    pub index: usize,
    /// Which buffer disagrees with the parameter's length.
    pub what: &'static str,
    pub expected: usize,
    pub got: usize,
}

impl core::fmt::Display for LengthMismatch {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "tensor {}: {} has {} elements, the parameter has {}",
            self.index, self.what, self.got, self.expected
        )
    }
}

impl std::error::Error for LengthMismatch {}

/// One tensor's coefficients under `rule`, in the update's dtype `T`, formed as Paddle forms
/// them (every operation in `T`).
fn coefficients<T: Lane>(rule: Rule, h: Hyper) -> Coefficients<T> {
    let lr = T::from_f64(h.lr);
    let weight_decay = T::from_f64(h.weight_decay);
    match rule {
        Rule::Sgd => Coefficients::Sgd(update::Sgd { lr, weight_decay }),
        Rule::Momentum { mu, nesterov } => Coefficients::Momentum(update::Momentum {
            lr,
            weight_decay,
            momentum: T::from_f64(mu),
            nesterov,
        }),
        Rule::Adam {
            beta1,
            beta2,
            epsilon,
            decoupled,
        } => {
            // Paddle: T beta1_p = beta1_pow[0]; learning_rate = lr * (sqrt(1 - beta2_p) /
            // (1 - beta1_p)); eps = epsilon * sqrt(1 - beta2_p); all in T.
            let (beta1_pow, beta2_pow) = (T::from_f64(h.beta1_pow), T::from_f64(h.beta2_pow));
            let root = (T::ONE - beta2_pow).sqrt();
            let (beta1, beta2) = (T::from_f64(beta1), T::from_f64(beta2));
            Coefficients::Adam(update::Adam {
                // AdamW decays the parameter instead (lr_ratio = 1), with no L2 term
                weight_decay: if decoupled { T::ZERO } else { weight_decay },
                decoupled_decay: decoupled.then(|| lr * weight_decay),
                beta1,
                one_minus_beta1: T::ONE - beta1,
                beta2,
                one_minus_beta2: T::ONE - beta2,
                neg_lr_t: -(lr * (root / (T::ONE - beta1_pow))),
                eps_t: T::from_f64(epsilon) * root,
            })
        }
    }
}

/// Take the first `n` elements (or all, if fewer) off the front of `s`.
fn cut<'a, T>(s: &mut &'a mut [T], n: usize) -> &'a mut [T] {
    let k = n.min(s.len());
    let (head, tail) = core::mem::take(s).split_at_mut(k);
    *s = tail;
    head
}

/// Cut one tensor's buffers into pieces of at most `n` elements, all at the same offsets.
fn pieces<T>(mut s: Slots<'_, T>, n: usize) -> Vec<Slots<'_, T>> {
    let mut out = Vec::with_capacity(s.param.len().div_ceil(n));
    while !s.param.is_empty() {
        let param = cut(&mut s.param, n);
        let (grad, rest) = s.grad.split_at(param.len());
        s.grad = rest;
        out.push(Slots {
            param,
            grad,
            state1: cut(&mut s.state1, n),
            state2: cut(&mut s.state2, n),
        });
    }
    out
}

enum Piece<'a> {
    F32(Slots<'a, f32>, Coefficients<f32>),
    F64(Slots<'a, f64>, Coefficients<f64>),
}

impl Piece<'_> {
    fn len(&self) -> usize {
        match self {
            Piece::F32(s, _) => s.param.len(),
            Piece::F64(s, _) => s.param.len(),
        }
    }
}

fn check_lengths<T>(index: usize, s: &Slots<'_, T>, states: usize) -> Result<(), LengthMismatch> {
    let n = s.param.len();
    let want = |what, got: usize, expected| {
        if got == expected {
            Ok(())
        } else {
            Err(LengthMismatch {
                index,
                what,
                expected,
                got,
            })
        }
    };
    want("grad", s.grad.len(), n)?;
    want("state1", s.state1.len(), if states >= 1 { n } else { 0 })?;
    want("state2", s.state2.len(), if states >= 2 { n } else { 0 })
}

/// Update every tensor of `updates` in place under `rule`, in parallel where it pays.
///
/// Every tensor's buffer lengths are checked first (the gradient and the states the rule needs
/// must match the parameter; unused state slots must be empty); on a mismatch nothing is touched.
pub fn step(updates: Vec<Update<'_>>, rule: Rule) -> Result<(), LengthMismatch> {
    step_with(updates, rule, isa::current())
}

/// [`step`] with an explicit ISA (tests and benchmarks).
pub fn step_with(updates: Vec<Update<'_>>, rule: Rule, isa: Isa) -> Result<(), LengthMismatch> {
    let states = rule.states();
    for (i, u) in updates.iter().enumerate() {
        match u {
            Update::F32(s, _) => check_lengths(i, s, states)?,
            Update::F64(s, _) => check_lengths(i, s, states)?,
        }
    }
    let mut items = Vec::new();
    let mut total = 0;
    let tensors = updates.len();
    for u in updates {
        match u {
            Update::F32(s, h) => {
                total += s.param.len();
                let c = coefficients(rule, h);
                items.extend(pieces(s, CHUNK).into_iter().map(|p| Piece::F32(p, c)));
            }
            Update::F64(s, h) => {
                total += s.param.len();
                let c = coefficients(rule, h);
                items.extend(pieces(s, CHUNK).into_iter().map(|p| Piece::F64(p, c)));
            }
        }
    }
    multi::run(items, total, tensors, Piece::len, |p| match p {
        Piece::F32(s, c) => update::apply(s, c, isa),
        Piece::F64(s, c) => update::apply(s, c, isa),
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random data in [-scale, scale).
    fn data(n: usize, seed: u64, scale: f64) -> Vec<f64> {
        crate::testing::uniform(n, seed, -scale, scale)
    }

    /// Scalar f64 reference, written from the formulas (not from the kernel).
    fn reference(rule: Rule, h: Hyper, p: &mut [f64], g: &[f64], s1: &mut [f64], s2: &mut [f64]) {
        for i in 0..p.len() {
            match rule {
                Rule::Sgd => p[i] -= h.lr * (g[i] + h.weight_decay * p[i]),
                Rule::Momentum { mu, nesterov } => {
                    let gd = g[i] + h.weight_decay * p[i];
                    s1[i] = mu * s1[i] + gd;
                    p[i] -= h.lr * if nesterov { gd + mu * s1[i] } else { s1[i] };
                }
                Rule::Adam {
                    beta1,
                    beta2,
                    epsilon,
                    decoupled,
                } => {
                    let (gd, pd) = if decoupled {
                        (g[i], p[i] * (1.0 - h.lr * h.weight_decay))
                    } else {
                        (g[i] + h.weight_decay * p[i], p[i])
                    };
                    s1[i] = beta1 * s1[i] + (1.0 - beta1) * gd;
                    s2[i] = beta2 * s2[i] + (1.0 - beta2) * gd * gd;
                    let mhat = s1[i] / (1.0 - h.beta1_pow);
                    let vhat = s2[i] / (1.0 - h.beta2_pow);
                    // Paddle's eps * sqrt(1 - beta2^t) is eps on the bias-corrected scale.
                    p[i] = pd - h.lr * mhat / (vhat.sqrt() + epsilon);
                }
            }
        }
    }

    const RULES: [Rule; 6] = [
        Rule::Sgd,
        Rule::Momentum {
            mu: 0.9,
            nesterov: false,
        },
        Rule::Momentum {
            mu: 0.8,
            nesterov: true,
        },
        Rule::Adam {
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            decoupled: false,
        },
        Rule::Adam {
            beta1: 0.8,
            beta2: 0.99,
            epsilon: 1e-6,
            decoupled: true,
        },
        Rule::Adam {
            beta1: 0.0,
            beta2: 0.5,
            epsilon: 0.0,
            decoupled: false,
        },
    ];

    fn hyper(rule: Rule, t: i32, wd: f64) -> Hyper {
        let (b1, b2) = match rule {
            Rule::Adam { beta1, beta2, .. } => (beta1, beta2),
            _ => (0.0, 0.0),
        };
        Hyper {
            lr: 0.05,
            weight_decay: wd,
            beta1_pow: b1.powi(t),
            beta2_pow: b2.powi(t),
        }
    }

    /// Run `steps` steps of `rule` on f64 buffers with the kernel and the reference.
    fn f64_matches_reference(rule: Rule, wd: f64, n: usize, isa: Isa) {
        let mut p = data(n, 1, 2.0);
        let mut s1 = vec![0.0; if rule.states() >= 1 { n } else { 0 }];
        let mut s2 = vec![0.0; if rule.states() >= 2 { n } else { 0 }];
        let (mut rp, mut r1, mut r2) = (p.clone(), vec![0.0; n], vec![0.0; n]);
        for t in 1..=4 {
            let g = data(n, 10 + t as u64, 1.0);
            let g_before = g.clone();
            let h = hyper(rule, t, wd);
            let u = Update::F64(
                Slots {
                    param: &mut p,
                    grad: &g,
                    state1: &mut s1,
                    state2: &mut s2,
                },
                h,
            );
            step_with(vec![u], rule, isa).unwrap();
            reference(rule, h, &mut rp, &g, &mut r1, &mut r2);
            assert_eq!(g, g_before, "the gradient must not be modified");
        }
        for (a, b) in p.iter().zip(&rp) {
            assert!(
                (a - b).abs() <= 1e-12 * b.abs().max(1.0),
                "{rule:?} wd={wd}: {a} vs {b}"
            );
        }
    }

    #[test]
    fn every_rule_matches_the_scalar_reference_on_every_isa() {
        for isa in Isa::available() {
            for rule in RULES {
                for wd in [0.0, 0.1] {
                    for n in [0, 1, 7, 100, CHUNK + 3] {
                        f64_matches_reference(rule, wd, n, isa);
                    }
                }
            }
        }
    }

    #[test]
    fn f32_follows_the_reference_to_f32_precision() {
        let n = 1000;
        for rule in RULES {
            let p0 = data(n, 3, 1.0);
            let g = data(n, 4, 1.0);
            let mut p: Vec<f32> = p0.iter().map(|&x| x as f32).collect();
            let gf: Vec<f32> = g.iter().map(|&x| x as f32).collect();
            let mut s1 = vec![0f32; if rule.states() >= 1 { n } else { 0 }];
            let mut s2 = vec![0f32; if rule.states() >= 2 { n } else { 0 }];
            let mut rp: Vec<f64> = p.iter().map(|&x| x as f64).collect();
            let rg: Vec<f64> = gf.iter().map(|&x| x as f64).collect();
            let (mut r1, mut r2) = (vec![0.0; n], vec![0.0; n]);
            let h = hyper(rule, 1, 0.01);
            let u = Update::F32(
                Slots {
                    param: &mut p,
                    grad: &gf,
                    state1: &mut s1,
                    state2: &mut s2,
                },
                h,
            );
            step(vec![u], rule).unwrap();
            reference(rule, h, &mut rp, &rg, &mut r1, &mut r2);
            for (a, b) in p.iter().zip(&rp) {
                assert!(((*a as f64) - b).abs() <= 1e-6 * b.abs().max(1.0));
            }
        }
    }

    #[test]
    fn paddle_first_steps_by_hand() {
        // paddle-semantics.md §6: lr=1, p=[10,0], g=[3,4] clipped by value to 1 -> g=[1,1].
        let g = [1.0f64, 1.0];
        // SGD weight_decay=0.5: p - (g + 0.5 p) = [4.0, -1.0]
        let mut p = [10.0f64, 0.0];
        let u = Update::F64(
            Slots {
                param: &mut p,
                grad: &g,
                state1: &mut [],
                state2: &mut [],
            },
            Hyper::new(1.0, 0.5),
        );
        step(vec![u], Rule::Sgd).unwrap();
        assert_eq!(p, [4.0, -1.0]);
        // AdamW weight_decay=0.5: p(1 - 0.5) - lr * sign(g) (first step, eps = 0) = [4.0, -1.0]
        let mut p = [10.0f64, 0.0];
        let (mut m1, mut m2) = ([0.0; 2], [0.0; 2]);
        let h = Hyper {
            lr: 1.0,
            weight_decay: 0.5,
            beta1_pow: 0.9,
            beta2_pow: 0.999,
        };
        let rule = Rule::Adam {
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 0.0,
            decoupled: true,
        };
        let u = Update::F64(
            Slots {
                param: &mut p,
                grad: &g,
                state1: &mut m1,
                state2: &mut m2,
            },
            h,
        );
        step(vec![u], rule).unwrap();
        assert!(
            (p[0] - 4.0).abs() < 1e-12 && (p[1] + 1.0).abs() < 1e-12,
            "{p:?}"
        );
    }

    #[test]
    fn a_length_mismatch_touches_nothing() {
        let mut a = vec![1.0f32; 4];
        let mut b = vec![2.0f32; 3];
        let g = vec![1.0f32; 3];
        let mut v = vec![0.0f32; 3];
        let mut v2 = vec![0.0f32; 3];
        let rule = Rule::Momentum {
            mu: 0.9,
            nesterov: false,
        };
        let err = step(
            vec![
                Update::F32(
                    Slots {
                        param: &mut b,
                        grad: &g,
                        state1: &mut v2,
                        state2: &mut [],
                    },
                    Hyper::new(1.0, 0.0),
                ),
                Update::F32(
                    Slots {
                        param: &mut a,
                        grad: &g,
                        state1: &mut v,
                        state2: &mut [],
                    },
                    Hyper::new(1.0, 0.0),
                ),
            ],
            rule,
        )
        .unwrap_err();
        assert_eq!(
            (err.index, err.what, err.expected, err.got),
            (1, "grad", 4, 3)
        );
        assert_eq!(a, vec![1.0; 4]);
        assert_eq!(b, vec![2.0; 3]);
        assert_eq!(v2, vec![0.0; 3]);
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        // Enough elements (many tensors, some spanning chunks) to go parallel.
        let sizes = [3, CHUNK * 3 + 5, 1000, CHUNK * 4, 17, 200_000];
        let rule = Rule::Adam {
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            decoupled: true,
        };
        let run = |threads: usize| {
            let mut ps: Vec<Vec<f32>> = sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| data(n, i as u64, 1.0).iter().map(|&x| x as f32).collect())
                .collect();
            let gs: Vec<Vec<f32>> = sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| {
                    data(n, 50 + i as u64, 1.0)
                        .iter()
                        .map(|&x| x as f32)
                        .collect()
                })
                .collect();
            let mut m1: Vec<Vec<f32>> = sizes.iter().map(|&n| vec![0.0; n]).collect();
            let mut m2: Vec<Vec<f32>> = sizes.iter().map(|&n| vec![0.0; n]).collect();
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| {
                    for t in 1..=3 {
                        let updates = ps
                            .iter_mut()
                            .zip(&gs)
                            .zip(m1.iter_mut().zip(m2.iter_mut()))
                            .map(|((p, g), (a, b))| {
                                Update::F32(
                                    Slots {
                                        param: p,
                                        grad: g,
                                        state1: a,
                                        state2: b,
                                    },
                                    Hyper {
                                        lr: 0.01,
                                        weight_decay: 0.01,
                                        beta1_pow: 0.9f64.powi(t),
                                        beta2_pow: 0.999f64.powi(t),
                                    },
                                )
                            })
                            .collect();
                        step(updates, rule).unwrap();
                    }
                });
            (ps, m1, m2)
        };
        let one = run(1);
        assert!(one.0.iter().flatten().any(|&x| x != 0.0));
        assert_eq!(one, run(2));
        assert_eq!(one, run(3));
    }
}
