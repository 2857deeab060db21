//! Binding for the fused optimizer updates ([`crate::optim`]): `sgd_`, `momentum_`, `adam_`.
//!
//! Each entry point takes whole lists (parameters, gradients, state arrays) and checks all of
//! them before touching any: every array as the shared `check` does (dtype, byte order,
//! alignment, writeability of what is written), then per tensor the same dtype (float32 or
//! float64) and shape for the parameter, its gradient and its states, and that nothing written
//! (parameters, states) shares memory with anything else of the call, gradients included (a
//! gradient aliasing its parameter would change under the update). Then the GIL is released and
//! the whole update runs as one engine call. No optimizer policy lives here.

use numpy::PyUntypedArrayMethods;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

use super::args::PerTensor;
use super::buffers::{
    Buf, Checked, DType, NoCopy, Owned, check, copies, scatter_back, tensor, tensor_mut,
};
use super::guard::guard;
use crate::claims;
use crate::multi::{Tensor, TensorMut};
use crate::optim::{self, Hyper, Rule, Slots, Update};
use crate::strided::StridedView;

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

/// One list of the call: its name, its checked arrays, whether the update writes it.
struct List<'py> {
    name: &'static str,
    c: Checked<'py>,
    write: bool,
}

/// Check every list (params first, grads second, then the states) and how they fit together.
/// Each list is read once, by its checks; shapes come from the arrays checked.
fn check_lists<'py>(
    lists: &[(&Bound<'py, PyAny>, &'static str, bool)],
) -> PyResult<Vec<List<'py>>> {
    let mut out = Vec::with_capacity(lists.len());
    for &(arrays, name, write) in lists {
        // A written list gets the usual in-place checks (writeable, no overlap within it); the
        // overlaps between lists are checked below.
        let c = check(arrays, name, None, write)?;
        if write {
            // an element written from two different positions would get either result
            if let Some(i) = c.bufs.iter().position(|b| {
                b.strided
                    .as_ref()
                    .is_some_and(|v| v.may_overlap_itself(b.dtype.itemsize()))
            }) {
                return Err(PyValueError::new_err(format!(
                    "{name}[{i}] names some of its elements more than once (a broadcast or overlapping-strides view); the update writes it in place. Pass a contiguous array (np.ascontiguousarray)"
                )));
            }
        }
        out.push(List { name, c, write });
    }
    let n = out[0].c.bufs.len();
    for l in &out[1..] {
        if l.c.bufs.len() != n {
            return Err(PyValueError::new_err(format!(
                "got {} {} for {n} params; pass one per parameter",
                l.c.bufs.len(),
                l.name
            )));
        }
    }
    for (i, p) in out[0].c.bufs.iter().enumerate() {
        if !matches!(p.dtype, DType::F32 | DType::F64) {
            return Err(PyTypeError::new_err(format!(
                "params[{i}] has dtype {}; the optimizers update float32 and float64 parameters",
                p.dtype.name()
            )));
        }
        for l in &out[1..] {
            if l.c.bufs[i].dtype != p.dtype {
                return Err(PyTypeError::new_err(format!(
                    "{}[{i}] has dtype {} but params[{i}] has dtype {}; they must match",
                    l.name,
                    l.c.bufs[i].dtype.name(),
                    p.dtype.name()
                )));
            }
        }
    }
    for l in &out[1..] {
        for i in 0..n {
            let (a, pa) = (l.c.array(i), out[0].c.array(i));
            let (s, ps) = (a.shape(), pa.shape());
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

/// How each array of each tensor is walked: `None` in place (memory order), `Some(view)`
/// through a copy in C order. An elementwise update pairs the i-th elements of a parameter, its
/// gradient and its states, so all of a tensor's arrays must be walked in one order: memory
/// order when they share it (all C- or all F-contiguous), else C order, copying every array
/// that is not C-contiguous.
fn layouts(lists: &[List<'_>]) -> Vec<Vec<Option<StridedView>>> {
    let n = lists[0].c.bufs.len();
    let mut out: Vec<Vec<Option<StridedView>>> =
        lists.iter().map(|_| Vec::with_capacity(n)).collect();
    for i in 0..n {
        let bufs = || lists.iter().map(|l| &l.c.bufs[i]);
        let contiguous = bufs().all(|b| b.strided.is_none());
        let shared = contiguous && (bufs().all(|b| b.c_order) || bufs().all(|b| b.f_order));
        for (l, o) in lists.iter().zip(out.iter_mut()) {
            let b = &l.c.bufs[i];
            o.push(if shared || b.c_order {
                None
            } else if let Some(v) = &b.strided {
                Some((**v).clone())
            } else {
                // Fortran-contiguous while another array of the tensor is not
                let a = l.c.array(i);
                Some(StridedView {
                    ptr: b.ptr,
                    shape: a.shape().to_vec(),
                    strides: a.strides().to_vec(),
                })
            });
        }
    }
    out
}

/// Nothing the update writes may share a byte with anything else of the call.
fn check_no_shared_writes(lists: &[List<'_>]) -> PyResult<()> {
    let mut ranges: Vec<(usize, usize, usize, usize)> = Vec::new(); // (lo, hi, list, index)
    for (k, l) in lists.iter().enumerate() {
        for (i, b) in l.c.bufs.iter().enumerate() {
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
/// Every copy is made before anything is written: one that cannot be allocated changes nothing.
fn run(py: Python<'_>, lists: Vec<List<'_>>, rule: Rule, hyper: Vec<Hyper>) -> PyResult<()> {
    let views = layouts(&lists);
    // what the passes need (the lists themselves hold the Python token, which stays here)
    let bufs: Vec<&[Buf]> = lists.iter().map(|l| l.c.bufs.as_slice()).collect();
    let writes: Vec<bool> = lists.iter().map(|l| l.write).collect();
    let (bufs, writes) = (&bufs, &writes);
    let result = py.detach(|| {
        // Every byte of the call, claimed as written: the claim is taken whole, so it cannot
        // deadlock against another call's, and reads of the gradients are covered too.
        let _claim = claims::claim(
            bufs.iter().flat_map(|l| l.iter().map(Buf::byte_range)),
            true,
        );
        let mut owned: Vec<Vec<Option<Owned>>> = Vec::with_capacity(bufs.len());
        for (k, (l, vs)) in bufs.iter().zip(&views).enumerate() {
            let list = l.iter().zip(vs).map(|(b, v)| (b.dtype, v.as_ref()));
            // SAFETY: every view describes live memory of an array the call holds.
            owned.push(unsafe { copies(list, k)? });
        }
        let (head, states) = owned.split_at_mut(2);
        let (p_owned, g_owned) = head.split_at_mut(1);
        let mut state_iters: Vec<_> = states.iter_mut().map(|s| s.iter_mut()).collect();
        let mut updates = Vec::with_capacity(bufs[0].len());
        for (i, (po, go)) in p_owned[0].iter_mut().zip(g_owned[0].iter()).enumerate() {
            // SAFETY: every array is live for the call (the call holds it), the written ones
            // are writeable, name no element twice and share no byte with any other buffer
            // (checked); each is walked in the order its tensor's arrays agree on (`layouts`).
            let (pb, gb) = (&bufs[0][i], &bufs[1][i]);
            // SAFETY: see above: live, writeable, disjoint, walked in the agreed order.
            let p = unsafe { tensor_mut(pb.dtype, pb.ptr, pb.len, po.as_mut()) };
            // SAFETY: as above (the grad is only read).
            let g = unsafe { tensor(gb.dtype, gb.ptr, gb.len, go.as_ref()) };
            let mut st: Vec<TensorMut<'_>> = state_iters
                .iter_mut()
                .enumerate()
                .map(|(k, it)| {
                    let o = it.next().expect("one state per parameter");
                    let b = &bufs[2 + k][i];
                    // SAFETY: as above: a live, writeable state array disjoint from the others.
                    unsafe { tensor_mut(b.dtype, b.ptr, b.len, o.as_mut()) }
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
            for ((w, o), vs) in writes.iter().zip(&owned).zip(&views) {
                if *w {
                    // SAFETY: as above; the update is done with the copies.
                    unsafe { scatter_back(vs.iter().map(Option::as_ref), o) };
                }
            }
        }
        Ok::<_, NoCopy>(r)
    });
    match result {
        Err(e) => {
            let name = lists[e.list].name;
            Err(e.into_err(name, None))
        }
        Ok(r) => r.map_err(|e| PyValueError::new_err(e.to_string())),
    }
}

fn hypers(
    n: usize,
    lr: PerTensor,
    weight_decay: PerTensor,
    pows: Option<(PerTensor, PerTensor)>,
) -> PyResult<Vec<Hyper>> {
    let zero = (PerTensor::One(0.0), PerTensor::One(0.0));
    let (b1, b2) = pows.unwrap_or(zero);
    for (v, name) in [
        (&lr, "lr"),
        (&weight_decay, "weight_decay"),
        (&b1, "beta1_pow"),
        (&b2, "beta2_pow"),
    ] {
        v.fits(n).map_err(|got| {
            PyValueError::new_err(format!("{name} has {got} values for {n} parameters"))
        })?;
    }
    Ok((0..n)
        .map(|i| Hyper {
            lr: lr.at(i),
            weight_decay: weight_decay.at(i),
            beta1_pow: b1.at(i),
            beta2_pow: b2.at(i),
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
    guard(|| {
        let lists = check_lists(&[(params, "params", true), (grads, "grads", false)])?;
        let h = hypers(lists[0].c.bufs.len(), lr, weight_decay, None)?;
        run(py, lists, Rule::Sgd, h)
    })
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
    guard(|| {
        let lists = check_lists(&[
            (params, "params", true),
            (grads, "grads", false),
            (velocities, "velocities", true),
        ])?;
        let h = hypers(lists[0].c.bufs.len(), lr, weight_decay, None)?;
        run(py, lists, Rule::Momentum { mu, nesterov }, h)
    })
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
    guard(|| {
        let lists = check_lists(&[
            (params, "params", true),
            (grads, "grads", false),
            (moment1, "moment1", true),
            (moment2, "moment2", true),
        ])?;
        let h = hypers(
            lists[0].c.bufs.len(),
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
    })
}
