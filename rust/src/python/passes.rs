//! The passes over checked buffers: a norm under a read claim, an in-place op under a write
//! claim, each reaching strided buffers through contiguous copies. Called without the GIL (or
//! releasing it).

use pyo3::prelude::*;

use super::buffers::{Access, Buf, NoCopy, copies, scatter_back, tensor, tensor_mut};
use crate::claims;
use crate::kernels::{NormType, Partial};
use crate::multi::{self, Op, TensorMut};
use crate::strided::StridedView;

/// The partial (sum of p-th powers, or max) of a tensor whose norm is `n` and whose every
/// element stands for `repeat` elements: `n^p * repeat` as the pair (scale n, sum repeat),
/// which no repeat count overflows; the max is the max.
pub(super) fn repeated(n: f64, repeat: usize, norm: NormType) -> Partial {
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
pub(super) fn norms_of(
    bufs: &[Buf],
    norm: NormType,
    per_tensor: bool,
) -> Result<multi::Norms, NoCopy> {
    let _claim = claims::claim(bufs.iter().map(Buf::byte_range), false);
    let isa = crate::isa::current();
    if bufs.iter().all(|b| b.strided.is_none()) {
        // SAFETY: contiguous buffers of arrays the call holds.
        let tensor = |i: usize| unsafe { bufs[i].in_place() };
        return Ok(multi::norms(bufs.len(), tensor, norm, per_tensor, isa));
    }
    let access: Vec<Access> = bufs.iter().map(Buf::distinct).collect();
    // SAFETY: each access describes memory of an array the call holds.
    let owned = unsafe { copies(views(bufs, &access), 0)? };
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
        return Ok(multi::norms(bufs.len(), tensor, norm, per_tensor, isa));
    }
    let a = multi::norms(plain.len(), |k| tensor(plain[k]), norm, per_tensor, isa);
    let b = multi::norms(rep.len(), |k| tensor(rep[k]), norm, true, isa);
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

/// Apply `op_of(i)` to `bufs[i]` in place under a write claim (releases the GIL). Every copy a strided buffer
/// needs is made before anything is written, so a copy that cannot be allocated changes
/// nothing. An element a view names more than once (broadcast axes, sliding windows) gets the
/// op once: broadcast axes are dropped, other aliases are written the same value.
pub(super) fn apply(
    py: Python<'_>,
    bufs: &[Buf],
    op_of: impl Fn(usize) -> Op + Sync,
) -> Result<(), NoCopy> {
    py.detach(|| {
        // Taken and released without the GIL, so a waiting call never blocks the one it waits on.
        let _claim = claims::claim(bufs.iter().map(Buf::byte_range), true);
        let isa = crate::isa::current();
        let run = |tensors: Vec<TensorMut<'_>>| multi::apply(tensors, &op_of, isa);
        if bufs.iter().all(|b| b.strided.is_none()) {
            // SAFETY: the arrays are live, writeable and pairwise disjoint (checked).
            run(bufs.iter().map(|b| unsafe { b.in_place_mut() }).collect());
            return Ok(());
        }
        let access: Vec<Access> = bufs.iter().map(Buf::distinct).collect();
        // SAFETY: each access describes memory of an array the call holds.
        let mut owned = unsafe { copies(views(bufs, &access), 0)? };
        // SAFETY: the arrays are live, writeable and pairwise disjoint (checked); a dense
        // access names each element once.
        let tensors = access
            .iter()
            .zip(bufs)
            .zip(owned.iter_mut())
            .map(|((a, b), o)| unsafe { tensor_mut(b.dtype, a.ptr, a.len, o.as_mut()) })
            .collect();
        run(tensors);
        // SAFETY: as above; the engine is done with the copies.
        unsafe { scatter_back(access.iter().map(|a| a.view.as_ref()), &owned) };
        Ok(())
    })
}

/// What [`copies`] needs of `bufs` reached through `access`.
fn views<'v>(
    bufs: &[Buf],
    access: &'v [Access],
) -> impl ExactSizeIterator<Item = (super::buffers::DType, Option<&'v StridedView>)> {
    bufs.iter()
        .zip(access)
        .map(|(b, a)| (b.dtype, a.view.as_ref()))
}
