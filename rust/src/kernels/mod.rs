//! Pure per-slice kernels. Nothing here knows about Python, threads or tensors lists.
//!
//! - [`reduce`]: the partial p-norm of one slice ([`Partial`]), overflow-safe for f64;
//! - [`elementwise`]: in-place scale and clamp.
//!
//! Each operation has one generic body (`#[inline(always)]`) that the ISA variants instantiate
//! inside `#[target_feature]` functions, so the compiler vectorizes it for that ISA.

pub mod elementwise;
pub mod reduce;

pub use elementwise::{clamp, scale};

/// How far ahead (bytes) the float16 loops prefetch. They do more work per byte than the f32
/// ones, so the out-of-order window alone keeps fewer cache misses in flight.
pub const PREFETCH: usize = 2048;
pub use reduce::{NormType, Partial, partial_norm};
