//! The PyO3 binding: check every array, take raw slices, release the GIL, call the engine.
//!
//! No clipping policy lives here. Each entry point takes a whole Python list of arrays so that
//! thousands of tensors cost one call, one GIL release and one rayon scope. Every array is
//! checked before any is touched: dtype, byte order, alignment, writeability (for in-place
//! calls) and, for in-place calls, that no two arrays share memory.

use half::{bf16, f16};
use numpy::npyffi::{NPY_ARRAY_WRITEABLE, NPY_TYPES};
use numpy::{PyArrayDescrMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};

use crate::claims;
use crate::kernels::NormType;
use crate::multi::{self, Op, Tensor, TensorMut};
use crate::strided::StridedView;

mod optim;

#[derive(Clone, Copy, PartialEq, Debug)]
enum DType {
    F32,
    F64,
    F16,
    BF16,
}

impl DType {
    fn itemsize(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F64 => 8,
            DType::F16 | DType::BF16 => 2,
        }
    }
}

/// One checked array: where its data is and how to walk it.
struct Buf {
    dtype: DType,
    /// Whether NumPy lets us write it (checked at once by in-place calls, later by fused ones).
    writeable: bool,
    ptr: *mut u8,
    len: usize,
    /// `Some` for a non-contiguous view (worked on through a contiguous copy). Boxed: keeps a
    /// `Buf` at 32 bytes, which matters when a call carries 100,000 arrays.
    strided: Option<Box<StridedView>>,
}

// SAFETY: a Buf only describes memory owned by an ndarray that the caller's list keeps alive for
// the whole call; in-place calls reject overlapping buffers before any Buf is used.
unsafe impl Send for Buf {}
unsafe impl Sync for Buf {}

/// A contiguous copy of a strided buffer.
enum Owned {
    F32(Vec<f32>),
    F64(Vec<f64>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
}

impl Buf {
    /// The bytes this buffer spans (a strided view counts its whole extent).
    fn byte_range(&self) -> (usize, usize) {
        match &self.strided {
            Some(v) => v.byte_range(self.dtype.itemsize()),
            None => (
                self.ptr as usize,
                self.ptr as usize + self.len * self.dtype.itemsize(),
            ),
        }
    }

    fn gather(&self) -> Option<Owned> {
        let v = self.strided.as_ref()?;
        // SAFETY: the view was built from a live, aligned ndarray of this dtype.
        Some(unsafe {
            match self.dtype {
                DType::F32 => Owned::F32(v.gather()),
                DType::F64 => Owned::F64(v.gather()),
                DType::F16 => Owned::F16(v.gather()),
                DType::BF16 => Owned::BF16(v.gather()),
            }
        })
    }

    fn scatter(&self, owned: &Owned) {
        if let Some(v) = &self.strided {
            // SAFETY: as for gather; the array was checked writeable.
            unsafe {
                match owned {
                    Owned::F32(d) => v.scatter(d),
                    Owned::F64(d) => v.scatter(d),
                    Owned::F16(d) => v.scatter(d),
                    Owned::BF16(d) => v.scatter(d),
                }
            }
        }
    }

