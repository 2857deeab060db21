//! Binding for the fused optimizer updates ([`crate::optim`]): `sgd_`, `momentum_`, `adam_`.
//!
//! Each entry point takes whole lists (parameters, gradients, state arrays) and checks all of
//! them before touching any: every array as the shared `check` does (dtype, byte order,
//! alignment, writeability of what is written), then per tensor the same dtype (float32 or
//! float64) and shape for the parameter, its gradient and its states, and that nothing written
//! (parameters, states) shares memory with anything else of the call, gradients included (a
//! gradient aliasing its parameter would change under the update). Then the GIL is released and
//! the whole update runs as one engine call. No optimizer policy lives here.

use numpy::{PyUntypedArray, PyUntypedArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};

use super::{Buf, DType, Owned, check};
use crate::claims;
use crate::multi::{Tensor, TensorMut};
use crate::optim::{self, Hyper, Rule, Slots, Update};

/// A hyperparameter given once for every tensor, or once per tensor.
#[derive(FromPyObject)]
pub(super) enum PerTensor {
    One(f64),
    Each(Vec<f64>),
}

impl PerTensor {
    fn expand(self, n: usize, name: &str) -> PyResult<Vec<f64>> {
        match self {
            PerTensor::One(v) => Ok(vec![v; n]),
            PerTensor::Each(v) if v.len() == n => Ok(v),
            PerTensor::Each(v) => Err(PyValueError::new_err(format!(
                "{name} has {} values for {n} parameters",
                v.len()
            ))),
        }
    }
}

/// The shapes of a list or tuple of arrays (already checked to be arrays).
fn shapes(arrays: &Bound<'_, PyAny>) -> Vec<Vec<usize>> {
    let items: Vec<Bound<'_, PyAny>> = if let Ok(l) = arrays.cast::<PyList>() {
        l.iter().collect()
    } else if let Ok(t) = arrays.cast::<PyTuple>() {
        t.iter().collect()
    } else {
        Vec::new()
    };
    items
        .iter()
        .map(|a| {
            a.cast::<PyUntypedArray>()
                .map(|a| a.shape().to_vec())
                .unwrap_or_default()
        })
        .collect()
}

