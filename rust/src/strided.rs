//! Gather and scatter for non-contiguous buffers (any rank, byte strides, negative and zero
//! strides too).
//!
//! A strided view is copied into a contiguous vector in C order, worked on there, and (for
//! in-place operations) copied back. The copy costs one extra pass; contiguous buffers (C or
//! Fortran order) never take this path.
//!
//! Broadcast views (stride 0 along some axis, as `np.broadcast_to` makes) name each element of
//! memory many times. [`StridedView::distinct`] drops those axes: what is left names every
//! element once per remaining position, and the repeat count says how often the full view names
//! it. A norm multiplies its sum of p-th powers by the repeat count, and an in-place scale or
//! clamp works on the distinct elements once (the value every alias of it would get), so a view
//! of 2^40 broadcast elements costs what its few distinct elements cost. A copy is allocated
//! fallibly ([`StridedView::gather`] returns an error, never aborts).

use std::collections::TryReserveError;

/// A strided view of `T`s: `ptr` points at element [0, 0, ...]; `strides` are in bytes.
#[derive(Clone, Debug)]
pub struct StridedView {
    pub ptr: *mut u8,
    pub shape: Vec<usize>,
    pub strides: Vec<isize>,
}

// SAFETY: the view is a plain description of memory; whoever builds one guarantees the memory
// outlives its use and is not mutated concurrently (the binding checks overlaps).
unsafe impl Send for StridedView {}
// SAFETY: as for Send: a shared view is only read; writes go through `scatter`, whose caller
// guarantees exclusive access.
unsafe impl Sync for StridedView {}

/// Views with more elements than this are not enumerated by
/// [`StridedView::may_overlap_itself`] (which then answers "maybe").
const OVERLAP_SCAN_MAX: usize = 1 << 20;

impl StridedView {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The byte offset of every element, in C order.
    fn for_each_offset(&self, mut f: impl FnMut(isize)) {
        if self.is_empty() {
            return;
        }
        let nd = self.shape.len();
        let mut idx = vec![0usize; nd];
        let mut off: isize = 0;
        loop {
            f(off);
            let mut d = nd;
            loop {
                if d == 0 {
                    return;
                }
                d -= 1;
                idx[d] += 1;
                off += self.strides[d];
                if idx[d] < self.shape[d] {
                    break;
                }
                off -= self.strides[d] * self.shape[d] as isize;
                idx[d] = 0;
            }
        }
    }

    /// Copy the elements out in C order, or the error of an allocation that cannot be made.
    ///
    /// # Safety
    /// `ptr`, `shape` and `strides` must describe valid, aligned `T`s.
    pub unsafe fn gather<T: Copy>(&self) -> Result<Vec<T>, TryReserveError> {
        let mut out = Vec::new();
        out.try_reserve_exact(self.len())?;
        self.for_each_offset(|off| {
            // SAFETY: the caller's contract: every offset of the view addresses a valid, aligned T.
            out.push(unsafe { *(self.ptr.offset(off) as *const T) })
        });
        Ok(out)
    }

    /// Copy `data` (C order) back into the view. Elements named more than once are written
    /// once per name, the last in C order winning.
    ///
    /// # Safety
    /// As for [`gather`](Self::gather), and the memory must be writable.
    pub unsafe fn scatter<T: Copy>(&self, data: &[T]) {
        let mut it = data.iter();
        self.for_each_offset(|off| {
            if let Some(v) = it.next() {
                // SAFETY: the caller's contract: every offset addresses a valid, aligned,
                // writable T.
                unsafe { *(self.ptr.offset(off) as *mut T) = *v }
            }
        });
    }

    /// The half-open byte range [lo, hi) the view touches, for overlap checks.
    pub fn byte_range(&self, itemsize: usize) -> (usize, usize) {
        let base = self.ptr as usize;
        if self.is_empty() {
            return (base, base);
        }
        let (mut lo, mut hi) = (0isize, 0isize);
        for (&n, &s) in self.shape.iter().zip(&self.strides) {
            let span = s * (n as isize - 1);
            if span < 0 {
                lo += span;
            } else {
                hi += span;
            }
        }
        (
            (base as isize + lo) as usize,
            (base as isize + hi) as usize + itemsize,
        )
    }

