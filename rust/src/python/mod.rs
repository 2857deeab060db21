//! The PyO3 binding: check every array, take raw slices, release the GIL, call the engine.
//!
//! No clipping policy lives here. Each entry point takes a whole Python list of arrays so that
//! thousands of tensors cost one call, one GIL release and one rayon scope. Every array is
//! checked before any is touched: dtype, byte order, alignment, writeability (for in-place
//! calls) and, for in-place calls, that no two arrays share memory.
//!
//! # What a call guarantees about the memory it works on
//!
//! The passes read `PyArrayObject` fields and raw pointers (rust-numpy's borrow tracking costs
//! per array), with the GIL released, so the binding carries these guarantees itself:
//!
//! - **The arrays stay alive.** The list (or tuple) is read once, by the checks; from then on
//!   the call works on what it checked and holds two strong references to every array until it
//!   returns ([`Checked`]). Clearing or mutating the list, `del`, a signal handler or the
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
//!   turns one into `RuntimeError` ([`guard`]); a thread pool that cannot start runs the call
//!   on the calling thread ([`crate::pool`]).

use std::collections::TryReserveError;

use half::{bf16, f16};
use numpy::npyffi::{
    NPY_ARRAY_C_CONTIGUOUS, NPY_ARRAY_F_CONTIGUOUS, NPY_ARRAY_WRITEABLE, NPY_TYPES,
};
use numpy::{PyArrayDescrMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::exceptions::{PyMemoryError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};
use pyo3::{Borrowed, ffi};
use std::ptr::NonNull;

use crate::claims;
use crate::kernels::{NormType, Partial};
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

    /// The dtype's name as NumPy (and ml_dtypes) spell it.
    fn name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::F64 => "float64",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
        }
    }
}

/// One checked array: where its data is and how to walk it.
struct Buf {
    dtype: DType,
    /// Whether NumPy lets us write it (checked at once by in-place calls, later by fused ones).
    writeable: bool,
    /// NumPy's C_CONTIGUOUS and F_CONTIGUOUS flags.
    c_order: bool,
    f_order: bool,
    /// NumPy's type number of the dtype, to see it unchanged after a callback.
    num: i32,
    ptr: *mut u8,
    /// The number of elements (the product of the shape).
    len: usize,
    /// `Some` for a non-contiguous view (worked on through a contiguous copy). Boxed: keeps a
    /// `Buf` at 32 bytes, which matters when a call carries 100,000 arrays.
    strided: Option<Box<StridedView>>,
}

#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<Buf>() == 32);

// SAFETY: a Buf only describes memory owned by an ndarray that the call holds (see `Checked`)
// for its whole duration; in-place calls reject overlapping buffers before any Buf is used.
unsafe impl Send for Buf {}
// SAFETY: as for Send: shared access only reads the description; writes happen on disjoint
// buffers under a write claim.
unsafe impl Sync for Buf {}

/// A contiguous copy of a strided buffer.
enum Owned {
    F32(Vec<f32>),
    F64(Vec<f64>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
}

impl Owned {
    /// Copy `view`'s elements out in C order (fallibly).
    ///
    /// # Safety
    /// `view` must describe live, aligned elements of `dtype`.
    unsafe fn gather(view: &StridedView, dtype: DType) -> Result<Owned, TryReserveError> {
        // SAFETY: as the caller promises.
        unsafe {
            Ok(match dtype {
                DType::F32 => Owned::F32(view.gather()?),
                DType::F64 => Owned::F64(view.gather()?),
                DType::F16 => Owned::F16(view.gather()?),
                DType::BF16 => Owned::BF16(view.gather()?),
            })
        }
    }