/// A shape as Python writes it: `(3,)`, `(2, 3)`, `()`.
fn shape_str(s: &[usize]) -> String {
    match s {
        [n] => format!("({n},)"),
        _ => format!(
            "({})",
            s.iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "float32",
        DType::F64 => "float64",
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
    }
}

/// One list of the call: its name, its checked buffers, whether the update writes it.
struct List {
    name: &'static str,
    bufs: Vec<Buf>,
    write: bool,
}

/// Check every list (params first, grads second, then the states) and how they fit together.
fn check_lists(lists: &[(&Bound<'_, PyAny>, &'static str, bool)]) -> PyResult<Vec<List>> {
    let mut out = Vec::with_capacity(lists.len());
    for &(arrays, name, write) in lists {
        // A written list gets the usual in-place checks (writeable, no overlap within it); the
        // overlaps between lists are checked below.
        out.push(List {
            name,
            bufs: check(arrays, name, None, write)?,
            write,
        });
    }
    let n = out[0].bufs.len();
    for l in &out[1..] {
        if l.bufs.len() != n {
            return Err(PyValueError::new_err(format!(
                "got {} {} for {n} params; pass one per parameter",
                l.bufs.len(),
                l.name
            )));
        }
    }
    for (i, p) in out[0].bufs.iter().enumerate() {
        if !matches!(p.dtype, DType::F32 | DType::F64) {
            return Err(PyTypeError::new_err(format!(
                "params[{i}] has dtype {}; the optimizers update float32 and float64 parameters",
                dtype_name(p.dtype)
            )));
        }
        for l in &out[1..] {
            if l.bufs[i].dtype != p.dtype {
                return Err(PyTypeError::new_err(format!(
                    "{}[{i}] has dtype {} but params[{i}] has dtype {}; they must match",
                    l.name,
                    dtype_name(l.bufs[i].dtype),
                    dtype_name(p.dtype)
                )));
            }
        }
    }
    let param_shapes = shapes(lists[0].0);
    for (k, l) in out.iter().enumerate().skip(1) {
        for (i, (s, ps)) in shapes(lists[k].0).iter().zip(&param_shapes).enumerate() {
            if s != ps {
                return Err(PyValueError::new_err(format!(
                    "{}[{i}] has shape {} but params[{i}] has shape {}; they must match",
                    l.name,
                    shape_str(s),
                    shape_str(ps)
                )));
            }
        }
    }
    check_no_shared_writes(&out)?;
    Ok(out)
}

/// Nothing the update writes may share a byte with anything else of the call.
fn check_no_shared_writes(lists: &[List]) -> PyResult<()> {
    let mut ranges: Vec<(usize, usize, usize, usize)> = Vec::new(); // (lo, hi, list, index)
    for (k, l) in lists.iter().enumerate() {
        for (i, b) in l.bufs.iter().enumerate() {
            if b.len > 0 {
                let (lo, hi) = b.byte_range();
                ranges.push((lo, hi, k, i));
            }
        }
    }
    ranges.sort_unstable();
    let mut active: Vec<(usize, usize, usize)> = Vec::new(); // (hi, list, index)
    for &(lo, hi, k, i) in &ranges {
        active.retain(|&(end, _, _)| end > lo);
        for &(_, k2, i2) in &active {
            if lists[k].write || lists[k2].write {
                let (a, b) = ((k2, i2).min((k, i)), (k2, i2).max((k, i)));
                return Err(PyValueError::new_err(format!(
                    "{}[{}] and {}[{}] share memory; the update writes {} in place. Pass separate arrays",
                    lists[a.0].name,
                    a.1,
                    lists[b.0].name,
                    b.1,
                    if lists[a.0].write {
                        lists[a.0].name
                    } else {
                        lists[b.0].name
                    }
                )));
            }
        }
        active.push((hi, k, i));
    }
    Ok(())
}

/// Run `rule` over the checked lists (params, grads, then `rule.states()` state lists).
fn run(py: Python<'_>, lists: Vec<List>, rule: Rule, hyper: Vec<Hyper>) -> PyResult<()> {
    let result = py.detach(|| {
        // Every byte of the call, claimed as written: the claim is taken whole, so it cannot
        // deadlock against another call's, and reads of the gradients are covered too.
        let _claim = claims::claim(
            lists
                .iter()
                .flat_map(|l| l.bufs.iter().map(Buf::byte_range)),
            true,
        );
        let mut owned: Vec<Vec<Option<Owned>>> = lists
            .iter()
            .map(|l| l.bufs.iter().map(Buf::gather).collect())
            .collect();
        let (head, states) = owned.split_at_mut(2);
        let (p_owned, g_owned) = head.split_at_mut(1);
        let mut state_iters: Vec<_> = states.iter_mut().map(|s| s.iter_mut()).collect();
        let mut updates = Vec::with_capacity(lists[0].bufs.len());
        for (i, (po, go)) in p_owned[0].iter_mut().zip(g_owned[0].iter()).enumerate() {
            // SAFETY: every array is live for the call (the caller's lists hold them), the
            // written ones are writeable and share no byte with any other buffer (checked).
            let p = unsafe { lists[0].bufs[i].tensor_mut(po.as_mut()) };
            let g = unsafe { lists[1].bufs[i].tensor(go.as_ref()) };
            let mut st: Vec<TensorMut<'_>> = state_iters
                .iter_mut()
                .enumerate()
                .map(|(k, it)| {
                    let o = it.next().expect("one state per parameter");
                    unsafe { lists[2 + k].bufs[i].tensor_mut(o.as_mut()) }
                })
                .collect();
            let s2 = if st.len() > 1 { st.pop() } else { None };
            let s1 = st.pop();
            let h = hyper[i];
            updates.push(match (p, g) {
                (TensorMut::F32(param), Tensor::F32(grad)) => Update::F32(
                    Slots {
                        param,
                        grad,
                        state1: match s1 {
                            Some(TensorMut::F32(s)) => s,
                            _ => &mut [],
                        },
                        state2: match s2 {
                            Some(TensorMut::F32(s)) => s,
                            _ => &mut [],
                        },
                    },
                    h,
                ),
                (TensorMut::F64(param), Tensor::F64(grad)) => Update::F64(
                    Slots {
                        param,
                        grad,
                        state1: match s1 {
                            Some(TensorMut::F64(s)) => s,
                            _ => &mut [],
                        },
                        state2: match s2 {
                            Some(TensorMut::F64(s)) => s,
                            _ => &mut [],
                        },
                    },
                    h,
                ),
                _ => unreachable!("dtypes were checked"),
            });
        }
        let r = optim::step(updates, rule);
        if r.is_ok() {
            for (l, o) in lists.iter().zip(&owned) {
                if l.write {
                    for (b, o) in l.bufs.iter().zip(o) {
                        if let Some(o) = o {
                            b.scatter(o);
                        }
                    }
                }
            }
        }
        r
    });
    result.map_err(|e| PyValueError::new_err(e.to_string()))
}

fn hypers(
    n: usize,
    lr: PerTensor,
    weight_decay: PerTensor,
    pows: Option<(PerTensor, PerTensor)>,
) -> PyResult<Vec<Hyper>> {
    let lr = lr.expand(n, "lr")?;
    let wd = weight_decay.expand(n, "weight_decay")?;
    let (b1, b2) = match pows {
        Some((b1, b2)) => (b1.expand(n, "beta1_pow")?, b2.expand(n, "beta2_pow")?),
        None => (vec![0.0; n], vec![0.0; n]),
    };
    Ok((0..n)
        .map(|i| Hyper {
            lr: lr[i],
            weight_decay: wd[i],
            beta1_pow: b1[i],
            beta2_pow: b2[i],
        })
        .collect())
}

/// sgd_(params, grads, lr, weight_decay=0.0): p -= lr * (g + weight_decay * p), in place.
#[pyfunction]
#[pyo3(signature = (params, grads, lr, weight_decay=PerTensor::One(0.0)))]
pub(super) fn sgd_(
    py: Python<'_>,
    params: &Bound<'_, PyAny>,
    grads: &Bound<'_, PyAny>,
    lr: PerTensor,
    weight_decay: PerTensor,
) -> PyResult<()> {
    let lists = check_lists(&[(params, "params", true), (grads, "grads", false)])?;
    let h = hypers(lists[0].bufs.len(), lr, weight_decay, None)?;
    run(py, lists, Rule::Sgd, h)
}

/// momentum_(params, grads, velocities, lr, mu, nesterov=False, weight_decay=0.0), in place.
#[pyfunction]
#[pyo3(signature = (params, grads, velocities, lr, mu, nesterov=false, weight_decay=PerTensor::One(0.0)))]
#[allow(clippy::too_many_arguments)]
pub(super) fn momentum_(
    py: Python<'_>,
    params: &Bound<'_, PyAny>,
    grads: &Bound<'_, PyAny>,
    velocities: &Bound<'_, PyAny>,
    lr: PerTensor,
    mu: f64,
    nesterov: bool,
    weight_decay: PerTensor,
) -> PyResult<()> {
    let lists = check_lists(&[
        (params, "params", true),
        (grads, "grads", false),
        (velocities, "velocities", true),
    ])?;
    let h = hypers(lists[0].bufs.len(), lr, weight_decay, None)?;
    run(py, lists, Rule::Momentum { mu, nesterov }, h)
}

/// adam_(params, grads, moment1, moment2, lr, beta1, beta2, epsilon, beta1_pow, beta2_pow,
/// weight_decay=0.0, decoupled=False), in place (AdamW when `decoupled`).
#[pyfunction]
#[pyo3(signature = (
    params, grads, moment1, moment2, lr, beta1, beta2, epsilon, beta1_pow, beta2_pow,
    weight_decay=PerTensor::One(0.0), decoupled=false
))]
#[allow(clippy::too_many_arguments)]
pub(super) fn adam_(
    py: Python<'_>,
    params: &Bound<'_, PyAny>,
    grads: &Bound<'_, PyAny>,
    moment1: &Bound<'_, PyAny>,
    moment2: &Bound<'_, PyAny>,
    lr: PerTensor,
    beta1: f64,
    beta2: f64,
    epsilon: f64,
    beta1_pow: PerTensor,
    beta2_pow: PerTensor,
    weight_decay: PerTensor,
    decoupled: bool,
) -> PyResult<()> {
    let lists = check_lists(&[
        (params, "params", true),
        (grads, "grads", false),
        (moment1, "moment1", true),
        (moment2, "moment2", true),
    ])?;
    let h = hypers(
        lists[0].bufs.len(),
        lr,
        weight_decay,
        Some((beta1_pow, beta2_pow)),
    )?;
    let rule = Rule::Adam {
        beta1,
        beta2,
        epsilon,
        decoupled,
    };
    run(py, lists, rule, h)
}
