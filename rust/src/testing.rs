//! The one pseudo-random generator of the crate's tests and benchmarks (`benches/kernels.rs`
//! includes this file by path, so it depends on nothing but `core`).
//!
//! SplitMix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number generators", 2014):
//! any seed, 0 included, gives a full-period, well-mixed stream; the same seed gives the same
//! numbers on every platform, so test data is reproducible.

/// A deterministic stream of pseudo-random numbers.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 uniformly distributed bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1), a multiple of 2^-53 (exact in f64).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// `n` values uniform in [lo, hi).
    pub fn vec(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f64> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }
}

/// `n` values uniform in [lo, hi) from the stream of `seed`.
pub fn uniform(n: usize, seed: u64, lo: f64, hi: f64) -> Vec<f64> {
    Rng::new(seed).vec(n, lo, hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_in_range_and_spread() {
        let a = uniform(10_000, 7, -2.0, 3.0);
        assert_eq!(a, uniform(10_000, 7, -2.0, 3.0));
        assert_ne!(a, uniform(10_000, 8, -2.0, 3.0));
        assert!(a.iter().all(|&v| (-2.0..3.0).contains(&v)));
        let mean = a.iter().sum::<f64>() / a.len() as f64;
        assert!((mean - 0.5).abs() < 0.05, "{mean}");
        // each tenth of the range gets about a tenth of the values
        let mut bins = [0usize; 10];
        for &v in &a {
            bins[((v + 2.0) / 0.5) as usize] += 1;
        }
        assert!(bins.iter().all(|&b| (850..1150).contains(&b)), "{bins:?}");
        // seed 0 is as good as any
        let z = uniform(1000, 0, 0.0, 1.0);
        assert!(z.iter().filter(|&&v| v < 0.5).count().abs_diff(500) < 60);
    }
}