    /// Copy the elements back into `view`.
    ///
    /// # Safety
    /// As for [`gather`](Self::gather), and the memory must be writable and not in use.
    unsafe fn scatter(&self, view: &StridedView) {
        // SAFETY: as the caller promises.
        unsafe {
            match self {
                Owned::F32(d) => view.scatter(d),
                Owned::F64(d) => view.scatter(d),
                Owned::F16(d) => view.scatter(d),
                Owned::BF16(d) => view.scatter(d),
            }
        }
    }
}

/// A contiguous copy that could not be allocated (nothing has been written).
struct NoCopy {
    /// The buffer's position in its list, and which list (optimizer calls have several).
    index: usize,
    list: usize,
    elements: usize,
    dtype: DType,
}

impl NoCopy {
    fn into_err(self, name: &str, positions: Option<&[usize]>) -> PyErr {
        let i = at(positions, self.index);
        PyMemoryError::new_err(format!(
            "{name}[{i}] is a strided view whose contiguous copy ({} {} elements, {} bytes) could not be allocated; pass a contiguous array",
            self.elements,
            self.dtype.name(),
            self.elements.saturating_mul(self.dtype.itemsize())
        ))
    }
}

/// The caller's position of the `i`-th checked array.
fn at(positions: Option<&[usize]>, i: usize) -> usize {
    positions.and_then(|p| p.get(i).copied()).unwrap_or(i)
}

/// How a pass reaches one buffer's elements: `len` elements in place at `ptr`, or a contiguous
/// copy of `view`; each element stands for `repeat` elements of the array (broadcast axes).
struct Access {
    ptr: *mut u8,
    len: usize,
    view: Option<StridedView>,
    repeat: usize,
}

/// A read-only engine tensor of `len` elements of `dtype` at `ptr`, or the copy `owned`.
///
/// # Safety
/// Without `owned`, the memory must be live for `'a`.
unsafe fn tensor<'a>(
    dtype: DType,
    ptr: *mut u8,
    len: usize,
    owned: Option<&'a Owned>,
) -> Tensor<'a> {
    use std::slice::from_raw_parts as raw;
    match owned {
        Some(Owned::F32(v)) => Tensor::F32(v),
        Some(Owned::F64(v)) => Tensor::F64(v),
        Some(Owned::F16(v)) => Tensor::F16(v),
        Some(Owned::BF16(v)) => Tensor::BF16(v),
        // SAFETY: the caller guarantees the memory is live for 'a; `ptr` is aligned for `dtype`
        // and holds `len` elements (a dangling, aligned pointer when `len == 0`).
        None => unsafe {
            let p = if len == 0 {
                std::ptr::NonNull::<u64>::dangling().as_ptr() as *const u8
            } else {
                ptr
            };
            match dtype {
                DType::F32 => Tensor::F32(raw(p as *const f32, len)),
                DType::F64 => Tensor::F64(raw(p as *const f64, len)),
                DType::F16 => Tensor::F16(raw(p as *const f16, len)),
                DType::BF16 => Tensor::BF16(raw(p as *const bf16, len)),
            }
        },
    }
}

/// A mutable engine tensor of `len` elements of `dtype` at `ptr`, or the copy `owned`.
///
/// # Safety
/// Without `owned`, the memory must be live and not aliased elsewhere for `'a`.
unsafe fn tensor_mut<'a>(
    dtype: DType,
    ptr: *mut u8,
    len: usize,
    owned: Option<&'a mut Owned>,
) -> TensorMut<'a> {
    use std::slice::from_raw_parts_mut as raw;
    match owned {
        Some(Owned::F32(v)) => TensorMut::F32(v),
        Some(Owned::F64(v)) => TensorMut::F64(v),
        Some(Owned::F16(v)) => TensorMut::F16(v),
        Some(Owned::BF16(v)) => TensorMut::BF16(v),
        // SAFETY: as in `tensor`, and the caller guarantees the memory is not aliased for 'a.
        None => unsafe {
            let p = if len == 0 {
                std::ptr::NonNull::<u64>::dangling().as_ptr() as *mut u8
            } else {
                ptr
            };
            match dtype {
                DType::F32 => TensorMut::F32(raw(p as *mut f32, len)),
                DType::F64 => TensorMut::F64(raw(p as *mut f64, len)),
                DType::F16 => TensorMut::F16(raw(p as *mut f16, len)),
                DType::BF16 => TensorMut::BF16(raw(p as *mut bf16, len)),
            }
        },
    }
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

    /// A contiguous buffer as a read-only engine tensor, in memory order.
    ///
    /// # Safety
    /// The buffer must be contiguous and its memory live for `'a`.
    unsafe fn in_place<'a>(&self) -> Tensor<'a> {
        // SAFETY: forwarded from this function's contract; `ptr`/`len`/`dtype` come from the
        // checked array.
        unsafe { tensor(self.dtype, self.ptr, self.len, None) }
    }

    /// A contiguous buffer as a mutable engine tensor, in memory order.
    ///
    /// # Safety
    /// As for [`in_place`](Self::in_place), and not aliased elsewhere for `'a`.
    unsafe fn in_place_mut<'a>(&self) -> TensorMut<'a> {
        // SAFETY: forwarded from this function's contract, as in `in_place`.
        unsafe { tensor_mut(self.dtype, self.ptr, self.len, None) }
    }

    /// How a norm or an elementwise op of this buffer alone reaches its distinct elements:
    /// broadcast axes dropped (their length is the repeat count), in place when what is left
    /// is dense, else through a copy of what is left.
    fn distinct(&self) -> Access {
        let Some(v) = &self.strided else {
            return Access {
                ptr: self.ptr,
                len: self.len,
                view: None,
                repeat: 1,
            };
        };
        let (d, repeat) = v.distinct();
        if d.is_dense(self.dtype.itemsize()) {
            Access {
                ptr: d.ptr,
                len: d.len(),
                view: None,
                repeat,
            }
        } else {
            Access {
                ptr: d.ptr,
                len: d.len(),
                view: Some(d),
                repeat,
            }
        }
    }
}

