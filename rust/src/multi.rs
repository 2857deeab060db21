//! The multi-tensor engine: many gradient buffers, one pass, fixed chunks, ordered combine.
//!
//! Every tensor is cut into chunks of [`CHUNK`] elements. Chunk boundaries depend only on the
//! tensor sizes, never on the thread count; each chunk's partial is computed independently and
//! the partials are combined serially in (tensor, chunk) order. Results are therefore bitwise
//! identical for any `RAYON_NUM_THREADS`. Work under [`PARALLEL_MIN`] elements, or averaging
//! under [`PER_TENSOR_MIN`] elements per tensor, runs on the calling thread; otherwise
//! consecutive small chunks are batched into tasks of about [`TASK`] elements so that thousands
//! of tiny tensors cost a handful of rayon jobs.
//!
//! This module is the only place that decides threading.

use half::{bf16, f16};
use rayon::prelude::*;

use crate::element::Element;
use crate::isa::Isa;
use crate::kernels::{self, NormType, Partial};
use crate::pool;

/// Elements per chunk: the unit of determinism (64 KiB..256 KiB of data, L2-resident).
pub const CHUNK: usize = 1 << 15;
/// Below this many elements in one call, threads cost more than they save.
pub const PARALLEL_MIN: usize = 1 << 18;
/// Target elements per rayon task when batching small chunks.
pub const TASK: usize = 1 << 16;
/// Below this many elements per tensor on average, a call stays on the calling thread however
/// large it is. Each tensor costs a fixed few tens of ns on the calling thread (the binding's
/// checks, the kernel calls, the ordered combine) that threads do not share well, while rayon's
/// wake-up and spin-down cost tens of microseconds and, on a 2-core machine, the spinning
/// workers slow the serial part. Measured on a 2-core Xeon (AVX-512), 1.28M f32 elements
/// norm-then-scale, 1 vs 2 threads: tensors of 256: 0.43 vs 0.77 ms; of 1,024: 0.50 vs 0.54 ms;
/// of 2,048: 0.46 vs 0.40 ms; of 4,096: 0.44 vs 0.34 ms; one tensor: 0.41 vs 0.28 ms.
pub const PER_TENSOR_MIN: usize = 1 << 11;

