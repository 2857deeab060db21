//! Arguments the entry points share beyond the arrays.

use pyo3::prelude::*;

/// A coefficient given once for every tensor, or once per tensor: `scale_`'s factors, the
/// optimizers' `lr`, `weight_decay`, `beta1_pow`, `beta2_pow`.
#[derive(FromPyObject)]
pub(super) enum PerTensor {
    One(f64),
    Each(Vec<f64>),
}

impl PerTensor {
    /// Whether it fits `n` tensors; else the number of values given.
    pub(super) fn fits(&self, n: usize) -> Result<(), usize> {
        match self {
            PerTensor::Each(v) if v.len() != n => Err(v.len()),
            _ => Ok(()),
        }
    }

    /// The value of tensor `i` (of a count it [`fits`](Self::fits)).
    pub(super) fn at(&self, i: usize) -> f64 {
        match self {
            PerTensor::One(v) => *v,
            PerTensor::Each(v) => v[i],
        }
    }
}