/// The contiguous copies `access` needs, by position (`None` where it is used in place).
///
/// # Safety
/// Every access must describe live memory of its buffer's dtype.
unsafe fn copies(
    bufs: &[Buf],
    access: &[Access],
    list: usize,
) -> Result<Vec<Option<Owned>>, NoCopy> {
    let mut out = Vec::with_capacity(bufs.len());
    for (i, (b, a)) in bufs.iter().zip(access).enumerate() {
        out.push(match &a.view {
            None => None,
            // SAFETY: as the caller promises.
            Some(v) => Some(unsafe { Owned::gather(v, b.dtype) }.map_err(|_| NoCopy {
                index: i,
                list,
                elements: v.len(),
                dtype: b.dtype,
            })?),
        });
    }
    Ok(out)
}

/// Run `f`, turning a Rust panic into `RuntimeError` (PyO3 would raise `PanicException`, a
/// `BaseException` that `except Exception` does not catch). Every entry point runs in one.
fn guard<T>(f: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        let msg = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".to_string());
        Err(PyRuntimeError::new_err(format!(
            "fastclip internal error: {msg} (a Rust panic; the arrays may be partly modified). Please report it"
        )))
    })
}

/// The array's dtype, and NumPy's type number of it.
fn dtype_of(arr: &Bound<'_, PyUntypedArray>, name: &str, i: usize) -> PyResult<(DType, i32)> {
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
    Ok((dtype, num))
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

/// The checked arrays of one list, and what keeps them alive: the call's own two strong
/// references to each (two, so that NumPy's `resize` refcheck refuses even an array the caller
/// holds only through a temporary — see the module doc), released when it is dropped. It holds
/// the `Python` token, so it cannot enter `detach` and is always dropped attached (unwinding
/// included: `detach` re-attaches first); its lists go back to this thread's spares.
struct Checked<'py> {
    py: Python<'py>,
    bufs: Vec<Buf>,
    arrays: Vec<NonNull<ffi::PyObject>>,
}

impl<'py> Checked<'py> {
    fn new(py: Python<'py>, count: usize) -> Self {
        let mut c = Checked {
            py,
            bufs: SPARE_BUFS.take(),
            arrays: SPARE_ARRAYS.take(),
        };
        c.bufs.reserve(count);
        c.arrays.reserve(count);
        c
    }

    /// Keep `arr` (checked as `buf`) for the call.
    fn push(&mut self, buf: Buf, arr: Bound<'py, PyUntypedArray>) {
        self.bufs.push(buf);
        let p = arr.into_ptr(); // the iterator's reference, now the call's
        // SAFETY: attached (`arr` was a Bound); `p` is a live object. The second reference.
        unsafe { ffi::Py_INCREF(p) };
        // SAFETY: into_ptr of a Bound is never null.
        self.arrays.push(unsafe { NonNull::new_unchecked(p) });
    }

    fn array<'a>(&'a self, i: usize) -> Borrowed<'a, 'py, PyUntypedArray> {
        // SAFETY: the call holds a reference to the array, which is an ndarray (checked).
        unsafe {
            Borrowed::from_ptr(self.py, self.arrays[i].as_ptr()).cast_unchecked::<PyUntypedArray>()
        }
    }
}

