//! The PyO3 binding: check every array, take raw slices, release the GIL, call the engine.
//!
//! No clipping policy lives here. Each entry point takes a whole Python list of arrays so that
//! thousands of tensors cost one call, one GIL release and one rayon scope. Every array is
//! checked before any is touched: dtype, byte order, alignment, writeability (for in-place
//! calls) and, for in-place calls, that no two arrays share memory.
//!
//! This file is the function table. Beside it: `buffers` (what a checked array is, the checks,
//! what keeps the arrays alive, the strided copies), `overlap` (disjointness of in-place
//! arrays), `passes` (the norm and in-place passes under a claim), `args` (shared non-array
//! arguments), `guard` (the panic guard) and `optim` (the optimizer entry points).
//!
//! # What a call guarantees about the memory it works on
//!
//! The passes read `PyArrayObject` fields and raw pointers (rust-numpy's borrow tracking costs
//! per array), with the GIL released, so the binding carries these guarantees itself:
//!
//! - **The arrays stay alive.** The list (or tuple) is read once, by the checks; from then on
//!   the call works on what it checked and holds two strong references to every array until it
//!   returns ([`buffers::Checked`]). Clearing or mutating the list, `del`, a signal handler or the
//!   `coefficient` callback of `norm_scale_` dropping the last other reference: none of these
//!   frees memory a pass uses, and none changes which buffers a pass writes. An array's memory
//!   owner lives as long as the array: NumPy keeps it in `.base` (a view's parent, a
//!   `bytearray`, an `mmap` (which then refuses to close), or, for `np.from_dlpack`, the
//!   capsule that keeps the producer's tensor alive), so holding the array is enough.
//! - **`resize` fails.** NumPy's `ndarray.resize` (with its default `refcheck=True`) refuses an
//!   array with more than two references; it counts two for the caller's own name and the
//!   call. A caller can resize an array it holds through a temporary only
//!   (`grads.pop().resize(n)`: one reference); the call's two make any resize during it raise
//!   NumPy's `ValueError`.
//! - **After Python code, the arrays are checked again.** `norm_scale_` runs the `coefficient`
//!   callback between its passes; afterwards every array must still have the data pointer,
//!   shape, strides and dtype it was measured with (else `RuntimeError`, nothing written), and
//!   its writeability is re-read for the in-place checks.
//! - **Not prevented** (NumPy calls these unsafe with any concurrent use of the array): another
//!   thread's `resize(refcheck=False)` or assignment to `.data` while a pass runs, and a DLPack
//!   producer reallocating its own storage (torch's `resize_`/`set_`). An array made read-only
//!   by another thread while a pass runs may still be written by that pass, as by a ufunc with
//!   `out=`: writeability is checked when the checks run.
//! - **Concurrent calls** on shared bytes wait for each other ([`crate::claims`]).
//! - **Strided views** are worked on through a contiguous copy ([`crate::strided`]);
//!   broadcast (stride-0) axes are dropped first, so a norm or an in-place scale of
//!   `np.broadcast_to(x, (2**40, 3))` costs what `x` costs. A copy that cannot be allocated is a
//!   `MemoryError`, raised before anything is written.
//! - **No panic reaches Python** as `PanicException` (a `BaseException`): every entry point
//!   turns one into `RuntimeError` ([`guard()`]); a thread pool that cannot start runs the call
//!   on the calling thread ([`crate::pool`]).

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::kernels::NormType;
use crate::multi::{self, Op};

mod args;
mod buffers;
mod guard;
mod optim;
mod overlap;
mod passes;

use args::PerTensor;
use buffers::{Need, NotArrays, check, check_for, check_writes, recheck};
use guard::guard;
use passes::{apply, norms_of};

fn norm_type(p: f64) -> PyResult<NormType> {
    NormType::new(p).ok_or_else(|| {
        PyValueError::new_err(format!("norm_type must be a number > 0 or inf, got {p}"))
    })
}

/// norms(arrays, norm_type=2.0, per_tensor=True, name="grads") -> (list[float], float)
#[pyfunction]
#[pyo3(signature = (arrays, norm_type=2.0, per_tensor=true, name="grads", positions=None))]
fn norms(
    py: Python<'_>,
    arrays: &Bound<'_, PyAny>,
    norm_type: f64,
    per_tensor: bool,
    name: &str,
    positions: Option<Vec<usize>>,
) -> PyResult<(Vec<f64>, f64)> {
    guard(|| {
        let positions = positions.as_deref();
        let norm = self::norm_type(norm_type)?;
        let c = check(arrays, name, positions, false)?;
        let bufs = &c.bufs;
        let r = py
            .detach(|| norms_of(bufs, norm, per_tensor))
            .map_err(|e| e.into_err(name, positions))?;
        Ok((r.per_tensor, r.total))
    })
}

