//! What the binding knows of one array: its checked description ([`Buf`]), the checks that
//! make it ([`check`], [`recheck`], [`check_writes`]), what keeps it alive ([`Checked`]) and
//! how a pass reaches its elements (in place, or through a contiguous copy: [`Owned`]).
//! Touches no element.

use std::collections::TryReserveError;
use std::ptr::NonNull;

use half::{bf16, f16};
use numpy::npyffi::{
    NPY_ARRAY_C_CONTIGUOUS, NPY_ARRAY_F_CONTIGUOUS, NPY_ARRAY_WRITEABLE, NPY_TYPES,
};
use numpy::{PyArrayDescrMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::exceptions::{PyMemoryError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};
use pyo3::{Borrowed, ffi};

use super::overlap::check_disjoint;
use crate::multi::{Tensor, TensorMut};
use crate::strided::StridedView;

#[derive(Clone, Copy, PartialEq, Debug)]
pub(super) enum DType {
    F32,
    F64,
    F16,
    BF16,
}

impl DType {
    pub(super) fn itemsize(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F64 => 8,
            DType::F16 | DType::BF16 => 2,
        }
    }

    /// The dtype's name as NumPy (and ml_dtypes) spell it.
    pub(super) fn name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::F64 => "float64",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
        }
    }
}

/// One checked array: where its data is and how to walk it.
pub(super) struct Buf {
    pub(super) dtype: DType,
    /// Whether NumPy lets us write it (checked at once by in-place calls, later by fused ones).
    pub(super) writeable: bool,
    /// NumPy's C_CONTIGUOUS and F_CONTIGUOUS flags.
    pub(super) c_order: bool,
    pub(super) f_order: bool,
    /// NumPy's type number of the dtype, to see it unchanged after a callback.
    pub(super) num: i32,
    pub(super) ptr: *mut u8,
    /// The number of elements (the product of the shape).
    pub(super) len: usize,
    /// `Some` for a non-contiguous view (worked on through a contiguous copy). Boxed: keeps a
    /// `Buf` at 32 bytes, which matters when a call carries 100,000 arrays.
    pub(super) strided: Option<Box<StridedView>>,
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
pub(super) enum Owned {
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
    pub(super) unsafe fn gather(
        view: &StridedView,
        dtype: DType,
    ) -> Result<Owned, TryReserveError> {
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
    pub(super) unsafe fn scatter(&self, view: &StridedView) {
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
pub(super) struct NoCopy {
    /// The buffer's position in its list, and which list (optimizer calls have several).
    pub(super) index: usize,
    pub(super) list: usize,
    pub(super) elements: usize,
    pub(super) dtype: DType,
}

impl NoCopy {
    pub(super) fn into_err(self, name: &str, positions: Option<&[usize]>) -> PyErr {
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
pub(super) struct Access {
    pub(super) ptr: *mut u8,
    pub(super) len: usize,
    pub(super) view: Option<StridedView>,
    pub(super) repeat: usize,
}

/// A read-only engine tensor of `len` elements of `dtype` at `ptr`, or the copy `owned`.
///
/// # Safety
/// Without `owned`, the memory must be live for `'a`.
pub(super) unsafe fn tensor<'a>(
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
pub(super) unsafe fn tensor_mut<'a>(
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
    pub(super) fn byte_range(&self) -> (usize, usize) {
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
    pub(super) unsafe fn in_place<'a>(&self) -> Tensor<'a> {
        // SAFETY: forwarded from this function's contract; `ptr`/`len`/`dtype` come from the
        // checked array.
        unsafe { tensor(self.dtype, self.ptr, self.len, None) }
    }

    /// A contiguous buffer as a mutable engine tensor, in memory order.
    ///
    /// # Safety
    /// As for [`in_place`](Self::in_place), and not aliased elsewhere for `'a`.
    pub(super) unsafe fn in_place_mut<'a>(&self) -> TensorMut<'a> {
        // SAFETY: forwarded from this function's contract, as in `in_place`.
        unsafe { tensor_mut(self.dtype, self.ptr, self.len, None) }
    }

    /// How a norm or an elementwise op of this buffer alone reaches its distinct elements:
    /// broadcast axes dropped (their length is the repeat count), in place when what is left
    /// is dense, else through a copy of what is left.
    pub(super) fn distinct(&self) -> Access {
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

/// The contiguous copies a list of buffers needs, by position: for each buffer its dtype and
/// the view to copy (`None` where it is used in place). The first copy that cannot be
/// allocated is the error (`list` says which list of the call it is in); nothing is written.
///
/// # Safety
/// Every view must describe live memory of its dtype.
pub(super) unsafe fn copies<'v>(
    views: impl ExactSizeIterator<Item = (DType, Option<&'v StridedView>)>,
    list: usize,
) -> Result<Vec<Option<Owned>>, NoCopy> {
    let mut out = Vec::with_capacity(views.len());
    for (index, (dtype, view)) in views.enumerate() {
        out.push(match view {
            None => None,
            // SAFETY: as the caller promises.
            Some(v) => Some(unsafe { Owned::gather(v, dtype) }.map_err(|_| NoCopy {
                index,
                list,
                elements: v.len(),
                dtype,
            })?),
        });
    }
    Ok(out)
}

/// Copy each copy of [`copies`] back into its view (pairs without both are skipped).
///
/// # Safety
/// As for [`copies`], and the memory must be writable and not in use.
pub(super) unsafe fn scatter_back<'v>(
    views: impl Iterator<Item = Option<&'v StridedView>>,
    owned: &[Option<Owned>],
) {
    for (v, o) in views.zip(owned) {
        if let (Some(v), Some(o)) = (v, o) {
            // SAFETY: as the caller promises.
            unsafe { o.scatter(v) };
        }
    }
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
pub(super) enum Need {
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
pub(super) struct Checked<'py> {
    py: Python<'py>,
    pub(super) bufs: Vec<Buf>,
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

    pub(super) fn array<'a>(&'a self, i: usize) -> Borrowed<'a, 'py, PyUntypedArray> {
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
pub(super) fn check<'py>(
    arrays: &Bound<'py, PyAny>,
    name: &str,
    positions: Option<&[usize]>,
    writable: bool,
) -> PyResult<Checked<'py>> {
    let need = if writable { Need::Write } else { Need::Read };
    check_for(arrays, name, positions, need)
}

pub(super) fn check_for<'py>(
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
pub(super) fn check_writes(bufs: &[Buf], name: &str, positions: Option<&[usize]>) -> PyResult<()> {
    let at = |i: usize| at(positions, i);
    if let Some(k) = bufs.iter().position(|b| !b.writeable) {
        return Err(read_only(name, at(k)));
    }
    check_disjoint(bufs, name, &at)
}

/// After Python code ran (the `coefficient` callback), every array must still be what the
/// checks saw: the same data pointer, size, dtype, and shape and strides (or contiguity).
/// Writeability is re-read. Touches nothing.
pub(super) fn recheck(
    c: &mut Checked<'_>,
    name: &str,
    positions: Option<&[usize]>,
) -> PyResult<()> {
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