impl Drop for Checked<'_> {
    fn drop(&mut self) {
        let mut bufs = std::mem::take(&mut self.bufs);
        bufs.clear();
        SPARE_BUFS.set(bufs);
        // Releasing the references may run Python code (a finalizer), which may call in again:
        // the list is ours alone by now, and the spare is only taken and put back.
        let mut arrays = std::mem::take(&mut self.arrays);
        for p in arrays.drain(..) {
            // SAFETY: attached (the token), and these are the call's two references.
            unsafe {
                ffi::Py_DECREF(p.as_ptr());
                ffi::Py_DECREF(p.as_ptr());
            }
        }
        SPARE_ARRAYS.set(arrays);
    }
}

/// Check every array of `arrays` (a list or tuple) and describe it. Touches nothing.
/// Messages name an array as `name[positions[i]]` (the caller's own numbering) or `name[i]`.
fn check<'py>(
    arrays: &Bound<'py, PyAny>,
    name: &str,
    positions: Option<&[usize]>,
    writable: bool,
) -> PyResult<Checked<'py>> {
    let need = if writable { Need::Write } else { Need::Read };
    check_for(arrays, name, positions, need)
}

fn check_for<'py>(
    arrays: &Bound<'py, PyAny>,
    name: &str,
    positions: Option<&[usize]>,
    need: Need,
) -> PyResult<Checked<'py>> {
    let at = |i: usize| at(positions, i);
    let checked = if let Ok(l) = arrays.cast::<PyList>() {
        check_each(arrays.py(), l.iter(), l.len(), name, &at, need)?
    } else if let Ok(t) = arrays.cast::<PyTuple>() {
        check_each(arrays.py(), t.iter(), t.len(), name, &at, need)?
    } else {
        return Err(PyTypeError::new_err(format!(
            "{name} must be a list or tuple of numpy arrays"
        )));
    };
    if need == Need::Write {
        check_disjoint(&checked.bufs, name, &at)?;
    }
    Ok(checked)
}

/// The in-place checks of a [`Need::Fused`] call, made after its read pass: the first read-only
/// array, then overlaps (as [`check`] makes them for `Need::Write`).
fn check_writes(bufs: &[Buf], name: &str, positions: Option<&[usize]>) -> PyResult<()> {
    let at = |i: usize| at(positions, i);
    if let Some(k) = bufs.iter().position(|b| !b.writeable) {
        return Err(read_only(name, at(k)));
    }
    check_disjoint(bufs, name, &at)
}

/// After Python code ran (the `coefficient` callback), every array must still be what the
/// checks saw: the same data pointer, size, dtype, and shape and strides (or contiguity).
/// Writeability is re-read. Touches nothing.
fn recheck(c: &mut Checked<'_>, name: &str, positions: Option<&[usize]>) -> PyResult<()> {
    for i in 0..c.bufs.len() {
        let arr = c.array(i);
        // SAFETY: arr is a live ndarray (held by `c`); reading its fields is plain field access.
        let (flags, data) = unsafe {
            let raw = &*arr.as_array_ptr();
            (raw.flags, raw.data as *mut u8)
        };
        let b = &c.bufs[i];
        let d = arr.dtype();
        let same_layout = match &b.strided {
            None => flags & (NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_F_CONTIGUOUS) != 0,
            Some(v) => arr.shape() == v.shape.as_slice() && arr.strides() == v.strides.as_slice(),
        };
        let len = arr.len();
        let same = (b.len == 0 && len == 0)
            || (data == b.ptr
                && len == b.len
                && d.num() == b.num
                && d.is_native_byteorder() != Some(false)
                && same_layout);
        if !same {
            return Err(PyRuntimeError::new_err(format!(
                "{name}[{}] was changed during the call (resized, reshaped, retyped or given new data, by the coefficient callback or another thread); nothing was written",
                at(positions, i)
            )));
        }
        c.bufs[i].writeable = flags & NPY_ARRAY_WRITEABLE != 0;
    }
    Ok(())
}

fn read_only(name: &str, i: usize) -> PyErr {
    PyValueError::new_err(format!(
        "{name}[{i}] is read-only; clipping works in place and needs a writeable array"
    ))
}