    /// The view without its broadcast axes (stride 0) and its length-1 axes, and how many
    /// elements of `self` each element of the result stands for (the product of the dropped
    /// lengths). The result covers the same bytes; it names an element of memory more than once
    /// only where `self`'s nonzero strides overlap (sliding windows). An empty view stays as is.
    pub fn distinct(&self) -> (StridedView, usize) {
        if self.is_empty() {
            return (self.clone(), 1);
        }
        let (mut shape, mut strides, mut repeat) = (Vec::new(), Vec::new(), 1usize);
        for (&n, &s) in self.shape.iter().zip(&self.strides) {
            if n == 1 {
                continue;
            }
            if s == 0 {
                repeat *= n;
            } else {
                shape.push(n);
                strides.push(s);
            }
        }
        let view = StridedView {
            ptr: self.ptr,
            shape,
            strides,
        };
        (view, repeat)
    }

    /// Whether the view is exactly the `len()` consecutive `itemsize`-byte elements starting at
    /// `ptr`, in C or in Fortran order (length-1 axes ignored): then it can be used in place, in
    /// memory order.
    pub fn is_dense(&self, itemsize: usize) -> bool {
        let dims = || {
            self.shape
                .iter()
                .zip(&self.strides)
                .filter(|(n, _)| **n != 1)
        };
        fn dense<'a>(
            mut dims: impl Iterator<Item = (&'a usize, &'a isize)>,
            itemsize: usize,
        ) -> bool {
            let mut step = itemsize as isize;
            dims.all(|(&n, &s)| {
                let ok = s == step;
                step = step.saturating_mul(n as isize);
                ok
            })
        }
        self.is_empty() || dense(dims().rev(), itemsize) || dense(dims(), itemsize)
    }

    /// Whether two positions of the view may name overlapping bytes (then writing it elementwise
    /// from another buffer is ill-defined). Exact for views whose axes nest (each stride at
    /// least the extent of the smaller ones, which covers every view NumPy's slicing and
    /// transposing make) and for views of at most 2^20 elements; "maybe" (`true`) otherwise.
    pub fn may_overlap_itself(&self, itemsize: usize) -> bool {
        if self.len() <= 1 {
            return false;
        }
        let mut axes: Vec<(usize, usize)> = self
            .shape
            .iter()
            .zip(&self.strides)
            .filter(|(n, _)| **n > 1)
            .map(|(&n, &s)| (s.unsigned_abs(), n))
            .collect();
        axes.sort_unstable();
        // the offsets of the axes taken so far span [0, reach): an axis whose stride is at least
        // that places its copies side by side
        let mut reach = itemsize;
        let nested = axes.iter().all(|&(s, n)| {
            let ok = s >= reach;
            reach = reach.saturating_add(s.saturating_mul(n - 1));
            ok
        });
        if nested {
            return false;
        }
        if axes.first().is_some_and(|&(s, _)| s == 0) || self.len() > OVERLAP_SCAN_MAX {
            return true;
        }
        let mut offsets = Vec::new();
        if offsets.try_reserve_exact(self.len()).is_err() {
            return true;
        }
        self.for_each_offset(|off| offsets.push(off));
        offsets.sort_unstable();
        offsets.windows(2).any(|w| w[1].abs_diff(w[0]) < itemsize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gather_scatter_roundtrip_with_negative_strides() {
        // a 4x6 f64 array, viewed as [::-1, ::2] -> shape (4, 3)
        let mut a: Vec<f64> = (0..24).map(|v| v as f64).collect();
        let row = 6 * 8isize;
        let view = StridedView {
            // SAFETY: row 3 of `a`; shape and strides below stay inside `a`.
            ptr: unsafe { (a.as_mut_ptr() as *mut u8).offset(3 * row) },
            shape: vec![4, 3],
            strides: vec![-row, 16],
        };
        // SAFETY: the view addresses valid, aligned f64s of `a` (see above).
        let got: Vec<f64> = unsafe { view.gather() }.unwrap();
        assert_eq!(
            got,
            vec![18., 20., 22., 12., 14., 16., 6., 8., 10., 0., 2., 4.]
        );
        let doubled: Vec<f64> = got.iter().map(|v| v * 2.0).collect();
        // SAFETY: as for gather; `a` is writable and not otherwise borrowed.
        unsafe { view.scatter(&doubled) };
        assert_eq!(a[18], 36.0);
        assert_eq!(a[19], 19.0);
        let (lo, hi) = view.byte_range(8);
        assert_eq!(hi - lo, (6 * 3 + 4) * 8 + 8);
        assert!(!view.may_overlap_itself(8));
        assert!(!view.is_dense(8));
    }

    fn view(ptr: *mut u8, shape: &[usize], strides: &[isize]) -> StridedView {
        StridedView {
            ptr,
            shape: shape.to_vec(),
            strides: strides.to_vec(),
        }
    }

    #[test]
    fn a_broadcast_view_collapses_to_its_distinct_elements() {
        let mut a = [1.0f64, 2.0, 3.0];
        let p = a.as_mut_ptr() as *mut u8;
        // shape (2^40, 3), strides (0, 8): three distinct elements, each 2^40 times
        let (d, rep) = view(p, &[1 << 40, 3], &[0, 8]).distinct();
        assert_eq!(
            (d.shape.clone(), d.strides.clone(), rep),
            (vec![3], vec![8], 1 << 40)
        );
        assert!(d.is_dense(8));
        // SAFETY: the distinct view addresses the three f64s of the buffer above.
        assert_eq!(unsafe { d.gather::<f64>() }.unwrap(), vec![1.0, 2.0, 3.0]);
        // (5, 1, 7, 2) with strides (8, 0, 0, 16): a length-1 axis is not a repeat
        let (d, rep) = view(p, &[5, 1, 7, 2], &[8, 0, 0, 16]).distinct();
        assert_eq!((d.shape, d.strides, rep), (vec![5, 2], vec![8, 16], 7));
        // everything broadcast: one element
        let (d, rep) = view(p, &[4, 6], &[0, 0]).distinct();
        assert_eq!((d.len(), rep), (1, 24));
        assert!(d.is_dense(8));
        assert_eq!(
            view(p, &[4, 6], &[0, 0]).byte_range(8),
            (p as usize, p as usize + 8)
        );
    }

    #[test]
    fn dense_in_c_or_fortran_order() {
        let p = std::ptr::null_mut::<u8>().wrapping_add(64);
        assert!(view(p, &[2, 3], &[24, 8]).is_dense(8));
        assert!(view(p, &[2, 3], &[8, 16]).is_dense(8));
        assert!(view(p, &[2, 1, 3], &[24, 999, 8]).is_dense(8));
        assert!(!view(p, &[2, 3], &[32, 8]).is_dense(8));
        assert!(!view(p, &[3], &[-8]).is_dense(8));
    }

    #[test]
    fn self_overlap() {
        let p = std::ptr::null_mut::<u8>().wrapping_add(64);
        assert!(view(p, &[4, 3], &[0, 8]).may_overlap_itself(8));
        assert!(view(p, &[4, 3], &[8, 8]).may_overlap_itself(8)); // sliding window
        assert!(!view(p, &[4, 3], &[24, 8]).may_overlap_itself(8));
        assert!(!view(p, &[4, 3], &[-8, 32]).may_overlap_itself(8)); // a transpose
        assert!(!view(p, &[4, 1], &[8, 0]).may_overlap_itself(8)); // np.newaxis
        // not nested, yet disjoint: offsets 0, 16, 24, 40
        assert!(!view(p, &[2, 2], &[24, 16]).may_overlap_itself(8));
        // partial overlap: strides smaller than the element
        assert!(view(p, &[3], &[4]).may_overlap_itself(8));
        // too many to enumerate and not nested: "maybe"
        assert!(view(p, &[1 << 11, 1 << 11], &[24, 16]).may_overlap_itself(8));
    }

    #[test]
    fn an_impossible_copy_is_an_error_not_an_abort() {
        let mut a = [1.0f64];
        let v = view(a.as_mut_ptr() as *mut u8, &[1 << 40, 1 << 20], &[8, 0]);
        // SAFETY: the reservation of 2^60 elements fails before
        // any element is read, so no offset is ever dereferenced.
        assert!(unsafe { v.gather::<f64>() }.is_err());
    }
}
