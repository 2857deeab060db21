//! Storage dtypes and the lane types they compute in.
//!
//! Every kernel is written once over a [`Lane`] (`f32` or `f64`). A storage [`Element`] says
//! which lane it computes in and how to present itself as lane blocks: `f32`/`f64` are their own
//! lanes (no copy); `f16`/`bf16` are widened to `f32` in small stack blocks, computed on, and
//! (for in-place work) rounded back to nearest-even.

use core::ops::{Add, Div, Mul, Neg, Sub};

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

#[cfg(target_arch = "x86_64")]
use crate::isa::Level;
use crate::isa::{Isa, dispatch};

/// The arithmetic type a kernel runs in: `f32` or `f64`.
pub trait Lane:
    Copy
    + Send
    + Sync
    + PartialOrd
    + core::fmt::Debug
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + 'static
{
    const ZERO: Self;
    const ONE: Self;
    /// Size in bytes (4 or 8): lets SIMD code pick its loads at compile time.
    const BYTES: usize;
    /// Exact widening to f64.
    fn wide(self) -> f64;
    /// Round an f64 to this lane (nearest-even; overflow gives ±inf, as a C cast).
    fn from_f64(v: f64) -> Self;
    fn abs(self) -> Self;
    fn sqrt(self) -> Self;
    fn is_nan(self) -> bool;
}

impl Lane for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const BYTES: usize = 4;
    #[inline(always)]
    fn wide(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    #[inline(always)]
    fn abs(self) -> Self {
        f32::abs(self)
    }
    #[inline(always)]
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }
    #[inline(always)]
    fn is_nan(self) -> bool {
        f32::is_nan(self)
    }
}

impl Lane for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const BYTES: usize = 8;
    #[inline(always)]
    fn wide(self) -> f64 {
        self
    }
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v
    }
    #[inline(always)]
    fn abs(self) -> Self {
        f64::abs(self)
    }
    #[inline(always)]
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }
    #[inline(always)]
    fn is_nan(self) -> bool {
        f64::is_nan(self)
    }
}

/// Elements per stack block when a half type is widened to f32 (16 KiB of f32).
pub const HALF_BLOCK: usize = 4096;

/// A gradient storage dtype.
pub trait Element: Copy + Send + Sync + 'static {
    /// The lane this dtype computes in.
    type Lane: Lane;
    /// NumPy's name for the dtype ("float16", "bfloat16", "float32", "float64"), for messages.
    fn name() -> &'static str;
    /// Call `f` on the data as consecutive lane blocks, in order. Half types are widened with the
    /// conversion instructions of `isa`'s level (F16C for f16 on AVX2/AVX-512); every path gives
    /// the same values, as the widening is exact. Taking the token is what makes this safe.
    fn for_lane_blocks(x: &[Self], isa: Isa, f: impl FnMut(&[Self::Lane]));
    /// Call `f` on the data as consecutive mutable lane blocks, writing the results back
    /// (rounded to nearest-even for half types, identically on every `isa`).
    fn map_lane_blocks(x: &mut [Self], isa: Isa, f: impl FnMut(&mut [Self::Lane]));
    /// A bound such as a clip threshold, rounded to this dtype first (as Paddle and torch do),
    /// then widened to the lane exactly.
    fn bound(v: f64) -> Self::Lane;
    /// `x * f` for every lane of a block, ready to be stored: for f32/f64 the product rounded
    /// once; for f16/bf16 the product rounded to f32 *to odd*, so that the later rounding to the
    /// half type gives the correctly rounded product (as if computed in f64 and rounded once).
    /// A plain f32 product would round twice and differ in about 1 of 10,000 f16 elements.
    fn scale_lanes(b: &mut [Self::Lane], f: Self::Lane);
    /// The data as `f16`, for kernels that load float16 straight into vector registers (F16C):
    /// `Some` only for `f16`.
    #[inline(always)]
    fn as_f16(_x: &[Self]) -> Option<&[f16]> {
        None
    }
    /// As [`Element::as_f16`], mutably.
    #[inline(always)]
    fn as_f16_mut(_x: &mut [Self]) -> Option<&mut [f16]> {
        None
    }
}