thread_local! {
    /// The lists of this thread's last calls, kept (empty) for the next one: a call on 100,000
    /// arrays then neither allocates nor page-faults in megabytes of fresh lists.
    static SPARE_BUFS: std::cell::Cell<Vec<Buf>> = const { std::cell::Cell::new(Vec::new()) };
    static SPARE_ARRAYS: std::cell::Cell<Vec<NonNull<ffi::PyObject>>> =
        const { std::cell::Cell::new(Vec::new()) };
    static SPARE_RANGES: std::cell::Cell<Vec<(usize, usize, usize)>> =
        const { std::cell::Cell::new(Vec::new()) };
}

/// The per-array checks of [`check`], straight off the list's iterator (no intermediate Vec).
/// This is the only time the list is read.
fn check_each<'py>(
    py: Python<'py>,
    mut items: impl Iterator<Item = Bound<'py, PyAny>>,
    count: usize,
    name: &str,
    at: &dyn Fn(usize) -> usize,
    need: Need,
) -> PyResult<Checked<'py>> {
    let mut c = Checked::new(py, count);
    let mut k = 0;
    while let Some(item) = items.next() {
        match check_one(item, name, at(k), need) {
            Ok((b, arr)) => c.push(b, arr),
            Err(e) if need == Need::Fused && !e.is_instance_of::<NotArrays>(py) => {
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
    Ok(c)
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

fn check_one<'py>(
    item: Bound<'py, PyAny>,
    name: &str,
    i: usize,
    need: Need,
) -> PyResult<(Buf, Bound<'py, PyUntypedArray>)> {
    let arr = match item.cast_into::<PyUntypedArray>() {
        Ok(a) => a,
        Err(e) => return Err(not_an_array(&e.into_inner(), name, i, need)),
    };
    let (dtype, num) = dtype_of(&arr, name, i)?;
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
            "{name}[{i}] is not aligned for {}; pass a copy (np.require(a, requirements='A'))",
            dtype.name()
        )));
    }
    let (c_order, f_order) = (
        flags & NPY_ARRAY_C_CONTIGUOUS != 0,
        flags & NPY_ARRAY_F_CONTIGUOUS != 0,
    );
    let strided = if c_order || f_order || len == 0 {
        None
    } else {
        Some(Box::new(StridedView {
            ptr: data,
            shape: arr.shape().to_vec(),
            strides: arr.strides().to_vec(),
        }))
    };
    let buf = Buf {
        dtype,
        writeable,
        c_order,
        f_order,
        num,
        ptr: data,
        len,
        strided,
    };
    Ok((buf, arr))
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

/// The partial (sum of p-th powers, or max) of a tensor whose norm is `n` and whose every
/// element stands for `repeat` elements: `n^p * repeat` as the pair (scale n, sum repeat),
/// which no repeat count overflows; the max is the max.
fn repeated(n: f64, repeat: usize, norm: NormType) -> Partial {
    match norm {
        NormType::P(_) if n != 0.0 && n.is_finite() => Partial {
            scale: n,
            sum: repeat as f64,
        },
        NormType::P(_) if n == 0.0 => Partial::ZERO,
        _ => Partial { scale: 1.0, sum: n },
    }
}