/// A read-only gradient buffer of any supported dtype.
#[derive(Clone, Copy, Debug)]
pub enum Tensor<'a> {
    F32(&'a [f32]),
    F64(&'a [f64]),
    F16(&'a [f16]),
    BF16(&'a [bf16]),
}

/// A mutable gradient buffer of any supported dtype.
#[derive(Debug)]
pub enum TensorMut<'a> {
    F32(&'a mut [f32]),
    F64(&'a mut [f64]),
    F16(&'a mut [f16]),
    BF16(&'a mut [bf16]),
}

macro_rules! each_dtype {
    ($t:expr, $ty:ident, $x:ident => $body:expr) => {
        match $t {
            $ty::F32($x) => $body,
            $ty::F64($x) => $body,
            $ty::F16($x) => $body,
            $ty::BF16($x) => $body,
        }
    };
}

impl<'a> Tensor<'a> {
    pub fn len(&self) -> usize {
        each_dtype!(self, Tensor, x => x.len())
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn slice(&self, start: usize, end: usize) -> Tensor<'a> {
        match *self {
            Tensor::F32(x) => Tensor::F32(&x[start..end]),
            Tensor::F64(x) => Tensor::F64(&x[start..end]),
            Tensor::F16(x) => Tensor::F16(&x[start..end]),
            Tensor::BF16(x) => Tensor::BF16(&x[start..end]),
        }
    }
    fn partial(&self, norm: NormType, isa: Isa) -> Partial {
        each_dtype!(self, Tensor, x => kernels::partial_norm(x, norm, isa))
    }
}

impl<'a> TensorMut<'a> {
    pub fn len(&self) -> usize {
        each_dtype!(self, TensorMut, x => x.len())
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn as_tensor(&self) -> Tensor<'_> {
        match self {
            TensorMut::F32(x) => Tensor::F32(x),
            TensorMut::F64(x) => Tensor::F64(x),
            TensorMut::F16(x) => Tensor::F16(x),
            TensorMut::BF16(x) => Tensor::BF16(x),
        }
    }
    /// Append this tensor's chunks of at most `n` elements, in order, each with `op`.
    fn push_chunks(self, n: usize, op: Op, out: &mut Vec<(TensorMut<'a>, Op)>) {
        match self {
            TensorMut::F32(x) => out.extend(x.chunks_mut(n).map(|c| (TensorMut::F32(c), op))),
            TensorMut::F64(x) => out.extend(x.chunks_mut(n).map(|c| (TensorMut::F64(c), op))),
            TensorMut::F16(x) => out.extend(x.chunks_mut(n).map(|c| (TensorMut::F16(c), op))),
            TensorMut::BF16(x) => out.extend(x.chunks_mut(n).map(|c| (TensorMut::BF16(c), op))),
        }
    }
}

/// The result of one norm pass: each tensor's norm and the norm of all of them together.
#[derive(Clone, Debug, PartialEq)]
pub struct Norms {
    pub per_tensor: Vec<f64>,
    pub total: f64,
}

/// Group consecutive items (by size) into tasks of about `TASK` elements: ranges of item indices.
fn batch(sizes: impl Iterator<Item = usize>) -> Vec<std::ops::Range<usize>> {
    let mut tasks = Vec::new();
    let (mut start, mut acc, mut i) = (0, 0, 0);
    for n in sizes {
        acc += n.max(64); // an item costs something even when tiny
        i += 1;
        if acc >= TASK {
            tasks.push(start..i);
            start = i;
            acc = 0;
        }
    }
    if start < i {
        tasks.push(start..i);
    }
    tasks
}

/// Whether a call over `total` elements in `tensors` tensors goes to rayon: the one threading
/// decision. Only speed depends on it, never a result. Which pool runs it is [`pool::workers`]
/// (the caller's rayon pool, fastclip's own, or none where threads cannot start); small calls
/// never look.
pub fn parallel(total: usize, tensors: usize) -> bool {
    total >= PARALLEL_MIN && total >= tensors.saturating_mul(PER_TENSOR_MIN) && pool::threads() > 1
}

/// Run `f` over `items`, on this thread when [`parallel`]`(total, tensors)` says so, otherwise
/// batched on rayon; `size` gives an item's element count, `tensors` how many tensors the items
/// were cut from. Returns outputs in item order. Every parallel loop in the crate goes through
/// here (optimizer updates included).
pub fn run<I: Send, O: Send>(
    items: Vec<I>,
    total: usize,
    tensors: usize,
    size: impl Fn(&I) -> usize,
    f: impl Fn(I) -> O + Sync,
) -> Vec<O> {
    if !parallel(total, tensors) {
        return items.into_iter().map(f).collect();
    }
    let tasks = batch(items.iter().map(&size));
    let mut groups: Vec<Vec<I>> = Vec::with_capacity(tasks.len());
    let mut it = items.into_iter();
    for r in tasks {
        groups.push(it.by_ref().take(r.len()).collect());
    }
    let each = |groups: Vec<Vec<I>>| {
        groups
            .into_par_iter()
            .map(|g| g.into_iter().map(&f).collect::<Vec<O>>())
            .collect::<Vec<Vec<O>>>()
    };
    let done = match pool::workers() {
        pool::Workers::Current => each(groups),
        pool::Workers::Pool(p) => p.install(|| each(groups)),
        // only if the pool went away since `parallel` said yes (it cannot, short of a fork)
        pool::Workers::Caller => groups
            .into_iter()
            .map(|g| g.into_iter().map(&f).collect())
            .collect(),
    };
    done.into_iter().flatten().collect()
}

/// Every tensor's norm and the total norm, in one pass over the `count` tensors `tensor(0..count)`
/// (given by index, so a caller needs no list of them). `per_tensor` may be skipped (empty).
///
/// total = (sum_i sum_j |x_ij|^p)^(1/p), or max_ij |x_ij| for `Inf`; NaN if any element is NaN.
pub fn norms<'a>(
    count: usize,
    tensor: impl Fn(usize) -> Tensor<'a>,
    norm: NormType,
    per_tensor: bool,
    isa: Isa,
) -> Norms {
    let total_len: usize = (0..count).map(|i| tensor(i).len()).sum();
    // Each tensor's chunks fold in chunk order, then the tensors fold in tensor order: the same
    // arithmetic on both paths, whatever the thread count.
    let mut total = Partial::ZERO;
    let mut each = Vec::with_capacity(if per_tensor { count } else { 0 });
    if parallel(total_len, count) {
        let mut items = Vec::new();
        let mut owner = Vec::new();
        for i in 0..count {
            let t = tensor(i);
            let n = t.len();
            let mut start = 0;
            while start < n {
                let end = (start + CHUNK).min(n);
                items.push(t.slice(start, end));
                owner.push(i);
                start = end;
            }
        }
        let partials = run(items, total_len, count, Tensor::len, |t| {
            t.partial(norm, isa)
        });
        let mut partials = partials.iter().zip(&owner).peekable();
        for i in 0..count {
            let mut e = Partial::ZERO;
            while let Some((p, _)) = partials.next_if(|(_, o)| **o == i) {
                e = e.combine(*p, norm);
            }
            total = total.combine(e, norm);
            if per_tensor {
                each.push(e.norm(norm));
            }
        }
    } else {
        // The same chunks combined in the same order, without materializing the chunk list:
        // this is what makes 100,000 tiny tensors cheap.
        for i in 0..count {
            let t = tensor(i);
            let n = t.len();
            let mut e = Partial::ZERO;
            let mut start = 0;
            while start < n {
                let end = (start + CHUNK).min(n);
                e = e.combine(t.slice(start, end).partial(norm, isa), norm);
                start = end;
            }
            total = total.combine(e, norm);
            if per_tensor {
                each.push(e.norm(norm));
            }
        }
    }
    Norms {
        per_tensor: each,
        total: total.norm(norm),
    }
}

/// An in-place elementwise operation.
#[derive(Clone, Copy, Debug)]
pub enum Op {
    /// x <- x * factor
    Scale(f64),
    /// x <- clamp(x, lo, hi), NaN kept
    Clamp(f64, f64),
}

fn apply_one(t: TensorMut<'_>, op: Op, isa: Isa) {
    fn go<E: Element>(x: &mut [E], op: Op, isa: Isa) {
        match op {
            Op::Scale(f) => kernels::scale(x, f, isa),
            Op::Clamp(lo, hi) => kernels::clamp(x, lo, hi, isa),
        }
    }
    each_dtype!(t, TensorMut, x => go(x, op, isa))
}

/// Apply `op_of(i)` to `tensors[i]` in place, in parallel where it pays. A scale by exactly 1
/// is skipped (x * 1 == x).
pub fn apply(tensors: Vec<TensorMut<'_>>, op_of: impl Fn(usize) -> Op, isa: Isa) {
    let skip = |t: &TensorMut<'_>, op: Op| matches!(op, Op::Scale(f) if f == 1.0) || t.is_empty();
    let (mut total_len, mut count) = (0, 0);
    for (i, t) in tensors.iter().enumerate() {
        if !skip(t, op_of(i)) {
            total_len += t.len();
            count += 1;
        }
    }
    if !parallel(total_len, count) {
        // Elementwise results do not depend on chunking: one kernel call per tensor.
        for (i, t) in tensors.into_iter().enumerate() {
            let op = op_of(i);
            if !skip(&t, op) {
                apply_one(t, op, isa);
            }
        }
        return;
    }
    let mut items = Vec::new();
    for (i, t) in tensors.into_iter().enumerate() {
        let op = op_of(i);
        if !skip(&t, op) {
            t.push_chunks(CHUNK, op, &mut items);
        }
    }
    run(
        items,
        total_len,
        count,
        |(t, _)| t.len(),
        |(t, op)| apply_one(t, op, isa),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isa;

    /// `n` values uniform in [-1, 1), as f32 (the crate's one test PRNG).
    fn data(n: usize, seed: u64) -> Vec<f32> {
        crate::testing::uniform(n, seed, -1.0, 1.0)
            .into_iter()
            .map(|v| v as f32)
            .collect()
    }

    fn all_norms(tensors: &[Tensor<'_>], norm: NormType) -> Norms {
        norms(tensors.len(), |i| tensors[i], norm, true, isa::current())
    }

    fn with_threads<T: Send>(n: usize, f: impl FnOnce() -> T + Send) -> T {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .unwrap()
            .install(f)
    }

    #[test]
    fn bitwise_identical_for_any_thread_count() {
        let sizes = [3usize, 1 << 20, 5000, 0, CHUNK + 1, 77, 3 * CHUNK];
        let bufs: Vec<Vec<f32>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| data(n, i as u64 + 1))
            .collect();
        let b64: Vec<Vec<f64>> = bufs
            .iter()
            .map(|b| b.iter().map(|&v| v as f64 * 1e150).collect())
            .collect();
        let mut tensors: Vec<Tensor> = bufs.iter().map(|b| Tensor::F32(b)).collect();
        tensors.extend(b64.iter().map(|b| Tensor::F64(b)));
        for norm in [
            NormType::P(2.0),
            NormType::P(1.0),
            NormType::Inf,
            NormType::P(3.0),
        ] {
            let one = with_threads(1, || all_norms(&tensors, norm));
            for threads in [2, 3, 8] {
                let many = with_threads(threads, || all_norms(&tensors, norm));
                assert_eq!(
                    one.total.to_bits(),
                    many.total.to_bits(),
                    "{norm:?} {threads}"
                );
                for (a, b) in one.per_tensor.iter().zip(&many.per_tensor) {
                    assert_eq!(a.to_bits(), b.to_bits());
                }
            }
        }
    }

    #[test]
    fn total_is_the_norm_of_the_per_tensor_norms() {
        let bufs: Vec<Vec<f32>> = (0..50)
            .map(|i| data(1000 + i * 997, i as u64 + 9))
            .collect();
        let tensors: Vec<Tensor> = bufs.iter().map(|b| Tensor::F32(b)).collect();
        let r = all_norms(&tensors, NormType::P(2.0));
        let flat: f64 = bufs
            .iter()
            .flatten()
            .map(|&v| (v as f64) * (v as f64))
            .sum::<f64>()
            .sqrt();
        assert!((r.total - flat).abs() <= 1e-12 * flat);
        for (b, n) in bufs.iter().zip(&r.per_tensor) {
            let want = b
                .iter()
                .map(|&v| (v as f64) * (v as f64))
                .sum::<f64>()
                .sqrt();
            assert!((n - want).abs() <= 1e-12 * want);
        }
        let empty = all_norms(&[], NormType::P(2.0));
        assert_eq!(empty.total, 0.0);
    }

    #[test]
    fn apply_is_thread_count_independent_and_exact() {
        let base: Vec<Vec<f32>> = (0..20)
            .map(|i| data(30_000 + i * 1000, i as u64 + 5))
            .collect();
        let run_with = |threads| {
            let mut bufs = base.clone();
            let ops: Vec<Op> = (0..bufs.len())
                .map(|i| {
                    if i % 2 == 0 {
                        Op::Scale(0.37)
                    } else {
                        Op::Clamp(-0.5, 0.25)
                    }
                })
                .collect();
            with_threads(threads, || {
                let tensors = bufs.iter_mut().map(|b| TensorMut::F32(b)).collect();
                apply(tensors, |i| ops[i], isa::current())
            });
            bufs
        };
        let one = run_with(1);
        assert_eq!(one, run_with(4));
        for (i, (a, b)) in one.iter().zip(&base).enumerate() {
            for (x, y) in a.iter().zip(b) {
                let want = if i % 2 == 0 {
                    y * 0.37f32
                } else {
                    y.clamp(-0.5, 0.25)
                };
                assert_eq!(x.to_bits(), want.to_bits());
            }
        }
    }
}
