//! Instruction-set selection: an [`Isa`] is the proof that this CPU can run one [`Level`]'s code.
//!
//! Each kernel body is compiled three times on x86-64 (baseline SSE2, AVX2+FMA+F16C,
//! AVX-512F+BW on top of those) and the best one the CPU supports is chosen at run time; no
//! `target-cpu` is set at build time, so a wheel built anywhere runs on any x86-64. On aarch64
//! the baseline is NEON. `FASTCLIP_ISA` (`scalar`, `avx2`, `avx512`) forces a lower path for tests
//! and benchmarks; asking for a path the CPU lacks falls back to the best one it has below it.
//!
//! Soundness, in the manner of pulp's `V3`/`V4` tokens: [`Isa`]'s field is private, and the only
//! safe ways to get one detect the CPU first ([`Isa::new`], [`Isa::avx2`], [`Isa::avx512`],
//! [`Isa::detect`], [`Isa::available`], [`current`]; [`Isa::baseline`] needs no detection). So a
//! safe function that takes an `Isa` may run `#[target_feature]` code of the token's level:
//! holding the token is the check. [`Isa::new_unchecked`] is the one way around it, and it is
//! `unsafe`.
//!
//! The CPU features of each level are named in exactly one place (`with_level_features!`); the
//! detection, every `#[target_feature]` attribute (`for_level!`) and every dispatcher
//! (`dispatch!`) are generated from that list, so no kernel can be compiled with fewer (or other)
//! features than the check that guards it.
//!
//! The kernels never reassociate floating-point operations, so every path computes the same
//! arithmetic in the same order: results are bitwise identical across ISAs.

use std::sync::OnceLock;

/// The one list of CPU features per level: calls `$then! { [features...] rest... }`.
///
/// Each level's list holds the whole list of the level below it, so a token of one level proves
/// every lower level too: code compiled for AVX2 (the F16C conversions of `element`) may run on
/// an AVX-512 token. The test `level_features_nest` checks it.
macro_rules! with_level_features {
    (Avx2, $then:ident! { $($rest:tt)* }) => {
        $crate::isa::$then! { ["avx2", "fma", "f16c"] $($rest)* }
    };
    (Avx512, $then:ident! { $($rest:tt)* }) => {
        $crate::isa::$then! { ["avx2", "fma", "f16c", "avx512f", "avx512bw"] $($rest)* }
    };
}

/// Whether the CPU has every feature of the list (run-time detection, cached by std).
macro_rules! all_detected {
    ([$($feature:tt),*]) => {
        true $(&& std::arch::is_x86_feature_detected!($feature))*
    };
}

/// The feature list as a `&'static [&'static str]`.
macro_rules! feature_names {
    ([$($feature:tt),*]) => {
        &[$($feature),*]
    };
}