    /// The buffer as a read-only engine tensor: its own memory, or the contiguous copy.
    ///
    /// # Safety
    /// The memory must be live for `'a`.
    unsafe fn tensor<'a>(&self, owned: Option<&'a Owned>) -> Tensor<'a> {
        use std::slice::from_raw_parts as raw;
        match owned {
            Some(Owned::F32(v)) => Tensor::F32(v),
            Some(Owned::F64(v)) => Tensor::F64(v),
            Some(Owned::F16(v)) => Tensor::F16(v),
            Some(Owned::BF16(v)) => Tensor::BF16(v),
            None => unsafe {
                let p = if self.len == 0 {
                    std::ptr::NonNull::<u64>::dangling().as_ptr() as *const u8
                } else {
                    self.ptr
                };
                match self.dtype {
                    DType::F32 => Tensor::F32(raw(p as *const f32, self.len)),
                    DType::F64 => Tensor::F64(raw(p as *const f64, self.len)),
                    DType::F16 => Tensor::F16(raw(p as *const f16, self.len)),
                    DType::BF16 => Tensor::BF16(raw(p as *const bf16, self.len)),
                }
            },
        }
    }

    /// The buffer as a mutable engine tensor: its own memory, or the contiguous copy.
    ///
    /// # Safety
    /// The memory must be live and not aliased mutably elsewhere for `'a`.
    unsafe fn tensor_mut<'a>(&self, owned: Option<&'a mut Owned>) -> TensorMut<'a> {
        use std::slice::from_raw_parts_mut as raw;
        match owned {
            Some(Owned::F32(v)) => TensorMut::F32(v),
            Some(Owned::F64(v)) => TensorMut::F64(v),
            Some(Owned::F16(v)) => TensorMut::F16(v),
            Some(Owned::BF16(v)) => TensorMut::BF16(v),
            None => unsafe {
                let p = if self.len == 0 {
                    std::ptr::NonNull::<u64>::dangling().as_ptr() as *mut u8
                } else {
                    self.ptr
                };
                match self.dtype {
                    DType::F32 => TensorMut::F32(raw(p as *mut f32, self.len)),
                    DType::F64 => TensorMut::F64(raw(p as *mut f64, self.len)),
                    DType::F16 => TensorMut::F16(raw(p as *mut f16, self.len)),
                    DType::BF16 => TensorMut::BF16(raw(p as *mut bf16, self.len)),
                }
            },
        }
    }
}

fn dtype_of(arr: &Bound<'_, PyUntypedArray>, name: &str, i: usize) -> PyResult<DType> {
    let d = arr.dtype();
    if d.is_native_byteorder() == Some(false) {
        return Err(PyTypeError::new_err(format!(
            "{name}[{i}] has non-native byte order ({d}); convert it with arr.astype(arr.dtype.newbyteorder('='))"
        )));
    }
    let num = d.num();
    let dtype = if num == NPY_TYPES::NPY_FLOAT as i32 {
        DType::F32
    } else if num == NPY_TYPES::NPY_DOUBLE as i32 {
        DType::F64
    } else if num == NPY_TYPES::NPY_HALF as i32 {
        DType::F16
    } else if d.itemsize() == 2
        && d.typeobj()
            .name()
            .map(|n| n.to_cow().map(|c| c == "bfloat16").unwrap_or(false))
            .unwrap_or(false)
    {
        DType::BF16
    } else {
        return Err(PyTypeError::new_err(format!(
            "{name}[{i}] has dtype {d}; fastclip works on float16, bfloat16 (ml_dtypes), float32 and float64 gradients"
        )));
    };
    Ok(dtype)
}

pyo3::create_exception!(
    _fastclip,
    NotArrays,
    PyTypeError,
    "Raised by the fused calls when an item of the list is not a numpy.ndarray: the caller \
     converts the list (DLPack tensors, parameters with .grad) and calls again."
);

/// What a call will do with its arrays, which decides the checks [`check`] makes.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Need {
    /// Only read them.
    Read,
    /// Write them in place: writeable and pairwise disjoint, checked at once.
    Write,
    /// Read them, then (after a policy callback) write them: a fused call. Checked as `Read`,
    /// writeability only recorded ([`check_writes`] does the in-place checks later, in the order
    /// a read call followed by a write call would make them). A non-array item raises
    /// [`NotArrays`], and so does any other error when a later item is not an array, so that the
    /// caller can redo the call on the general path, whose errors are the reference.
    Fused,
}

/// Check every array of `arrays` (a list or tuple) and describe it. Touches nothing.
/// Messages name an array as `name[positions[i]]` (the caller's own numbering) or `name[i]`.
fn check(
    arrays: &Bound<'_, PyAny>,
    name: &str,
    positions: Option<&[usize]>,
    writable: bool,
) -> PyResult<Vec<Buf>> {
    let need = if writable { Need::Write } else { Need::Read };
    check_for(arrays, name, positions, need)
}

