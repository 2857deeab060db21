//! Reductions over one slice: sum of |x|^p (p = 1, 2 or any p > 0) and max |x|.
//!
//! Accumulation is always in f64. For f32/f16/bf16 input that alone makes overflow and
//! underflow impossible for p <= 2 (|x|^2 <= 1.2e77, min subnormal^2 ~ 2e-90). For f64 input a
//! plain f64 sum can overflow (entries ~1e200) or underflow (entries ~1e-200), so a chunk whose
//! fast sum is not safely in range (and, for any p, a sum that over- or underflowed) is redone as
//! sum (|x|/m)^p with m = max |x| (Blue's / LAPACK nrm2 idea, but paid for only when needed):
//! its largest term is exactly 1, so even p in the thousands keeps it. A partial is then the pair
//! (m, s) with value m^p * s, and partials combine in a fixed order.
//!
//! NaN anywhere gives NaN; +-inf gives +inf (for p-norms) as torch does.

use crate::element::{Element, Lane};
#[cfg(target_arch = "x86_64")]
use crate::isa::Level;
use crate::isa::{Isa, dispatch};

/// Independent accumulators per loop: breaks the add dependency chain (Rust never
/// reassociates floats, so this is what lets the loop vectorize) and fixes the summation order,
/// which is therefore the same on every ISA.
const LANES: usize = 16;

/// A fast sum below this (2^-900) may have lost terms to underflow: redo it scaled.
const SAFE_MIN: f64 = 1.1830521861667747e-271; // 2^-900

/// Which norm: `P(p)` for sum |x|^p (p > 0, finite), `Inf` for max |x|.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum NormType {
    P(f64),
    Inf,
}

impl NormType {
    /// `p` as given by a user: `inf` is the max norm; p must be > 0 and not NaN.
    pub fn new(p: f64) -> Option<NormType> {
        if p == f64::INFINITY {
            Some(NormType::Inf)
        } else if p > 0.0 && p.is_finite() {
            Some(NormType::P(p))
        } else {
            None
        }
    }
}

/// The partial norm of some elements: for `P(p)`, the value sum |x|^p = scale^p * sum;
/// for `Inf`, max |x| = sum (scale is 1). NaN propagates through `sum`.
///
/// `scale` is 1 for a plain sum, and max |x| for a chunk redone scaled (its largest term is then
/// exactly 1, so no p, however large, underflows it away).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Partial {
    pub scale: f64,
    pub sum: f64,
}

/// r^p for a ratio r in [0, 1]: r*r and r exactly as the kernels compute them, powf otherwise.
fn pow_ratio(r: f64, p: f64) -> f64 {
    if p == 2.0 {
        r * r
    } else if p == 1.0 {
        r
    } else {
        r.powf(p)
    }
}

/// s^(1/p). `powf(1/p)` errs by about ln(s) * eps / p relative (1/p is rounded), which reaches
/// 1e-14 for sums near 1e308; the orders users actually pick get correctly rounded (or 1-2 ulp)
/// roots instead.
fn root(s: f64, p: f64) -> f64 {
    if p == 2.0 {
        s.sqrt()
    } else if p == 1.0 {
        s
    } else if p == 3.0 {
        s.cbrt()
    } else if p == 4.0 {
        s.sqrt().sqrt()
    } else if p == 8.0 {
        s.sqrt().sqrt().sqrt()
    } else {
        s.powf(1.0 / p)
    }
}

impl Partial {
    pub const ZERO: Partial = Partial {
        scale: 1.0,
        sum: 0.0,
    };

    fn plain(sum: f64) -> Partial {
        Partial { scale: 1.0, sum }
    }