macro_rules! native_element {
    ($t:ty, $name:literal) => {
        impl Element for $t {
            type Lane = $t;
            fn name() -> &'static str {
                $name
            }
            #[inline(always)]
            fn for_lane_blocks(x: &[Self], _isa: Isa, mut f: impl FnMut(&[Self::Lane])) {
                f(x)
            }
            #[inline(always)]
            fn map_lane_blocks(x: &mut [Self], _isa: Isa, mut f: impl FnMut(&mut [Self::Lane])) {
                f(x)
            }
            #[inline(always)]
            fn bound(v: f64) -> Self::Lane {
                v as $t
            }
            #[inline(always)]
            fn scale_lanes(b: &mut [Self::Lane], f: Self::Lane) {
                for v in b.iter_mut() {
                    *v *= f;
                }
            }
        }
    };
}
native_element!(f32, "float32");
native_element!(f64, "float64");

/// Widening to f32 and rounding back, per half type and ISA. Each conversion is one loop over a
/// block (<= [`HALF_BLOCK`] elements), compiled per ISA, so its call costs nothing per element.
trait HalfConvert: Sized {
    fn widen(src: &[Self], dst: &mut [f32], isa: Isa);
    fn narrow(src: &[f32], dst: &mut [Self], isa: Isa);
}

impl HalfConvert for f16 {
    #[inline(always)]
    fn widen(src: &[f16], dst: &mut [f32], isa: Isa) {
        match isa.level() {
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 | Level::Avx512 => {
                // SAFETY: the token is of the AVX2 level or above, whose features include all of
                // AVX2's (F16C among them), for which `f16c` is compiled.
                unsafe { f16c::widen(src, dst) }
            }
            _ => src.convert_to_f32_slice(dst),
        }
    }
    #[inline(always)]
    fn narrow(src: &[f32], dst: &mut [f16], isa: Isa) {
        match isa.level() {
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 | Level::Avx512 => {
                // SAFETY: as in `widen`.
                unsafe { f16c::narrow(src, dst) }
            }
            _ => dst.convert_from_f32_slice(src),
        }
    }
}

/// bf16 <-> f32 is integer work (a shift, and round-to-nearest-even on the bits), written once
/// and autovectorized per ISA. Bitwise the same as `half`'s conversions, NaN quieting included.
mod bf16_bits {
    use half::bf16;

    use super::{Isa, dispatch};

    dispatch! {
        /// bf16 -> f32 (exact) with `isa`'s level.
        #[inline(always)]
        pub fn widen(src: &[bf16], dst: &mut [f32], isa: Isa) => widen_body;
    }

    dispatch! {
        /// f32 -> bf16, nearest-even, with `isa`'s level.
        #[inline(always)]
        pub fn narrow(src: &[f32], dst: &mut [bf16], isa: Isa) => narrow_body;
    }

    #[inline(always)]
    fn widen_body(src: &[bf16], dst: &mut [f32], _isa: Isa) {
        for (d, s) in dst.iter_mut().zip(src) {
            let b = s.to_bits() as u32;
            // a NaN gets its quiet bit set, as half::bf16::to_f32 does
            let b = if b & 0x7fff > 0x7f80 { b | 0x40 } else { b };
            *d = f32::from_bits(b << 16);
        }
    }

    #[inline(always)]
    fn narrow_body(src: &[f32], dst: &mut [bf16], _isa: Isa) {
        for (d, s) in dst.iter_mut().zip(src) {
            let x = s.to_bits();
            let bits = if x & 0x7fff_ffff > 0x7f80_0000 {
                (x >> 16) | 0x40 // NaN: keep the payload's top, make it quiet
            } else {
                (x + 0x7fff + ((x >> 16) & 1)) >> 16 // round to nearest, ties to even
            };
            *d = bf16::from_bits(bits as u16);
        }
    }
}

impl HalfConvert for bf16 {
    #[inline(always)]
    fn widen(src: &[bf16], dst: &mut [f32], isa: Isa) {
        bf16_bits::widen(src, dst, isa)
    }
    #[inline(always)]
    fn narrow(src: &[f32], dst: &mut [bf16], isa: Isa) {
        bf16_bits::narrow(src, dst, isa)
    }
}