/// The norm pass over checked buffers, under a read claim (call without the GIL).
///
/// Buffers with broadcast axes are measured on their distinct elements and weighted by their
/// repeat count ([`repeated`]), after the others, whose total is exactly that of one engine
/// call over them; lists without broadcast views are one engine call, as before.
fn norms_of(bufs: &[Buf], norm: NormType, per_tensor: bool) -> Result<multi::Norms, NoCopy> {
    let _claim = claims::claim(bufs.iter().map(Buf::byte_range), false);
    let isa = crate::isa::current();
    if bufs.iter().all(|b| b.strided.is_none()) {
        // SAFETY: contiguous buffers of arrays the call holds.
        let tensor = |i: usize| unsafe { bufs[i].in_place() };
        return Ok(multi::norms_by(bufs.len(), tensor, norm, per_tensor, isa));
    }
    let access: Vec<Access> = bufs.iter().map(Buf::distinct).collect();
    // SAFETY: each access describes memory of an array the call holds.
    let owned = unsafe { copies(bufs, &access, 0)? };
    // SAFETY: as above; a copy lives as long as `owned`.
    let tensor = |i: usize| unsafe {
        tensor(
            bufs[i].dtype,
            access[i].ptr,
            access[i].len,
            owned[i].as_ref(),
        )
    };
    let (plain, rep): (Vec<usize>, Vec<usize>) =
        (0..bufs.len()).partition(|&i| access[i].repeat == 1);
    if rep.is_empty() {
        return Ok(multi::norms_by(bufs.len(), tensor, norm, per_tensor, isa));
    }
    let a = multi::norms_by(plain.len(), |k| tensor(plain[k]), norm, per_tensor, isa);
    let b = multi::norms_by(rep.len(), |k| tensor(rep[k]), norm, true, isa);
    let mut total = repeated(a.total, 1, norm);
    let mut each = vec![0.0; if per_tensor { bufs.len() } else { 0 }];
    if per_tensor {
        for (k, &i) in plain.iter().enumerate() {
            each[i] = a.per_tensor[k];
        }
    }
    for (k, &i) in rep.iter().enumerate() {
        let part = repeated(b.per_tensor[k], access[i].repeat, norm);
        total = total.combine(part, norm);
        if per_tensor {
            each[i] = part.norm(norm);
        }
    }
    Ok(multi::Norms {
        per_tensor: each,
        total: total.norm(norm),
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
        apply(py, &c.bufs, Ops::All(Op::Scale(factor))).map_err(|e| e.into_err(name, positions))?;
        Ok(total)
    })
}

/// The operation of an in-place call: one for every array, or one each.
enum Ops {
    All(Op),
    Each(Vec<Op>),
}

/// Apply `ops` in place under a write claim (releases the GIL). Every copy a strided buffer
/// needs is made before anything is written, so a copy that cannot be allocated changes
/// nothing. An element a view names more than once (broadcast axes, sliding windows) gets the
/// op once: broadcast axes are dropped, other aliases are written the same value.
fn apply(py: Python<'_>, bufs: &[Buf], ops: Ops) -> Result<(), NoCopy> {
    py.detach(|| {
        // Taken and released without the GIL, so a waiting call never blocks the one it waits on.
        let _claim = claims::claim(bufs.iter().map(Buf::byte_range), true);
        let run = |tensors: Vec<TensorMut<'_>>| match &ops {
            Ops::All(op) => multi::apply_all(tensors, *op),
            Ops::Each(ops) => multi::apply_each(tensors, ops),
        };
        if bufs.iter().all(|b| b.strided.is_none()) {
            // SAFETY: the arrays are live, writeable and pairwise disjoint (checked).
            run(bufs.iter().map(|b| unsafe { b.in_place_mut() }).collect());
            return Ok(());
        }
        let access: Vec<Access> = bufs.iter().map(Buf::distinct).collect();
        // SAFETY: each access describes memory of an array the call holds.
        let mut owned = unsafe { copies(bufs, &access, 0)? };
        // SAFETY: the arrays are live, writeable and pairwise disjoint (checked); a dense
        // access names each element once.
        let tensors = access
            .iter()
            .zip(bufs)
            .zip(owned.iter_mut())
            .map(|((a, b), o)| unsafe { tensor_mut(b.dtype, a.ptr, a.len, o.as_mut()) })
            .collect();
        run(tensors);
        for (a, o) in access.iter().zip(&owned) {
            if let (Some(v), Some(o)) = (&a.view, o) {
                // SAFETY: as above; the engine is done with the copy.
                unsafe { o.scatter(v) };
            }
        }
        Ok(())
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
    guard(|| {
        let positions = positions.as_deref();
        let c = check(arrays, name, positions, true)?;
        let ops = match factors {
            Factors::One(f) => Ops::All(Op::Scale(f)),
            Factors::Each(v) => {
                if v.len() != c.bufs.len() {
                    return Err(PyValueError::new_err(format!(
                        "got {} factors for {} arrays",
                        v.len(),
                        c.bufs.len()
                    )));
                }
                Ops::Each(v.into_iter().map(Op::Scale).collect())
            }
        };
        apply(py, &c.bufs, ops).map_err(|e| e.into_err(name, positions))
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
        apply(py, &c.bufs, Ops::All(Op::Clamp(lo, hi))).map_err(|e| e.into_err(name, positions))
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