    /// Combine two partials, as overflow-safe as summing inside a chunk: only a true combined
    /// value whose norm is above the f64 range gives inf.
    ///
    /// Fast path (the usual one): equal scales (two plain sums) whose sum is finite add as they
    /// are. Otherwise (different scales, or the plain sum overflowed) both are brought to the
    /// common scale `s = max(n_a, n_b)`, where `n = scale * sum^(1/p)` is each partial's own norm
    /// (finite whenever the combined norm is): the value is `s^p * ((n_a/s)^p + (n_b/s)^p)`, whose
    /// sum lies in [1, 2]. Rescaling through the norms (not through `(scale_a/scale_b)^p`, which
    /// can fall into the subnormals) keeps full precision however far apart the scales are;
    /// a contribution is lost only when it is below 2^-1074 relative to the other, i.e. negligible.
    /// Order-sensitive only through rounding: callers combine in a fixed order.
    pub fn combine(self, other: Partial, norm: NormType) -> Partial {
        match norm {
            NormType::Inf => {
                let m = if self.sum.is_nan() || other.sum.is_nan() {
                    f64::NAN
                } else {
                    self.sum.max(other.sum)
                };
                Partial::plain(m)
            }
            NormType::P(p) => {
                if self.sum.is_nan() || other.sum.is_nan() {
                    return Partial::plain(f64::NAN);
                }
                if self.sum == f64::INFINITY || other.sum == f64::INFINITY {
                    return Partial::plain(f64::INFINITY);
                }
                if other.sum == 0.0 {
                    return self;
                }
                if self.sum == 0.0 {
                    return other;
                }
                if self.scale == other.scale {
                    let sum = self.sum + other.sum;
                    if sum.is_finite() {
                        return Partial {
                            scale: self.scale,
                            sum,
                        };
                    }
                }
                let (na, nb) = (self.norm(norm), other.norm(norm));
                let s = na.max(nb);
                if s == f64::INFINITY {
                    // one partial's own norm is above the f64 range: so is the combined norm
                    return Partial::plain(f64::INFINITY);
                }
                Partial {
                    scale: s,
                    sum: pow_ratio(na / s, p) + pow_ratio(nb / s, p),
                }
            }
        }
    }

    /// The norm this partial stands for: scale * sum^(1/p), or max |x|.
    pub fn norm(self, norm: NormType) -> f64 {
        match norm {
            NormType::Inf => self.sum,
            NormType::P(p) => root(self.sum, p) * self.scale,
        }
    }
}

dispatch! {
    /// The partial p-norm (or max) of one slice, computed with the given ISA.
    pub fn partial_norm<E: Element>(x: &[E], norm: NormType, isa: Isa) -> Partial
        => partial_norm_body;
}

#[inline(always)]
fn partial_norm_body<E: Element>(x: &[E], norm: NormType, isa: Isa) -> Partial {
    let p = match norm {
        NormType::Inf => return Partial::plain(max_abs(x, isa)),
        NormType::P(p) => p,
    };
    let fast = sum_pow(x, p, isa);
    if fast.is_finite() && fast >= SAFE_MIN {
        return Partial::plain(fast);
    }
    if fast.is_nan() {
        return Partial::plain(f64::NAN);
    }
    // Zero, possibly underflowed, or overflowed: look at the largest magnitude.
    let m = max_abs(x, isa);
    if m.is_nan() {
        return Partial::plain(f64::NAN);
    }
    if m == 0.0 {
        return Partial::ZERO;
    }
    if m.is_infinite() {
        return Partial::plain(f64::INFINITY);
    }
    Partial {
        scale: m,
        sum: sum_pow_scaled(x, p, m, isa),
    }
}

/// sum |x|^p in f64.
#[inline(always)]
fn sum_pow<E: Element>(x: &[E], p: f64, isa: Isa) -> f64 {
    // float16 on AVX-512: converted in registers (no block buffer), same arithmetic.
    #[cfg(target_arch = "x86_64")]
    if isa.level() == Level::Avx512
        && (p == 2.0 || p == 1.0)
        && let Some(h) = E::as_f16(x)
    {
        let term = if p == 2.0 { Term::Square } else { Term::Abs };
        // SAFETY: the token is of the AVX-512 level, so the CPU has its features.
        return unsafe { simd::sum_f16_avx512(h, term) };
    }
    let mut total = 0.0;
    E::for_lane_blocks(x, isa, |b| {
        total += if p == 2.0 {
            sum_terms(b, Term::Square, isa)
        } else if p == 1.0 {
            sum_terms(b, Term::Abs, isa)
        } else {
            sum_lanes(b, |v| v.abs().powf(p))
        }
    });
    total
}