fn check_for(
    arrays: &Bound<'_, PyAny>,
    name: &str,
    positions: Option<&[usize]>,
    need: Need,
) -> PyResult<Vec<Buf>> {
    let at = |i: usize| positions.and_then(|p| p.get(i).copied()).unwrap_or(i);
    let bufs = if let Ok(l) = arrays.cast::<PyList>() {
        check_each(l.iter(), l.len(), name, &at, need)?
    } else if let Ok(t) = arrays.cast::<PyTuple>() {
        check_each(t.iter(), t.len(), name, &at, need)?
    } else {
        return Err(PyTypeError::new_err(format!(
            "{name} must be a list or tuple of numpy arrays"
        )));
    };
    if need == Need::Write {
        check_disjoint(&bufs, name, &at)?;
    }
    Ok(bufs)
}

/// The in-place checks of a [`Need::Fused`] call, made after its read pass: the first read-only
/// array, then overlaps (as [`check`] makes them for `Need::Write`).
fn check_writes(bufs: &[Buf], name: &str, positions: Option<&[usize]>) -> PyResult<()> {
    let at = |i: usize| positions.and_then(|p| p.get(i).copied()).unwrap_or(i);
    if let Some(k) = bufs.iter().position(|b| !b.writeable) {
        return Err(read_only(name, at(k)));
    }
    check_disjoint(bufs, name, &at)
}

fn read_only(name: &str, i: usize) -> PyErr {
    PyValueError::new_err(format!(
        "{name}[{i}] is read-only; clipping works in place and needs a writeable array"
    ))
}

thread_local! {
    /// The buffer lists of this thread's last calls, kept (empty) for the next one: a call on
    /// 100,000 arrays then neither allocates nor page-faults in megabytes of fresh lists.
    static SPARE_BUFS: std::cell::Cell<Vec<Buf>> = const { std::cell::Cell::new(Vec::new()) };
    static SPARE_RANGES: std::cell::Cell<Vec<(usize, usize, usize)>> =
        const { std::cell::Cell::new(Vec::new()) };
}

/// Give a call's checked list back for reuse (its boxes are dropped).
fn recycle(mut bufs: Vec<Buf>) {
    bufs.clear();
    SPARE_BUFS.set(bufs);
}

/// The per-array checks of [`check`], straight off the list's iterator (no intermediate Vec).
fn check_each<'py>(
    mut items: impl Iterator<Item = Bound<'py, PyAny>>,
    count: usize,
    name: &str,
    at: &dyn Fn(usize) -> usize,
    need: Need,
) -> PyResult<Vec<Buf>> {
    let mut bufs = SPARE_BUFS.take();
    bufs.reserve(count);
    let mut k = 0;
    while let Some(item) = items.next() {
        match check_one(&item, name, at(k), need) {
            Ok(b) => bufs.push(b),
            Err(e) if need == Need::Fused && !e.is_instance_of::<NotArrays>(item.py()) => {
                // a later non-array sends the whole call to the general path, whose error wins
                let mut later = items.enumerate();
                if let Some((j, other)) = later.find(|(_, it)| it.cast::<PyUntypedArray>().is_err())
                {
                    return Err(not_an_array(&other, name, at(k + 1 + j), need));
                }
                return Err(e);
            }
            Err(e) => return Err(e),
        }
        k += 1;
    }
    Ok(bufs)
}

fn not_an_array(item: &Bound<'_, PyAny>, name: &str, i: usize, need: Need) -> PyErr {
    let ty = item
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_default();
    let msg = format!("{name}[{i}] must be a numpy.ndarray, not {ty}");
    if need == Need::Fused {
        NotArrays::new_err(msg)
    } else {
        PyTypeError::new_err(msg)
    }
}

