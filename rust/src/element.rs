//! Storage dtypes and the lane types they compute in.
//!
//! Every kernel is written once over a [`Lane`] (`f32` or `f64`). A storage [`Element`] says
//! which lane it computes in and how to present itself as lane blocks: `f32`/`f64` are their own
//! lanes (no copy); `f16`/`bf16` are widened to `f32` in small stack blocks, computed on, and
//! (for in-place work) rounded back to nearest-even.

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

/// The arithmetic type a kernel runs in: `f32` or `f64`.
pub trait Lane: Copy + Send + Sync + PartialOrd + core::fmt::Debug + 'static {
    const ZERO: Self;
    /// Exact widening to f64.
    fn wide(self) -> f64;
    /// Round an f64 to this lane (nearest-even; overflow gives ±inf, as a C cast).
    fn from_f64(v: f64) -> Self;
    fn abs(self) -> Self;
    fn mul(self, other: Self) -> Self;
    fn is_nan(self) -> bool;
}

impl Lane for f32 {
    const ZERO: Self = 0.0;
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
    fn mul(self, other: Self) -> Self {
        self * other
    }
    #[inline(always)]
    fn is_nan(self) -> bool {
        f32::is_nan(self)
    }
}

impl Lane for f64 {
    const ZERO: Self = 0.0;
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
    fn mul(self, other: Self) -> Self {
        self * other
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
    /// NumPy's name for the dtype, for messages.
    const NAME: &'static str;
    /// Call `f` on the data as consecutive lane blocks, in order.
    fn for_lane_blocks(x: &[Self], f: impl FnMut(&[Self::Lane]));
    /// Call `f` on the data as consecutive mutable lane blocks, writing the results back.
    fn map_lane_blocks(x: &mut [Self], f: impl FnMut(&mut [Self::Lane]));
    /// A bound such as a clip threshold, rounded to this dtype first (as Paddle and torch do),
    /// then widened to the lane exactly.
    fn bound(v: f64) -> Self::Lane;
}

macro_rules! native_element {
    ($t:ty, $name:literal) => {
        impl Element for $t {
            type Lane = $t;
            const NAME: &'static str = $name;
            #[inline(always)]
            fn for_lane_blocks(x: &[Self], mut f: impl FnMut(&[Self::Lane])) {
                f(x)
            }
            #[inline(always)]
            fn map_lane_blocks(x: &mut [Self], mut f: impl FnMut(&mut [Self::Lane])) {
                f(x)
            }
            #[inline(always)]
            fn bound(v: f64) -> Self::Lane {
                v as $t
            }
        }
    };
}
native_element!(f32, "float32");
native_element!(f64, "float64");

macro_rules! half_element {
    ($t:ty, $name:literal) => {
        impl Element for $t {
            type Lane = f32;
            const NAME: &'static str = $name;
            #[inline(always)]
            fn for_lane_blocks(x: &[Self], mut f: impl FnMut(&[f32])) {
                let mut buf = [0f32; HALF_BLOCK];
                for block in x.chunks(HALF_BLOCK) {
                    let lanes = &mut buf[..block.len()];
                    block.convert_to_f32_slice(lanes);
                    f(lanes);
                }
            }
            #[inline(always)]
            fn map_lane_blocks(x: &mut [Self], mut f: impl FnMut(&mut [f32])) {
                let mut buf = [0f32; HALF_BLOCK];
                for block in x.chunks_mut(HALF_BLOCK) {
                    let lanes = &mut buf[..block.len()];
                    block.convert_to_f32_slice(lanes);
                    f(lanes);
                    block.convert_from_f32_slice(lanes);
                }
            }
            #[inline(always)]
            fn bound(v: f64) -> f32 {
                <$t>::from_f64(v).to_f32()
            }
        }
    };
}
half_element!(f16, "float16");
half_element!(bf16, "bfloat16");