/// sum (|x| / m)^p in f64 for m = max |x| (finite, non-zero): the largest term is exactly 1,
/// so neither overflow nor underflow can lose it. A rare path (only for chunks whose plain sum
/// left the safe range), so the division per element does not matter.
#[inline(always)]
fn sum_pow_scaled<E: Element>(x: &[E], p: f64, m: f64, isa: Isa) -> f64 {
    let mut total = 0.0;
    E::for_lane_blocks(x, isa, |b| {
        total += sum_lanes(b, |v| pow_ratio(v.abs() / m, p));
    });
    total
}

/// sum f(x as f64) with LANES accumulators combined in a fixed tree order: the reference
/// order every ISA reproduces. Element `LANES * i + j` goes to accumulator `j`.
#[inline(always)]
fn sum_lanes<L: Lane>(x: &[L], f: impl Fn(f64) -> f64) -> f64 {
    let mut acc = [0f64; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for j in 0..LANES {
            acc[j] += f(c[j].wide());
        }
    }
    finish(acc, chunks.remainder(), f)
}

/// The fixed end of every sum: accumulators combined pairwise (j += j + width, width 8, 4, 2,
/// 1), then the tail (the last < LANES elements, in order) added to it.
#[inline(always)]
fn finish<L: Lane>(mut acc: [f64; LANES], rest: &[L], f: impl Fn(f64) -> f64) -> f64 {
    let mut tail = 0.0;
    for &v in rest {
        tail += f(v.wide());
    }
    let mut width = LANES / 2;
    while width > 0 {
        for j in 0..width {
            acc[j] += acc[j + width];
        }
        width /= 2;
    }
    acc[0] + tail
}

/// The two terms with a hand-vectorized sum: x^2 (the L2 norm) and |x| (L1).
#[derive(Clone, Copy, PartialEq)]
enum Term {
    Square,
    Abs,
}

impl Term {
    #[inline(always)]
    fn scalar(self) -> impl Fn(f64) -> f64 {
        move |v: f64| if self == Term::Square { v * v } else { v.abs() }
    }
}