/// f16 <-> f32 with F16C, 8 at a time; the tail goes through `half` (which also uses F16C).
#[cfg(target_arch = "x86_64")]
mod f16c {
    use crate::isa::for_level;
    use half::f16;
    use half::slice::HalfFloatSliceExt;
    use std::arch::x86_64::*;

    for_level! { Avx2 =>
        pub fn widen(src: &[f16], dst: &mut [f32]) {
            let n = src.len().min(dst.len());
            let body = n - n % 8;
            for i in (0..body).step_by(8) {
                // SAFETY: i + 8 <= n for both slices; unaligned loads/stores.
                unsafe {
                    let h = _mm_loadu_si128(src.as_ptr().add(i) as *const __m128i);
                    _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
                }
            }
            src[body..n].convert_to_f32_slice(&mut dst[body..n]);
        }
    }

    for_level! { Avx2 =>
        pub fn narrow(src: &[f32], dst: &mut [f16]) {
            let n = src.len().min(dst.len());
            let body = n - n % 8;
            for i in (0..body).step_by(8) {
                // SAFETY: as in widen. Rounding: to nearest, ties to even (IEEE, as half does).
                unsafe {
                    let v = _mm256_loadu_ps(src.as_ptr().add(i));
                    let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
                    _mm_storeu_si128(dst.as_mut_ptr().add(i) as *mut __m128i, h);
                }
            }
            dst[body..n].convert_from_f32_slice(&src[body..n]);
        }
    }
}

/// x * f rounded to f32 with round-to-odd: the exact product (a half times an f32 has at most
/// 11 + 24 bits, so the f64 product is exact) rounded to nearest, then, if that was inexact and
/// landed on an even significand, moved one ulp towards the exact value. Rounding this to a
/// format with at most 22 bits of significand (f16: 11, bf16: 8) gives the correctly rounded
/// product. NaN and inf pass through as the plain product.
#[inline(always)]
fn mul_round_to_odd(x: f32, f: f32) -> f32 {
    let exact = x as f64 * f as f64;
    let p = exact as f32;
    let back = p as f64;
    let bits = p.to_bits();
    // branch-free so that it vectorizes: +1 or -1 ulp (two's complement) or nothing
    let step = if back.abs() < exact.abs() {
        1u32
    } else {
        u32::MAX
    };
    let fix = (back != exact) & (bits & 1 == 0) & p.is_finite();
    f32::from_bits(bits.wrapping_add(if fix { step } else { 0 }))
}

/// `Element::as_f16` for f16 (itself) and bf16 (nothing).
#[inline(always)]
fn f16_itself(x: &[f16]) -> Option<&[f16]> {
    Some(x)
}
#[inline(always)]
fn f16_itself_mut(x: &mut [f16]) -> Option<&mut [f16]> {
    Some(x)
}
#[inline(always)]
fn not_f16<T>(_: &[T]) -> Option<&[f16]> {
    None
}
#[inline(always)]
fn not_f16_mut<T>(_: &mut [T]) -> Option<&mut [f16]> {
    None
}

macro_rules! half_element {
    ($t:ty, $name:literal, $as16:ident, $as16_mut:ident) => {
        impl Element for $t {
            #[inline(always)]
            fn as_f16(x: &[Self]) -> Option<&[f16]> {
                $as16(x)
            }
            #[inline(always)]
            fn as_f16_mut(x: &mut [Self]) -> Option<&mut [f16]> {
                $as16_mut(x)
            }
            type Lane = f32;
            fn name() -> &'static str {
                $name
            }
            #[inline(always)]
            fn for_lane_blocks(x: &[Self], isa: Isa, mut f: impl FnMut(&[f32])) {
                let mut buf = [0f32; HALF_BLOCK];
                for block in x.chunks(HALF_BLOCK) {
                    let lanes = &mut buf[..block.len()];
                    <$t>::widen(block, lanes, isa);
                    f(lanes);
                }
            }
            #[inline(always)]
            fn map_lane_blocks(x: &mut [Self], isa: Isa, mut f: impl FnMut(&mut [f32])) {
                let mut buf = [0f32; HALF_BLOCK];
                for block in x.chunks_mut(HALF_BLOCK) {
                    let lanes = &mut buf[..block.len()];
                    <$t>::widen(block, lanes, isa);
                    f(lanes);
                    <$t>::narrow(lanes, block, isa);
                }
            }
            #[inline(always)]
            fn bound(v: f64) -> f32 {
                <$t>::from_f64(v).to_f32()
            }
            #[inline(always)]
            fn scale_lanes(b: &mut [f32], f: f32) {
                for v in b.iter_mut() {
                    *v = mul_round_to_odd(*v, f);
                }
            }
        }
    };
}
half_element!(f16, "float16", f16_itself, f16_itself_mut);
half_element!(bf16, "bfloat16", not_f16, not_f16_mut);

