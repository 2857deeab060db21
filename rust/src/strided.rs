//! Gather and scatter for non-contiguous buffers (any rank, byte strides, negative strides too).
//!
//! A strided view is copied into a contiguous vector in C order, worked on there, and (for
//! in-place operations) copied back. The copy costs one extra pass; contiguous buffers (C or
//! Fortran order) never take this path.

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
unsafe impl Sync for StridedView {}

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

    /// Copy the elements out in C order.
    ///
    /// # Safety
    /// `ptr`, `shape` and `strides` must describe valid, aligned `T`s.
    pub unsafe fn gather<T: Copy>(&self) -> Vec<T> {
        let mut out = Vec::with_capacity(self.len());
        self.for_each_offset(|off| out.push(unsafe { *(self.ptr.offset(off) as *const T) }));
        out
    }

    /// Copy `data` (C order) back into the view.
    ///
    /// # Safety
    /// As for [`gather`](Self::gather), and the memory must be writable.
    pub unsafe fn scatter<T: Copy>(&self, data: &[T]) {
        let mut it = data.iter();
        self.for_each_offset(|off| unsafe {
            *(self.ptr.offset(off) as *mut T) = *it.next().unwrap()
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
            ptr: unsafe { (a.as_mut_ptr() as *mut u8).offset(3 * row) },
            shape: vec![4, 3],
            strides: vec![-row, 16],
        };
        let got: Vec<f64> = unsafe { view.gather() };
        assert_eq!(
            got,
            vec![18., 20., 22., 12., 14., 16., 6., 8., 10., 0., 2., 4.]
        );
        let doubled: Vec<f64> = got.iter().map(|v| v * 2.0).collect();
        unsafe { view.scatter(&doubled) };
        assert_eq!(a[18], 36.0);
        assert_eq!(a[19], 19.0);
        let (lo, hi) = view.byte_range(8);
        assert_eq!(hi - lo, (6 * 3 + 4) * 8 + 8);
    }
}
