//! Instruction-set selection, done once per process.
//!
//! Each kernel body is compiled three times on x86-64 (baseline SSE2, AVX2+FMA+F16C,
//! AVX-512F+BW) and
//! the best one the CPU supports is chosen at run time; no `target-cpu` is set at build time, so a
//! wheel built anywhere runs on any x86-64. On aarch64 the baseline is NEON. `FASTCLIP_ISA`
//! (`scalar`, `avx2`, `avx512`) forces a lower path for tests and benchmarks; asking for a path
//! the CPU lacks falls back to the best one it has below it.
//!
//! The kernels never reassociate floating-point operations, so every path computes the same
//! arithmetic in the same order: results are bitwise identical across ISAs.

use std::sync::OnceLock;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// The target's baseline: SSE2 on x86-64, NEON on aarch64, scalar elsewhere.
    Baseline,
    Avx2,
    Avx512,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Baseline if cfg!(target_arch = "aarch64") => "neon",
            Isa::Baseline => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// Every ISA this CPU can run, lowest first.
    pub fn available() -> Vec<Isa> {
        let mut v = vec![Isa::Baseline];
        #[cfg(target_arch = "x86_64")]
        {
            // F16C (half <-> single conversions) ships with every AVX2 CPU; require it anyway.
            if std::is_x86_feature_detected!("avx2")
                && std::is_x86_feature_detected!("fma")
                && std::is_x86_feature_detected!("f16c")
            {
                v.push(Isa::Avx2);
                if std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512bw")
                {
                    v.push(Isa::Avx512);
                }
            }
        }
        v
    }

    fn parse(s: &str) -> Option<Isa> {
        match s.trim().to_ascii_lowercase().as_str() {
            "scalar" | "baseline" | "neon" | "sse2" => Some(Isa::Baseline),
            "avx2" => Some(Isa::Avx2),
            "avx512" => Some(Isa::Avx512),
            _ => None,
        }
    }
}

/// The ISA used by every call in this process.
pub fn current() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let best = *Isa::available().last().unwrap_or(&Isa::Baseline);
        match std::env::var("FASTCLIP_ISA")
            .ok()
            .as_deref()
            .and_then(Isa::parse)
        {
            Some(wanted) => best.min(wanted),
            None => best,
        }
    })
}