fn check_one(item: &Bound<'_, PyAny>, name: &str, i: usize, need: Need) -> PyResult<Buf> {
    let arr = item
        .cast::<PyUntypedArray>()
        .map_err(|_| not_an_array(item, name, i, need))?;
    let dtype = dtype_of(arr, name, i)?;
    // SAFETY: arr is a live ndarray; reading its flags and data pointer is plain field access.
    let (flags, data) = unsafe {
        let raw = &*arr.as_array_ptr();
        (raw.flags, raw.data as *mut u8)
    };
    let writeable = flags & NPY_ARRAY_WRITEABLE != 0;
    if need == Need::Write && !writeable {
        return Err(read_only(name, i));
    }
    let len = arr.len();
    if len > 0 && !arr.is_aligned() {
        return Err(PyValueError::new_err(format!(
            "{name}[{i}] is not aligned for {:?}; pass a copy (np.require(a, requirements='A'))",
            dtype
        )));
    }
    let strided = if arr.is_contiguous() || len == 0 {
        None
    } else {
        Some(Box::new(StridedView {
            ptr: data,
            shape: arr.shape().to_vec(),
            strides: arr.strides().to_vec(),
        }))
    };
    Ok(Buf {
        dtype,
        writeable,
        ptr: data,
        len,
        strided,
    })
}

thread_local! {
    /// The byte ranges (in list order) of the last list this thread found pairwise disjoint.
    /// Training loops clip the same buffers every step: an identical list needs no sort.
    static DISJOINT: std::cell::RefCell<Vec<(usize, usize)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// In-place calls must not receive two arrays that share memory: the shared elements would be
/// scaled twice. Byte ranges are compared (a strided view counts its whole extent).
fn check_disjoint(bufs: &[Buf], name: &str, at: &dyn Fn(usize) -> usize) -> PyResult<()> {
    let same = DISJOINT.with_borrow(|last| {
        let mut it = last.iter();
        bufs.iter()
            .filter(|b| b.len > 0)
            .all(|b| it.next() == Some(&b.byte_range()))
            && it.next().is_none()
    });
    if same {
        return Ok(());
    }
    let mut ranges = SPARE_RANGES.take();
    ranges.clear();
    ranges.extend(
        bufs.iter()
            .enumerate()
            .filter(|(_, b)| b.len > 0)
            .map(|(i, b)| {
                let (lo, hi) = b.byte_range();
                (lo, hi, i)
            }),
    );
    if !ranges.is_sorted() {
        // arrays allocated one after another come nearly sorted (a few long runs), which the
        // stable sort merges in about linear time; the tuples are distinct, so the order is the
        // one the unstable sort gave
        ranges.sort();
    }
    let mut reach: Option<(usize, usize)> = None; // (furthest end so far, its index)
    for &(lo, hi, i) in &ranges {
        if let Some((end, j)) = reach
            && lo < end
        {
            let (a, b) = (at(i.min(j)), at(i.max(j)));
            return Err(PyValueError::new_err(format!(
                "{name}[{a}] and {name}[{b}] share memory (their byte ranges overlap; interleaved strided views count too); an in-place call would modify it twice. Pass each buffer once"
            )));
        }
        if reach.is_none_or(|(end, _)| hi > end) {
            reach = Some((hi, i));
        }
    }
    SPARE_RANGES.set(ranges);
    DISJOINT.with_borrow_mut(|last| {
        last.clear();
        last.extend(bufs.iter().filter(|b| b.len > 0).map(Buf::byte_range));
    });
    Ok(())
}

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
    let norm = self::norm_type(norm_type)?;
    let bufs = check(arrays, name, positions.as_deref(), false)?;
    let r = py.detach(|| norms_of(&bufs, norm, per_tensor));
    recycle(bufs);
    Ok((r.per_tensor, r.total))
}

/// The norm pass over checked buffers, under a read claim (call without the GIL).
fn norms_of(bufs: &[Buf], norm: NormType, per_tensor: bool) -> multi::Norms {
    let _claim = claims::claim(bufs.iter().map(Buf::byte_range), false);
    let owned = gather_all(bufs);
    // SAFETY: the arrays are kept alive by the caller's list for the whole call.
    let tensor = |i: usize| unsafe { bufs[i].tensor(owned.get(i).and_then(Option::as_ref)) };
    multi::norms_by(bufs.len(), tensor, norm, per_tensor, crate::isa::current())
}