#[cfg(test)]
mod tests {
    use super::*;

    /// Every one of the 65,536 bit patterns widens exactly as `half` does, on every ISA, and
    /// rounds back to itself (NaNs to their quieted form, as `half` does).
    fn exhaustive<H: Element<Lane = f32> + HalfConvert + PartialEq + core::fmt::Debug>(
        from_bits: impl Fn(u16) -> H,
        to_bits: impl Fn(H) -> u16,
        to_f32: impl Fn(H) -> f32,
        from_f32: impl Fn(f32) -> H,
    ) {
        let all: Vec<H> = (0..=u16::MAX).map(&from_bits).collect();
        for isa in Isa::available() {
            let mut wide = vec![0f32; all.len()];
            for (src, dst) in all.chunks(HALF_BLOCK).zip(wide.chunks_mut(HALF_BLOCK)) {
                H::widen(src, dst, isa);
            }
            let mut back = vec![from_bits(0); all.len()];
            for (src, dst) in wide.chunks(HALF_BLOCK).zip(back.chunks_mut(HALF_BLOCK)) {
                H::narrow(src, dst, isa);
            }
            for i in 0..all.len() {
                assert_eq!(
                    wide[i].to_bits(),
                    to_f32(all[i]).to_bits(),
                    "{isa:?} {i:#x}"
                );
                assert_eq!(
                    to_bits(back[i]),
                    to_bits(from_f32(wide[i])),
                    "{isa:?} {i:#x}"
                );
            }
        }
    }

    #[test]
    fn half_conversions_exhaustive_every_isa() {
        exhaustive::<f16>(f16::from_bits, f16::to_bits, f16::to_f32, f16::from_f32);
        exhaustive::<bf16>(bf16::from_bits, bf16::to_bits, bf16::to_f32, bf16::from_f32);
    }

    /// Rounding f32 -> half on every ISA equals `half` for values between representable halves:
    /// ties, near-ties, overflow to inf, subnormals, odd block lengths (the non-SIMD tail).
    #[test]
    fn half_rounding_matches_half_every_isa() {
        let mut rng = crate::testing::Rng::new(0x2545_f491_4f6c_dd1d);
        // random bit patterns: every exponent, NaNs and infinities included
        let mut vals: Vec<f32> = (0..50_001)
            .map(|_| f32::from_bits((rng.next_u64() >> 32) as u32))
            .collect();
        vals.extend([
            65520.0,
            65519.99,
            -65520.0,
            1.0 + 1.0 / 2048.0,
            6e-8,
            3e-8,
            f32::MAX,
        ]);
        vals.extend([
            1.0 + 1.0 / 256.0,
            1.0 + 3.0 / 256.0,
            3.4e38,
            -0.0,
            f32::MIN_POSITIVE,
        ]);
        for isa in Isa::available() {
            for n in [vals.len(), 7, 1, 0] {
                let mut h = vec![f16::ZERO; n];
                let mut b = vec![bf16::ZERO; n];
                f16::narrow(&vals[..n], &mut h, isa);
                bf16::narrow(&vals[..n], &mut b, isa);
                for i in 0..n {
                    assert_eq!(
                        h[i].to_bits(),
                        f16::from_f32(vals[i]).to_bits(),
                        "{isa:?} {}",
                        vals[i]
                    );
                    assert_eq!(
                        b[i].to_bits(),
                        bf16::from_f32(vals[i]).to_bits(),
                        "{isa:?} {}",
                        vals[i]
                    );
                }
            }
        }
    }
}