/// norm_scale_(arrays, norm_type, coefficient, name="grads", positions=None) -> float
///
/// The total p-norm of `arrays`, then `arrays[i] *= coefficient(total)` in place: one check of
/// the list for both passes. `coefficient` (the clipping policy, a Python callable) is called
/// once with the GIL held; if it raises, nothing is modified. Whatever it does to the list,
/// the arrays measured are the arrays scaled; an array it changed (resized, new data) is a
/// `RuntimeError`. The checks and their order are those of `norms` followed by `scale_`; an
/// item that is not an ndarray raises [`NotArrays`].
#[pyfunction]
#[pyo3(signature = (arrays, norm_type, coefficient, name="grads", positions=None))]
fn norm_scale_(
    py: Python<'_>,
    arrays: &Bound<'_, PyAny>,
    norm_type: f64,
    coefficient: &Bound<'_, PyAny>,
    name: &str,
    positions: Option<Vec<usize>>,
) -> PyResult<f64> {
    guard(|| {
        let positions = positions.as_deref();
        let norm = self::norm_type(norm_type)?;
        let mut c = check_for(arrays, name, positions, Need::Fused)?;
        let bufs = &c.bufs;
        let total = py
            .detach(|| norms_of(bufs, norm, false))
            .map_err(|e| e.into_err(name, positions))?
            .total;
        let factor: f64 = coefficient.call1((total,))?.extract()?;
        recheck(&mut c, name, positions)?;
        check_writes(&c.bufs, name, positions)?;
        apply(py, &c.bufs, |_| Op::Scale(factor)).map_err(|e| e.into_err(name, positions))?;
        Ok(total)
    })
}
/// scale_(arrays, factors, name="grads") -> None: arrays[i] *= factors[i] (or one factor for all).
#[pyfunction]
#[pyo3(signature = (arrays, factors, name="grads", positions=None))]
fn scale_(
    py: Python<'_>,
    arrays: &Bound<'_, PyAny>,
    factors: PerTensor,
    name: &str,
    positions: Option<Vec<usize>>,
) -> PyResult<()> {
    guard(|| {
        let positions = positions.as_deref();
        let c = check(arrays, name, positions, true)?;
        let n = c.bufs.len();
        factors
            .fits(n)
            .map_err(|got| PyValueError::new_err(format!("got {got} factors for {n} arrays")))?;
        apply(py, &c.bufs, |i| Op::Scale(factors.at(i))).map_err(|e| e.into_err(name, positions))
    })
}

/// clamp_(arrays, lo, hi, name="grads") -> None: every element to [lo, hi]; NaN stays NaN.
#[pyfunction]
#[pyo3(signature = (arrays, lo, hi, name="grads", positions=None))]
fn clamp_(
    py: Python<'_>,
    arrays: &Bound<'_, PyAny>,
    lo: f64,
    hi: f64,
    name: &str,
    positions: Option<Vec<usize>>,
) -> PyResult<()> {
    guard(|| {
        let positions = positions.as_deref();
        if lo.is_nan() || hi.is_nan() || lo > hi {
            return Err(PyValueError::new_err(format!(
                "clamp bounds must satisfy lo <= hi, got lo={lo}, hi={hi}"
            )));
        }
        let c = check(arrays, name, positions, true)?;
        apply(py, &c.bufs, |_| Op::Clamp(lo, hi)).map_err(|e| e.into_err(name, positions))
    })
}

/// The instruction set the kernels run with ("avx512", "avx2", "scalar" or "neon").
#[pyfunction]
fn isa() -> &'static str {
    crate::isa::current().name()
}

/// _test_panic(place): panic on purpose, with the GIL ("attached"), without it ("detached") or
/// on a pool worker ("worker"), so that tests can see it arrive as `RuntimeError`. Not API.
#[pyfunction]
fn _test_panic(py: Python<'_>, place: &str) -> PyResult<()> {
    guard(|| match place {
        "attached" => panic!("test panic with the GIL held"),
        "detached" => py.detach(|| panic!("test panic without the GIL")),
        "worker" => {
            py.detach(|| {
                let items = vec![0usize; 64];
                multi::run(
                    items,
                    multi::PARALLEL_MIN,
                    1,
                    |_| multi::TASK,
                    |i| {
                        if i == 0 {
                            panic!("test panic in a parallel pass")
                        }
                    },
                )
            });
            Ok(())
        }
        _ => Err(PyValueError::new_err(format!(
            "place must be 'attached', 'detached' or 'worker', got {place:?}"
        ))),
    })
}

#[pymodule]
mod _fastclip {
    #[pymodule_export]
    use super::optim::{adam_, momentum_, sgd_};
    #[pymodule_export]
    use super::{_test_panic, NotArrays, clamp_, isa, norm_scale_, norms, scale_};

    #[pymodule_export]
    const CHUNK: usize = crate::multi::CHUNK;
    #[pymodule_export]
    const PARALLEL_MIN: usize = crate::multi::PARALLEL_MIN;
}