/// norm_scale_(arrays, norm_type, coefficient, name="grads", positions=None) -> float
///
/// The total p-norm of `arrays`, then `arrays[i] *= coefficient(total)` in place: one check of
/// the list for both passes. `coefficient` (the clipping policy, a Python callable) is called
/// once with the GIL held; if it raises, nothing is modified. The checks and their order are
/// those of `norms` followed by `scale_`; an item that is not an ndarray raises [`NotArrays`].
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
    let norm = self::norm_type(norm_type)?;
    let bufs = check_for(arrays, name, positions.as_deref(), Need::Fused)?;
    let total = py.detach(|| norms_of(&bufs, norm, false)).total;
    let factor: f64 = coefficient.call1((total,))?.extract()?;
    check_writes(&bufs, name, positions.as_deref())?;
    apply(py, &bufs, Ops::All(Op::Scale(factor)));
    recycle(bufs);
    Ok(total)
}

/// Contiguous copies of the strided buffers, by position; empty when none is strided (the usual
/// case: then nothing per array is allocated).
fn gather_all(bufs: &[Buf]) -> Vec<Option<Owned>> {
    if bufs.iter().any(|b| b.strided.is_some()) {
        bufs.iter().map(Buf::gather).collect()
    } else {
        Vec::new()
    }
}

/// The operation of an in-place call: one for every array, or one each.
enum Ops {
    All(Op),
    Each(Vec<Op>),
}

fn apply(py: Python<'_>, bufs: &[Buf], ops: Ops) {
    py.detach(|| {
        // Taken and released without the GIL, so a waiting call never blocks the one it waits on.
        let _claim = claims::claim(bufs.iter().map(Buf::byte_range), true);
        let mut owned = gather_all(bufs);
        let mut copies = owned.iter_mut();
        // SAFETY: the arrays are live, writeable and pairwise disjoint (checked).
        let tensors: Vec<TensorMut<'_>> = bufs
            .iter()
            .map(|b| unsafe { b.tensor_mut(copies.next().and_then(Option::as_mut)) })
            .collect();
        match ops {
            Ops::All(op) => multi::apply_all(tensors, op),
            Ops::Each(ops) => multi::apply_each(tensors, &ops),
        }
        for (b, o) in bufs.iter().zip(&owned) {
            if let Some(o) = o {
                b.scatter(o);
            }
        }
    })
}

#[derive(FromPyObject)]
enum Factors {
    One(f64),
    Each(Vec<f64>),
}

/// scale_(arrays, factors, name="grads") -> None: arrays[i] *= factors[i] (or one factor for all).
#[pyfunction]
#[pyo3(signature = (arrays, factors, name="grads", positions=None))]
fn scale_(
    py: Python<'_>,
    arrays: &Bound<'_, PyAny>,
    factors: Factors,
    name: &str,
    positions: Option<Vec<usize>>,
) -> PyResult<()> {
    let bufs = check(arrays, name, positions.as_deref(), true)?;
    let ops = match factors {
        Factors::One(f) => Ops::All(Op::Scale(f)),
        Factors::Each(v) => {
            if v.len() != bufs.len() {
                return Err(PyValueError::new_err(format!(
                    "got {} factors for {} arrays",
                    v.len(),
                    bufs.len()
                )));
            }
            Ops::Each(v.into_iter().map(Op::Scale).collect())
        }
    };
    apply(py, &bufs, ops);
    recycle(bufs);
    Ok(())
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
    if lo.is_nan() || hi.is_nan() || lo > hi {
        return Err(PyValueError::new_err(format!(
            "clamp bounds must satisfy lo <= hi, got lo={lo}, hi={hi}"
        )));
    }
    let bufs = check(arrays, name, positions.as_deref(), true)?;
    apply(py, &bufs, Ops::All(Op::Clamp(lo, hi)));
    recycle(bufs);
    Ok(())
}

/// The instruction set the kernels run with ("avx512", "avx2", "scalar" or "neon").
#[pyfunction]
fn isa() -> &'static str {
    crate::isa::current().name()
}

#[pymodule]
mod _fastclip {
    #[pymodule_export]
    use super::optim::{adam_, momentum_, sgd_};
    #[pymodule_export]
    use super::{NotArrays, clamp_, isa, norm_scale_, norms, scale_};

    #[pymodule_export]
    const CHUNK: usize = crate::multi::CHUNK;
    #[pymodule_export]
    const PARALLEL_MIN: usize = crate::multi::PARALLEL_MIN;
}
