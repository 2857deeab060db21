//! fastclip's Rust core: exact multi-tensor norms and in-place clipping.
//!
//! Layers (data flows down):
//! - [`element`]: the storage dtypes (f32, f64, f16, bf16) and the lane type each computes in;
//! - [`isa`]: the ISA token ([`isa::Isa`], the proof that the CPU has a level's features) and
//!   the one dispatch macro;
//! - [`kernels`]: pure per-slice kernels (reductions, scale, clamp, the optimizer update) with one
//!   generic body each, compiled once per ISA level and chosen at run time by the token;
//! - [`multi`]: the multi-tensor engine, the only place that decides threading;
//! - [`optim`]: the optimizer rules, their per-tensor coefficients, the multi-tensor update;
//! - [`pool`]: which rayon pool runs a parallel call (fork-aware; none where threads cannot start);
//! - [`strided`]: gather/scatter for non-contiguous buffers;
//! - `python` (feature `python`): the thin PyO3 binding. Nothing above it knows Python.

pub mod claims;
pub mod element;
pub mod isa;
pub mod kernels;
pub mod multi;
pub mod optim;
pub mod pool;
pub mod strided;
#[cfg(test)]
mod testing;

#[cfg(feature = "python")]
mod python;
