//! In-place elementwise kernels: scale by a factor, clamp to [lo, hi].
//!
//! Both work in the storage dtype's lane: f32/f64 directly, f16/bf16 widened to f32 in stack
//! blocks and rounded back to nearest-even, so each element is rounded exactly once.

use crate::element::{Element, Lane};
use crate::isa::Isa;

/// x <- x * factor, with `factor` rounded to the lane (f32 for f32/f16/bf16, as torch and Paddle
/// multiply by a scale cast to the grad's dtype).
pub fn scale<E: Element>(x: &mut [E], factor: f64, isa: Isa) {
    let f = <E::Lane as Lane>::from_f64(factor);
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { scale_avx512(x, f) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { scale_avx2(x, f) },
        _ => scale_body(x, f, Isa::Baseline),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
fn scale_avx512<E: Element>(x: &mut [E], f: E::Lane) {
    scale_body(x, f, Isa::Avx512)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn scale_avx2<E: Element>(x: &mut [E], f: E::Lane) {
    scale_body(x, f, Isa::Avx2)
}

#[inline(always)]
fn scale_body<E: Element>(x: &mut [E], f: E::Lane, isa: Isa) {
    E::map_lane_blocks(x, isa, |b| E::scale_lanes(b, f));
}

/// x <- lo if x < lo, hi if x > hi, else x (NaN stays NaN). The bounds are first rounded to the
/// storage dtype (Paddle's `Scalar.to<T>()`), so a clamped element equals the rounded bound
/// exactly. The caller guarantees lo <= hi after that rounding.
pub fn clamp<E: Element>(x: &mut [E], lo: f64, hi: f64, isa: Isa) {
    let (lo, hi) = (E::bound(lo), E::bound(hi));
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { clamp_avx512(x, lo, hi) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { clamp_avx2(x, lo, hi) },
        _ => clamp_body(x, lo, hi, Isa::Baseline),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
fn clamp_avx512<E: Element>(x: &mut [E], lo: E::Lane, hi: E::Lane) {
    clamp_body(x, lo, hi, Isa::Avx512)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn clamp_avx2<E: Element>(x: &mut [E], lo: E::Lane, hi: E::Lane) {
    clamp_body(x, lo, hi, Isa::Avx2)
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
