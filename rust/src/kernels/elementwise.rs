//! In-place elementwise kernels: scale by a factor, clamp to [lo, hi].
//!
//! Both work in the storage dtype's lane: f32/f64 directly, f16/bf16 widened to f32 in stack
//! blocks and rounded back to nearest-even, so each element is rounded exactly once.

use crate::element::{Element, Lane};
#[cfg(target_arch = "x86_64")]
use crate::isa::Level;
use crate::isa::{Isa, dispatch};

/// x <- x * factor, with `factor` rounded to the lane (f32 for f32/f16/bf16, as torch and Paddle
/// multiply by a scale cast to the grad's dtype).
pub fn scale<E: Element>(x: &mut [E], factor: f64, isa: Isa) {
    scale_by(x, <E::Lane as Lane>::from_f64(factor), isa)
}

dispatch! {
    /// x <- x * f, `f` already in the lane.
    fn scale_by<E: Element>(x: &mut [E], f: E::Lane, isa: Isa) => scale_body;
}

#[inline(always)]
fn scale_body<E: Element>(x: &mut [E], f: E::Lane, isa: Isa) {
    #[cfg(target_arch = "x86_64")]
    if isa.level() == Level::Avx512
        && let Some(h) = E::as_f16_mut(x)
    {
        // float16: 16 at a time in registers, the tail through the block path
        let f = f.wide() as f32; // exact: the lane of f16 is f32
        let body = h.len() - h.len() % 16;
        let (head, tail) = h.split_at_mut(body);
        // SAFETY: the token is of the AVX-512 level, so the CPU has its features.
        unsafe { simd::scale_f16_avx512(head, f) };
        return scale_lanes(tail, f, isa);
    }
    scale_lanes(x, f, isa)
}

/// x <- x * f through lane blocks ([`Element::scale_lanes`]).
#[inline(always)]
fn scale_lanes<E: Element>(x: &mut [E], f: E::Lane, isa: Isa) {
    E::map_lane_blocks(x, isa, |b| E::scale_lanes(b, f));
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use crate::isa::for_level;
    use crate::kernels::PREFETCH;
    use half::f16;
    use std::arch::x86_64::*;

    for_level! { Avx512 =>
        /// x <- x * f for float16, correctly rounded once, 16 elements per step, all in f32: the
        /// product rounded *to odd* directly, as truncation (embedded rounding toward zero) with
        /// the last bit set when it was inexact, which one FMA tells (`x*f - t`, exact whenever
        /// the product is not an f32 subnormal). That is the value `element::mul_round_to_odd`
        /// computes through f64; rounding it to f16 (F16C, nearest-even, as the block path
        /// narrows) gives the correctly rounded product. Where the two differ before narrowing
        /// they agree after it: products in the f32 subnormal range are far below f16's smallest
        /// subnormal (+-0 either way), and a product past f32's range truncates to f32::MAX (odd
        /// already) instead of inf, both of which round to f16 inf. NaN and infinite products
        /// are left as they are.
        pub fn scale_f16_avx512(x: &mut [f16], f: f32) {
            const TRUNC: i32 = _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC;
            let fv = _mm512_set1_ps(f);
            let one = _mm512_set1_epi32(1);
            for c in x.chunks_exact_mut(16) {
                let ptr = c.as_mut_ptr() as *mut __m256i;
                // a hint only (never faults): keeps enough lines in flight for the memory system
                _mm_prefetch::<_MM_HINT_T0>((ptr as *const i8).wrapping_add(PREFETCH));
                // SAFETY: c holds 16 f16 (32 bytes); unaligned load.
                let v = _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(ptr) });
                let t = _mm512_mul_round_ps::<TRUNC>(v, fv);
                // inexact (ordered: a NaN product stays as it is)
                let sticky = _mm512_cmp_ps_mask::<_CMP_NEQ_OQ>(
                    _mm512_fmsub_ps(v, fv, t),
                    _mm512_setzero_ps(),
                );
                let bits = _mm512_castps_si512(t);
                let odd = _mm512_mask_or_epi32(bits, sticky, bits, one);
                let h = _mm512_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                    _mm512_castsi512_ps(odd),
                );
                // SAFETY: as for the load.
                unsafe { _mm256_storeu_si256(ptr, h) };
            }
        }
    }
}