/// One `#[target_feature(enable = ...)]` per feature of the list, on `$item`.
macro_rules! enable_features {
    ([$($feature:tt),*] $item:item) => {
        $(#[target_feature(enable = $feature)])*
        $item
    };
}

/// Compiles a function for one x86-64 level: `for_level! { Avx512 => fn f(...) { ... } }` puts
/// the level's `#[target_feature]` attributes (and `#[cfg(target_arch = "x86_64")]`) on it.
/// Calling it is `unsafe`; the caller's `SAFETY:` is a token of that level (or higher).
/// The only way the crate writes `#[target_feature]`.
macro_rules! for_level {
    ($level:ident => $item:item) => {
        #[cfg(target_arch = "x86_64")]
        $crate::isa::with_level_features!($level, enable_features! { $item });
    };
}

/// Defines a safe function that runs the `#[inline(always)]` generic body `$body` compiled for
/// the level of its [`Isa`] parameter:
///
/// ```text
/// dispatch! {
///     /// docs
///     pub fn partial_norm<E: Element>(x: &[E], norm: NormType, isa: Isa) -> Partial
///         => partial_norm_body;
/// }
/// ```
///
/// The function's parameters are passed to `$body` in order. One parameter must be written
/// `name: Isa` (any position): it chooses the level, and `$body` receives a *constant* token of
/// that level in its place, so that every `isa.level()` test inside the body folds away at
/// compile time, as if the body were written once per level. Each level's copy is a
/// [`for_level!`] function, so its features are exactly the level's list.
macro_rules! dispatch {
    (
        $(#[$meta:meta])*
        $vis:vis fn $name:ident $(<$($g:ident : $bound:path),* $(,)?>)? ($($params:tt)*)
            $(-> $ret:ty)? => $body:path;
    ) => {
        $crate::isa::dispatch!(@find_token
            [$(#[$meta])* $vis fn $name $(<$($g : $bound),*>)? ($($params)*) $(-> $ret)? => $body]
            [] $($params)*
        );
    };
    // Walk the parameters up to the one typed `Isa`, collecting the others.
    (@find_token $sig:tt [$($o:ident : $ot:ty),*] $isa:ident : Isa $(, $($rest:tt)*)?) => {
        $crate::isa::dispatch!(@emit $sig $isa [$($o : $ot,)* $($($rest)*)?]);
    };
    (@find_token $sig:tt [$($o:ident : $ot:ty),*] $p:ident : $t:ty $(, $($rest:tt)*)?) => {
        $crate::isa::dispatch!(@find_token $sig [$($o : $ot,)* $p : $t] $($($rest)*)?);
    };
    (@emit
        [$(#[$meta:meta])* $vis:vis fn $name:ident $(<$($g:ident : $bound:path),*>)?
            ($($p:ident : $t:ty),* $(,)?) $(-> $ret:ty)? => $body:path]
        $isa:ident [$($o:ident : $ot:ty),* $(,)?]
    ) => {
        $(#[$meta])*
        $vis fn $name $(<$($g : $bound),*>)? ($($p : $t),*) $(-> $ret)? {
            $crate::isa::for_level! { Avx512 =>
                fn avx512 $(<$($g : $bound),*>)? ($($o : $ot),*) $(-> $ret)? {
                    // SAFETY: this function is compiled for AVX-512 and called only with a token
                    // of that level (below), which is the proof `new_unchecked` asks for.
                    let $isa = unsafe {
                        $crate::isa::Isa::new_unchecked($crate::isa::Level::Avx512)
                    };
                    $body($($p),*)
                }
            }
            $crate::isa::for_level! { Avx2 =>
                fn avx2 $(<$($g : $bound),*>)? ($($o : $ot),*) $(-> $ret)? {
                    // SAFETY: as for `avx512`, at the AVX2 level.
                    let $isa = unsafe {
                        $crate::isa::Isa::new_unchecked($crate::isa::Level::Avx2)
                    };
                    $body($($p),*)
                }
            }
            match $isa.level() {
                #[cfg(target_arch = "x86_64")]
                $crate::isa::Level::Avx512 => {
                    // SAFETY: a token of this level exists only on a CPU with its features.
                    unsafe { avx512($($o),*) }
                }
                #[cfg(target_arch = "x86_64")]
                $crate::isa::Level::Avx2 => {
                    // SAFETY: as above.
                    unsafe { avx2($($o),*) }
                }
                _ => {
                    let $isa = $crate::isa::Isa::baseline();
                    $body($($p),*)
                }
            }
        }
    };
}

pub(crate) use {
    all_detected, dispatch, enable_features, feature_names, for_level, with_level_features,
};

/// A level of SIMD code: what one copy of a kernel body is compiled for, lowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// The target's baseline: SSE2 on x86-64, NEON on aarch64, scalar elsewhere.
    Baseline,
    /// x86-64 with AVX2, FMA and F16C (F16C ships with every AVX2 CPU; it is checked anyway).
    Avx2,
    /// x86-64 with AVX-512F and AVX-512BW, on top of [`Level::Avx2`]'s features.
    Avx512,
}

impl Level {
    /// Every level, lowest first.
    pub const ALL: [Level; 3] = [Level::Baseline, Level::Avx2, Level::Avx512];

    /// The name `fastclip.isa()` reports: "scalar" (or "neon" on aarch64), "avx2", "avx512".
    pub fn name(self) -> &'static str {
        match self {
            Level::Baseline if cfg!(target_arch = "aarch64") => "neon",
            Level::Baseline => "scalar",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
        }
    }

    /// The CPU features this level's code is compiled with (and that detection checks); none for
    /// the baseline, which every CPU of the target has.
    pub fn features(self) -> &'static [&'static str] {
        match self {
            Level::Baseline => &[],
            Level::Avx2 => with_level_features!(Avx2, feature_names! {}),
            Level::Avx512 => with_level_features!(Avx512, feature_names! {}),
        }
    }

    /// Whether this CPU has every feature of the level.
    fn detected(self) -> bool {
        match self {
            Level::Baseline => true,
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => with_level_features!(Avx2, all_detected! {}),
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 => with_level_features!(Avx512, all_detected! {}),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// `FASTCLIP_ISA`'s spelling of a level.
    fn parse(s: &str) -> Option<Level> {
        match s.trim().to_ascii_lowercase().as_str() {
            "scalar" | "baseline" | "neon" | "sse2" => Some(Level::Baseline),
            "avx2" => Some(Level::Avx2),
            "avx512" => Some(Level::Avx512),
            _ => None,
        }
    }
}

/// Proof that this CPU has every feature of one [`Level`] (and so of every level below it).
///
/// A `Copy` token with a private field: safe code gets one only from a constructor that detects
/// the CPU, so a safe function taking an `Isa` may run `#[target_feature]` code of its level.
///
/// Outside this module it cannot be forged:
///
/// ```compile_fail
/// use _fastclip::isa::{Isa, Level};
/// let forged = Isa { level: Level::Avx512 }; // error: field `level` is private
/// ```
///
/// ```
/// use _fastclip::isa::{Isa, Level};
/// let best = _fastclip::isa::current();
/// assert!(Isa::available().contains(&best));
/// assert_eq!(Isa::avx512().is_some(), Isa::available().last().unwrap().level() == Level::Avx512);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Isa {
    level: Level,
}

impl core::fmt::Debug for Isa {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Isa({})", self.level.name())
    }
}

impl Isa {
    /// The baseline, which every CPU of the target runs.
    pub const fn baseline() -> Isa {
        Isa {
            level: Level::Baseline,
        }
    }

    /// A token of `level` if this CPU has its features.
    pub fn new(level: Level) -> Option<Isa> {
        level.detected().then_some(Isa { level })
    }

    /// AVX2+FMA+F16C, if this CPU has it.
    pub fn avx2() -> Option<Isa> {
        Isa::new(Level::Avx2)
    }

    /// AVX-512F+BW (with AVX2+FMA+F16C), if this CPU has it.
    pub fn avx512() -> Option<Isa> {
        Isa::new(Level::Avx512)
    }

    /// A token of `level`, without looking at the CPU.
    ///
    /// # Safety
    /// The CPU running this process must have every feature of `level` ([`Level::features`]):
    /// the token lets safe code run code compiled for them.
    ///
    /// ```compile_fail
    /// use _fastclip::isa::{Isa, Level};
    /// let forged = Isa::new_unchecked(Level::Avx512); // error: needs an `unsafe` block
    /// ```
    pub const unsafe fn new_unchecked(level: Level) -> Isa {
        Isa { level }
    }

    /// Every level this CPU can run, lowest first.
    pub fn available() -> Vec<Isa> {
        Level::ALL.into_iter().filter_map(Isa::new).collect()
    }

    /// The best level this CPU has, or the lower one `FASTCLIP_ISA` asks for (detected afresh on
    /// every call: [`current`] is the cached one the crate uses).
    pub fn detect() -> Isa {
        let best = Isa::available()
            .into_iter()
            .last()
            .unwrap_or(Isa::baseline());
        match std::env::var("FASTCLIP_ISA")
            .ok()
            .as_deref()
            .and_then(Level::parse)
        {
            Some(wanted) if wanted < best.level => Isa::new(wanted).unwrap_or(best),
            _ => best,
        }
    }

    /// The level this token proves.
    pub const fn level(self) -> Level {
        self.level
    }

    /// The level's name ([`Level::name`]).
    pub fn name(self) -> &'static str {
        self.level.name()
    }
}

/// The ISA used by every call in this process: [`Isa::detect`], once.
pub fn current() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(Isa::detect)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A level's features include every feature of the levels below it, so that a token of one
    /// level soundly stands for the lower ones.
    #[test]
    fn level_features_nest() {
        for pair in Level::ALL.windows(2) {
            let (lower, higher) = (pair[0], pair[1]);
            for f in lower.features() {
                assert!(higher.features().contains(f), "{higher:?} lacks {f}");
            }
        }
        assert!(Level::Avx512.features().contains(&"avx512bw"));
        assert!(Level::Avx2.features().contains(&"f16c"));
    }

    /// Detection agrees with the feature lists, level by level, and `available` is ordered.
    #[test]
    fn detection_follows_the_lists() {
        for level in Level::ALL {
            #[cfg(target_arch = "x86_64")]
            let has_all = level.features().iter().all(|f| match *f {
                "avx2" => std::arch::is_x86_feature_detected!("avx2"),
                "fma" => std::arch::is_x86_feature_detected!("fma"),
                "f16c" => std::arch::is_x86_feature_detected!("f16c"),
                "avx512f" => std::arch::is_x86_feature_detected!("avx512f"),
                "avx512bw" => std::arch::is_x86_feature_detected!("avx512bw"),
                other => panic!("unknown feature {other}"),
            });
            #[cfg(not(target_arch = "x86_64"))]
            let has_all = level == Level::Baseline;
            assert_eq!(Isa::new(level).is_some(), has_all, "{level:?}");
        }
        let levels: Vec<Level> = Isa::available().iter().map(|i| i.level()).collect();
        assert_eq!(levels[0], Level::Baseline);
        assert!(levels.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(
            Isa::avx2().map(Isa::level),
            Isa::new(Level::Avx2).map(Isa::level)
        );
        assert_eq!(
            Isa::avx512().map(Isa::level),
            Isa::new(Level::Avx512).map(Isa::level)
        );
        assert!(levels.contains(&current().level()));
    }

    #[test]
    fn override_spellings() {
        assert_eq!(Level::parse(" AVX2 "), Some(Level::Avx2));
        assert_eq!(Level::parse("sse2"), Some(Level::Baseline));
        assert_eq!(Level::parse("neon"), Some(Level::Baseline));
        assert_eq!(Level::parse("avx512"), Some(Level::Avx512));
        assert_eq!(Level::parse("avx"), None);
        assert_eq!(Isa::baseline().name(), Level::Baseline.name());
        assert_eq!(
            format!("{:?}", Isa::baseline()),
            format!("Isa({})", Level::Baseline.name())
        );
    }
}