/// sum term(x) with [`sum_lanes`]'s exact order and arithmetic (widen exactly, square or abs, add:
/// no FMA, no reassociation), with explicit SIMD where the CPU has it. Autovectorizing the
/// 16-accumulator f32 -> f64 body is unreliable (it was SLP-vectorized to 128-bit lanes and ran
/// at half speed), so the AVX2/AVX-512 paths spell the same arithmetic out in intrinsics.
#[inline(always)]
fn sum_terms<L: Lane>(x: &[L], term: Term, isa: Isa) -> f64 {
    match isa.level() {
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 => {
            // SAFETY: the token is of the AVX-512 level, so the CPU has its features.
            unsafe { simd::sum_avx512(x, term) }
        }
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => {
            // SAFETY: the token is of the AVX2 level, so the CPU has its features.
            unsafe { simd::sum_avx2(x, term) }
        }
        _ => sum_lanes(x, term.scalar()),
    }
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use super::{LANES, Term, finish};
    use crate::element::{HALF_BLOCK, Lane};
    use crate::isa::for_level;
    use crate::kernels::PREFETCH;
    use half::f16;
    use std::arch::x86_64::*;

    for_level! { Avx512 =>
        /// [`sum_avx512`] of float16 data with the widening fused into the loads: the same
        /// [`HALF_BLOCK`]-element blocks, each summed with 16 accumulators, finished, and added to
        /// the total in order, exactly as the block path (`for_lane_blocks` then `sum_terms`) does.
        pub fn sum_f16_avx512(x: &[f16], term: Term) -> f64 {
            let mut total = 0.0;
            for block in x.chunks(HALF_BLOCK) {
                let mut acc = [_mm512_setzero_pd(); 2];
                let mut chunks = block.chunks_exact(LANES);
                for c in &mut chunks {
                    let ptr = c.as_ptr() as *const __m256i;
                    // a hint only (never faults): keeps enough lines in flight for the memory
                    // system
                    _mm_prefetch::<_MM_HINT_T0>((ptr as *const i8).wrapping_add(PREFETCH));
                    // SAFETY: c holds 16 f16 (32 bytes); unaligned load.
                    let v = _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(ptr) });
                    let halves = [
                        _mm512_castps512_ps256(v),
                        _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v))),
                    ];
                    for (a, h) in acc.iter_mut().zip(halves) {
                        let d = _mm512_cvtps_pd(h);
                        let t = if term == Term::Square {
                            _mm512_mul_pd(d, d)
                        } else {
                            _mm512_abs_pd(d)
                        };
                        *a = _mm512_add_pd(*a, t);
                    }
                }
                let mut lanes = [0f64; LANES];
                for (k, a) in acc.iter().enumerate() {
                    // SAFETY: lanes has room for 8 f64 at 8k.
                    unsafe { _mm512_storeu_pd(lanes.as_mut_ptr().add(8 * k), *a) };
                }
                let rest = chunks.remainder();
                let mut tail = [0f32; LANES];
                for (d, h) in tail.iter_mut().zip(rest) {
                    *d = h.to_f32();
                }
                total += finish(lanes, &tail[..rest.len()], term.scalar());
            }
            total
        }
    }

    for_level! { Avx2 =>
        /// AVX2: the 16 accumulators are four 4-lane f64 registers (register k holds lanes
        /// 4k..4k+3).
        pub fn sum_avx2<L: Lane>(x: &[L], term: Term) -> f64 {
            let mut acc = [_mm256_setzero_pd(); 4];
            let sign = _mm256_set1_pd(-0.0);
            let mut chunks = x.chunks_exact(LANES);
            for c in &mut chunks {
                _mm_prefetch::<_MM_HINT_T0>((c.as_ptr() as *const i8).wrapping_add(PREFETCH));
                // SAFETY: c holds LANES = 16 elements of L (f32 or f64); unaligned loads.
                let v: [__m256d; 4] = unsafe {
                    if L::BYTES == 4 {
                        let p = c.as_ptr() as *const f32;
                        [
                            _mm256_cvtps_pd(_mm_loadu_ps(p)),
                            _mm256_cvtps_pd(_mm_loadu_ps(p.add(4))),
                            _mm256_cvtps_pd(_mm_loadu_ps(p.add(8))),
                            _mm256_cvtps_pd(_mm_loadu_ps(p.add(12))),
                        ]
                    } else {
                        let p = c.as_ptr() as *const f64;
                        [
                            _mm256_loadu_pd(p),
                            _mm256_loadu_pd(p.add(4)),
                            _mm256_loadu_pd(p.add(8)),
                            _mm256_loadu_pd(p.add(12)),
                        ]
                    }
                };
                for (a, v) in acc.iter_mut().zip(v) {
                    let t = if term == Term::Square {
                        _mm256_mul_pd(v, v)
                    } else {
                        _mm256_andnot_pd(sign, v)
                    };
                    *a = _mm256_add_pd(*a, t);
                }
            }
            let mut lanes = [0f64; LANES];
            for (k, a) in acc.iter().enumerate() {
                // SAFETY: lanes has room for 4 f64 at 4k.
                unsafe { _mm256_storeu_pd(lanes.as_mut_ptr().add(4 * k), *a) };
            }
            finish(lanes, chunks.remainder(), term.scalar())
        }
    }

    for_level! { Avx512 =>
        /// AVX-512: the 16 accumulators are two 8-lane f64 registers.
        pub fn sum_avx512<L: Lane>(x: &[L], term: Term) -> f64 {
            let mut acc = [_mm512_setzero_pd(); 2];
            let mut chunks = x.chunks_exact(LANES);
            for c in &mut chunks {
                _mm_prefetch::<_MM_HINT_T0>((c.as_ptr() as *const i8).wrapping_add(PREFETCH));
                // SAFETY: as in sum_avx2.
                let v: [__m512d; 2] = unsafe {
                    if L::BYTES == 4 {
                        let p = c.as_ptr() as *const f32;
                        [
                            _mm512_cvtps_pd(_mm256_loadu_ps(p)),
                            _mm512_cvtps_pd(_mm256_loadu_ps(p.add(8))),
                        ]
                    } else {
                        let p = c.as_ptr() as *const f64;
                        [_mm512_loadu_pd(p), _mm512_loadu_pd(p.add(8))]
                    }
                };
                for (a, v) in acc.iter_mut().zip(v) {
                    let t = if term == Term::Square {
                        _mm512_mul_pd(v, v)
                    } else {
                        _mm512_abs_pd(v)
                    };
                    *a = _mm512_add_pd(*a, t);
                }
            }
            let mut lanes = [0f64; LANES];
            for (k, a) in acc.iter().enumerate() {
                // SAFETY: lanes has room for 8 f64 at 8k.
                unsafe { _mm512_storeu_pd(lanes.as_mut_ptr().add(8 * k), *a) };
            }
            finish(lanes, chunks.remainder(), term.scalar())
        }
    }
}