/// x <- lo if x < lo, hi if x > hi, else x (NaN stays NaN). The bounds are first rounded to the
/// storage dtype (Paddle's `Scalar.to<T>()`), so a clamped element equals the rounded bound
/// exactly. The caller guarantees lo <= hi after that rounding.
pub fn clamp<E: Element>(x: &mut [E], lo: f64, hi: f64, isa: Isa) {
    clamp_to(x, E::bound(lo), E::bound(hi), isa)
}

dispatch! {
    /// x <- clamp(x, lo, hi), the bounds already rounded to the dtype and widened to the lane.
    fn clamp_to<E: Element>(x: &mut [E], lo: E::Lane, hi: E::Lane, isa: Isa) => clamp_body;
}

#[inline(always)]
fn clamp_body<E: Element>(x: &mut [E], lo: E::Lane, hi: E::Lane, isa: Isa) {
    E::map_lane_blocks(x, isa, |b| {
        for v in b.iter_mut() {
            let a = *v;
            *v = if a < lo {
                lo
            } else if a > hi {
                hi
            } else {
                a
            };
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};

    fn data(n: usize) -> Vec<f64> {
        (0..n)
            .map(|i| ((i * 7919) % 1000) as f64 / 100.0 - 5.0)
            .collect()
    }

    /// The 16-bit pattern (of a format whose values `value` gives) nearest to the finite `v`,
    /// ties to even: a brute-force reference, independent of any conversion routine.
    fn nearest(v: f64, value: impl Fn(u16) -> f64) -> u16 {
        let sign = if v.is_sign_negative() { 0x8000 } else { 0 };
        let a = v.abs();
        // binary search over the positive patterns (value is monotonic in the bits up to inf)
        let (mut lo, mut hi) = (0u16, 0x7fffu16);
        while value(hi).is_nan() {
            hi -= 1;
        }
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if value(mid) <= a { lo = mid } else { hi = mid }
        }
        // past the largest finite value, inf stands where the next value would be (IEEE overflow)
        let at_hi = if value(hi).is_infinite() {
            2.0 * value(lo) - value(lo - 1)
        } else {
            value(hi)
        };
        let (dl, dh) = (a - value(lo), at_hi - a);
        let m = if dl < dh || (dl == dh && lo % 2 == 0) {
            lo
        } else {
            hi
        };
        m | sign
    }

    /// Scaling a half type rounds once: every f16/bf16 bit pattern times several factors equals
    /// the f64 product rounded to the type once ([`nearest`]; `half`'s own f64 conversions are
    /// not usable as the reference: the F16C one goes through f32, the software one drops sticky
    /// bits for subnormal results).
    #[test]
    fn half_scale_rounds_once_exhaustive() {
        let h: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).collect();
        let b: Vec<bf16> = (0..=u16::MAX).map(bf16::from_bits).collect();
        for k in [
            0.1,
            0.123456789,
            std::f64::consts::FRAC_1_SQRT_2,
            0.999999,
            1e-3,
            3.0,
        ] {
            let kf = k as f32 as f64;
            for isa in Isa::available() {
                let (mut h2, mut b2) = (h.clone(), b.clone());
                scale(&mut h2, k, isa);
                scale(&mut b2, k, isa);
                for i in 0..h.len() {
                    if h[i].is_nan() {
                        assert!(h2[i].is_nan());
                    } else {
                        assert_eq!(
                            h2[i].to_bits(),
                            nearest(h[i].to_f64() * kf, |b| f16::from_bits(b).to_f64()),
                            "{k} {i:#x}"
                        );
                    }
                    if b[i].is_nan() {
                        assert!(b2[i].is_nan());
                    } else {
                        assert_eq!(
                            b2[i].to_bits(),
                            nearest(b[i].to_f64() * kf, |b| bf16::from_bits(b).to_f64()),
                            "{k} {i:#x}"
                        );
                    }
                }
            }
        }
    }

    /// Every f16 bit pattern, NaN payloads and infinities included, scales to the same bits on
    /// every ISA (only a NaN factor leaves the NaN payload unspecified): the AVX-512 path
    /// converts in registers, the others through blocks; the odd length leaves a tail for the
    /// block path.
    #[test]
    fn half_scale_bitwise_equal_across_isas() {
        let h: Vec<f16> = (0..=u16::MAX).chain(0..7).map(f16::from_bits).collect();
        for k in [
            0.1,
            3.0,
            1e30,
            1e38,
            -3e38,
            0.0,
            -2.5,
            f64::NAN,
            f64::INFINITY,
            1e-40,
        ] {
            let mut want = h.clone();
            scale(&mut want, k, Isa::baseline());
            for isa in Isa::available() {
                let mut got = h.clone();
                scale(&mut got, k, isa);
                for i in 0..h.len() {
                    if want[i].is_nan() && k.is_nan() {
                        // NaN times NaN: which payload wins is unspecified (LLVM may commute)
                        assert!(got[i].is_nan(), "{isa:?} {k} {i:#x}");
                    } else {
                        assert_eq!(got[i].to_bits(), want[i].to_bits(), "{isa:?} {k} {i:#x}");
                    }
                }
            }
        }
    }

    #[test]
    fn scale_matches_scalar_bitwise() {
        for isa in Isa::available() {
            let x = data(1037);
            let mut a: Vec<f32> = x.iter().map(|&v| v as f32).collect();
            let mut b: Vec<f64> = x.clone();
            let mut c: Vec<f16> = x.iter().map(|&v| f16::from_f64(v)).collect();
            let mut d: Vec<bf16> = x.iter().map(|&v| bf16::from_f64(v)).collect();
            let (a0, c0, d0) = (a.clone(), c.clone(), d.clone());
            let k = 0.123456789;
            scale(&mut a, k, isa);
            scale(&mut b, k, isa);
            scale(&mut c, k, isa);
            scale(&mut d, k, isa);
            for i in 0..x.len() {
                assert_eq!(a[i].to_bits(), (a0[i] * k as f32).to_bits());
                assert_eq!(b[i].to_bits(), (x[i] * k).to_bits());
                // half types: the f64 product of the stored value and the f32 factor, rounded once
                let kf = k as f32 as f64;
                assert_eq!(
                    c[i],
                    f16::from_f64_const(c0[i].to_f64() * kf),
                    "{isa:?} {i}"
                );
                assert_eq!(
                    d[i],
                    bf16::from_f64_const(d0[i].to_f64() * kf),
                    "{isa:?} {i}"
                );
            }
        }
    }

    #[test]
    fn clamp_matches_scalar_and_keeps_nan() {
        for isa in Isa::available() {
            let mut x: Vec<f32> = data(1000).iter().map(|&v| v as f32).collect();
            x[3] = f32::NAN;
            x[4] = f32::INFINITY;
            x[5] = f32::NEG_INFINITY;
            x[6] = -0.0;
            let x0 = x.clone();
            clamp(&mut x, -0.1, 0.1, isa);
            let (lo, hi) = (-0.1f64 as f32, 0.1f64 as f32);
            for i in 0..x.len() {
                let want = if x0[i] < lo {
                    lo
                } else if x0[i] > hi {
                    hi
                } else {
                    x0[i]
                };
                assert_eq!(x[i].to_bits(), want.to_bits(), "{i} {isa:?}");
            }
            assert!(x[3].is_nan());
            let mut h: Vec<f16> = vec![f16::from_f32(3.0), f16::from_f32(-70000.0), f16::NAN];
            clamp(&mut h, -1.0, 0.1, isa);
            assert_eq!(h[0], f16::from_f64(0.1));
            assert_eq!(h[1], f16::from_f32(-1.0));
            assert!(h[2].is_nan());
        }
    }
}