/// max |x| as f64; NaN if any element is NaN (a NaN, once seen, is never replaced).
#[inline(always)]
fn max_abs<E: Element>(x: &[E], isa: Isa) -> f64 {
    let mut m = f64::NEG_INFINITY;
    let mut seen = false;
    E::for_lane_blocks(x, isa, |b| {
        seen |= !b.is_empty();
        let bm = max_abs_lanes(b);
        m = if bm.is_nan() || m.is_nan() {
            f64::NAN
        } else {
            m.max(bm)
        };
    });
    if seen { m } else { 0.0 }
}

#[inline(always)]
fn max_abs_lanes<L: Lane>(x: &[L]) -> f64 {
    let mut acc = [L::ZERO; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for j in 0..LANES {
            let a = c[j].abs();
            // `a > m || a is NaN` keeps a NaN sticky: nothing compares greater than NaN.
            acc[j] = if a > acc[j] || a.is_nan() { a } else { acc[j] };
        }
    }
    let mut m = L::ZERO;
    for &v in acc.iter().chain(chunks.remainder()) {
        let a = v.abs();
        m = if a > m || a.is_nan() { a } else { m };
    }
    if m.is_nan() { f64::NAN } else { m.wide() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};

    fn reference(x: &[f64], p: f64) -> f64 {
        // naive, in f64 over exactly representable test data
        if p.is_infinite() {
            return x.iter().fold(0.0, |m, v| {
                if v.is_nan() || m.is_nan() {
                    f64::NAN
                } else {
                    m.max(v.abs())
                }
            });
        }
        x.iter().map(|v| v.abs().powf(p)).sum::<f64>().powf(1.0 / p)
    }

    fn data(n: usize, seed: u64) -> Vec<f64> {
        crate::testing::uniform(n, seed, -4.0, 4.0)
    }

    fn norm_of<E: Element>(x: &[E], p: f64, isa: Isa) -> f64 {
        let n = NormType::new(p).unwrap();
        partial_norm(x, n, isa).norm(n)
    }

    #[test]
    fn matches_reference_every_isa_and_dtype() {
        for n in [
            0usize, 1, 7, 15, 16, 17, 31, 100, 4095, 4096, 4097, 10_000, 40_003,
        ] {
            let x = data(n, n as u64);
            let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
            let x16: Vec<f16> = x.iter().map(|&v| f16::from_f64(v)).collect();
            let xb: Vec<bf16> = x.iter().map(|&v| bf16::from_f64(v)).collect();
            for p in [1.0, 2.0, 3.0, 0.5, f64::INFINITY] {
                let r64 = reference(&x, p);
                let r32 = reference(&x32.iter().map(|&v| v as f64).collect::<Vec<_>>(), p);
                let r16 = reference(&x16.iter().map(|v| v.to_f64()).collect::<Vec<_>>(), p);
                let rb = reference(&xb.iter().map(|v| v.to_f64()).collect::<Vec<_>>(), p);
                let first = [
                    norm_of(&x, p, Isa::baseline()),
                    norm_of(&x32, p, Isa::baseline()),
                    norm_of(&x16, p, Isa::baseline()),
                    norm_of(&xb, p, Isa::baseline()),
                ];
                for isa in Isa::available() {
                    let got = norm_of(&x, p, isa);
                    let all = [
                        got,
                        norm_of(&x32, p, isa),
                        norm_of(&x16, p, isa),
                        norm_of(&xb, p, isa),
                    ];
                    for (a, b) in all.iter().zip(&first) {
                        assert_eq!(
                            a.to_bits(),
                            b.to_bits(),
                            "ISAs must agree bitwise: n={n} p={p} {isa:?}"
                        );
                    }
                    for (g, r) in [
                        (got, r64),
                        (norm_of(&x32, p, isa), r32),
                        (norm_of(&x16, p, isa), r16),
                        (norm_of(&xb, p, isa), rb),
                    ] {
                        assert!(
                            (g - r).abs() <= 1e-12 * r.abs(),
                            "n={n} p={p} {isa:?}: {g} vs {r}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn f64_does_not_overflow_or_underflow() {
        for isa in Isa::available() {
            for scale in [1e200, 1e-200, 1e300, 1e-300, 1e-320, f64::MAX] {
                let x = vec![scale, scale, -scale, scale];
                let got = norm_of(&x, 2.0, isa);
                let want = 2.0 * scale;
                assert!(
                    (got - want).abs() <= 1e-15 * want || (scale == f64::MAX && got.is_infinite()),
                    "{scale}: {got} vs {want}"
                );
                let got1 = norm_of(&x[..2], 1.0, isa);
                assert!((got1 - 2.0 * scale).abs() <= 1e-15 * 2.0 * scale || scale == f64::MAX);
            }
            // the true norm of [MAX, MAX] overflows: inf is the right answer
            assert_eq!(norm_of(&[f64::MAX, f64::MAX], 2.0, isa), f64::INFINITY);
            // 3-4-5 at extreme scales
            let n = norm_of(&[3e-310, 4e-310], 2.0, isa);
            assert!((n - 5e-310).abs() <= 1e-323, "{n}");
            let n = norm_of(&[3e300, 4e300], 2.0, isa);
            assert!((n - 5e300).abs() <= 1e285, "{n}");
        }
    }

    #[test]
    fn nan_and_inf() {
        for isa in Isa::available() {
            let mut x = data(1000, 3);
            x[500] = f64::NAN;
            for p in [1.0, 2.0, 2.5, f64::INFINITY] {
                assert!(norm_of(&x, p, isa).is_nan(), "p={p}");
            }
            x[500] = f64::INFINITY;
            x[10] = f64::NEG_INFINITY;
            for p in [1.0, 2.0, 2.5, f64::INFINITY] {
                assert_eq!(norm_of(&x, p, isa), f64::INFINITY, "p={p}");
            }
            // NaN after an inf and the other way round
            let y = [f32::INFINITY, f32::NAN, 1.0];
            assert!(norm_of(&y, 2.0, isa).is_nan());
            assert!(norm_of(&y, f64::INFINITY, isa).is_nan());
            let y = [f32::NAN, f32::INFINITY];
            assert!(norm_of(&y, f64::INFINITY, isa).is_nan());
        }
    }

    #[test]
    fn huge_p_tends_to_the_max() {
        for isa in Isa::available() {
            // 0.5^1100 underflows, (0.75)^1e10 too; the norm must still be ~ max |x|
            assert_eq!(norm_of(&[0.5f64, 0.25], 1100.0, isa), 0.5);
            assert_eq!(norm_of(&[300.0f32, -400.0], 1e10, isa), 400.0);
            let n = norm_of(&[0.3f64, 0.4], 5000.0, isa);
            assert!((n - 0.4).abs() < 1e-15, "{n}");
            // and across partials with different scales
            let k = NormType::P(1100.0);
            let a = partial_norm(&[0.5f64], k, isa);
            let b = partial_norm(&[1e-300f64], k, isa);
            assert_eq!(a.combine(b, k).norm(k), 0.5);
            assert_eq!(b.combine(a, k).norm(k), 0.5);
        }
    }

    #[test]
    fn partials_combine_exactly() {
        let n = NormType::P(2.0);
        let a = partial_norm(&[1e200f64, 1e200], n, Isa::baseline());
        let b = partial_norm(&[1.0f64], n, Isa::baseline());
        let c = a.combine(b, n);
        assert!((c.norm(n) - 2f64.sqrt() * 1e200).abs() < 1e186);
        let z = Partial::ZERO.combine(b, n);
        assert_eq!(z.norm(n), 1.0);
    }

    #[test]
    fn combining_partials_never_overflows_a_finite_norm() {
        // (values, p, want): plain partials whose sum overflows f64 although the norm is finite
        let cases: [(&[f64], f64, f64); 4] = [
            (&[1e154, 1e154], 2.0, 2f64.sqrt() * 1e154),
            (&[5e102, 5e102], 3.0, 2f64.powf(1.0 / 3.0) * 5e102),
            (&[3.4e38, 3.4e38], 8.0, 2f64.powf(1.0 / 8.0) * 3.4e38),
            (&[1e300, 1e300], 1.0, 2e300),
        ];
        for (xs, p, want) in cases {
            let k = NormType::P(p);
            let mut acc = Partial::ZERO;
            for &x in xs {
                acc = acc.combine(partial_norm(&[x], k, Isa::baseline()), k);
            }
            let got = acc.norm(k);
            assert!(
                (got - want).abs() <= 4e-16 * want,
                "{xs:?} p={p}: {got} vs {want}"
            );
        }
        // 1000 partials of 1e153: norm sqrt(1000) * 1e153
        let k = NormType::P(2.0);
        let one = partial_norm(&[1e153f64], k, Isa::baseline());
        let acc = (0..1000).fold(Partial::ZERO, |a, _| a.combine(one, k));
        let want = 1000f64.sqrt() * 1e153;
        assert!(
            (acc.norm(k) - want).abs() <= 1e-13 * want,
            "{}",
            acc.norm(k)
        );
        // a true norm above the range is still inf
        let big = partial_norm(&[1.5e308f64], k, Isa::baseline());
        assert_eq!(big.combine(big, k).norm(k), f64::INFINITY);
        // plain and scaled partials far apart keep full precision
        let tiny = partial_norm(&[3e-200f64, 4e-200], k, Isa::baseline());
        let huge = partial_norm(&[3e200f64, 4e200], k, Isa::baseline());
        assert_eq!(tiny.combine(huge, k).norm(k), huge.norm(k));
        let plain = partial_norm(&[3.0f64, 4.0], k, Isa::baseline());
        let scaled = partial_norm(&[3e-170f64, 4e-170], k, Isa::baseline());
        assert_eq!(plain.combine(scaled, k).norm(k), 5.0);
        assert_eq!(scaled.combine(plain, k).norm(k), 5.0);
    }
}
