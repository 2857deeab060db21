//! Criterion benchmarks of every kernel for every dtype, scalar baseline vs each SIMD path vs the
//! dispatched one, in one group per (kernel, dtype, size) with `Throughput::Bytes`.
//!
//! `cargo bench --bench kernels` (all), `cargo bench --bench kernels -- sumsq/f32` (a subset),
//! `cargo bench --bench kernels -- --quick` (shorter). The sizes: one chunk (L2-resident, the
//! unit the engine hands to a thread) and a DRAM-sized buffer through the multi-tensor engine.
//! `FASTCLIP_BENCH_BIG` sets the large size in elements (default 16Mi).

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use half::{bf16, f16};

use _fastclip::element::Element;
use _fastclip::isa::{self, Isa};
use _fastclip::kernels::{self, NormType};
use _fastclip::multi::{self, CHUNK, Op, Tensor, TensorMut};

/// The crate's test PRNG, the same file as the crate's own tests use.
#[allow(dead_code, unused_imports)]
#[path = "../rust/src/testing.rs"]
mod testing;

/// `n` values uniform in [-1, 1), converted by `from`.
fn data<E: Element>(n: usize, from: impl Fn(f64) -> E) -> Vec<E> {
    testing::uniform(n, 0x9E37_79B9_7F4A_7C15, -1.0, 1.0)
        .into_iter()
        .map(from)
        .collect()
}

fn paths() -> Vec<(String, Isa)> {
    let mut v: Vec<(String, Isa)> = Isa::available()
        .into_iter()
        .map(|i| (i.name().to_string(), i))
        .collect();
    v.push((
        format!("dispatched({})", isa::current().name()),
        isa::current(),
    ));
    v
}

fn one_dtype<E: Element>(c: &mut Criterion, from: impl Fn(f64) -> E + Copy) {
    let n = CHUNK;
    let bytes = (n * std::mem::size_of::<E>()) as u64;
    let x = data::<E>(n, from);
    for (kernel, norm) in [
        ("sumsq", NormType::P(2.0)),
        ("sumabs", NormType::P(1.0)),
        ("maxabs", NormType::Inf),
    ] {
        let mut g = c.benchmark_group(format!("{kernel}/{}", E::name()));
        g.throughput(Throughput::Bytes(bytes));
        for (name, isa) in paths() {
            g.bench_with_input(BenchmarkId::new(name, n), &x, |b, x| {
                b.iter(|| kernels::partial_norm(black_box(x.as_slice()), norm, isa))
            });
        }
        g.finish();
    }
    let mut y = x.clone();
    let mut g = c.benchmark_group(format!("scale/{}", E::name()));
    // two passes (x2, then x0.5), each a read and a write
    g.throughput(Throughput::Bytes(4 * bytes));
    for (name, isa) in paths() {
        g.bench_function(BenchmarkId::new(name, n), |b| {
            // alternate 2 and 0.5: exact, so the data never drifts to inf or subnormals
            b.iter(|| {
                kernels::scale(black_box(y.as_mut_slice()), 2.0, isa);
                kernels::scale(black_box(y.as_mut_slice()), 0.5, isa);
            })
        });
    }
    g.finish();
    let mut g = c.benchmark_group(format!("clamp/{}", E::name()));
    g.throughput(Throughput::Bytes(2 * bytes));
    for (name, isa) in paths() {
        g.bench_function(BenchmarkId::new(name, n), |b| {
            b.iter(|| kernels::clamp(black_box(y.as_mut_slice()), -0.5, 0.5, isa))
        });
    }
    g.finish();
}

fn kernels_by_dtype(c: &mut Criterion) {
    one_dtype::<f32>(c, |v| v as f32);
    one_dtype::<f64>(c, |v| v);
    one_dtype::<f16>(c, f16::from_f64);
    one_dtype::<bf16>(c, bf16::from_f64);
}

/// The engine on a DRAM-sized buffer and on many small tensors: threads + chunking + kernel.
fn engine(c: &mut Criterion) {
    let isa = isa::current();
    let big: usize = std::env::var("FASTCLIP_BENCH_BIG")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1 << 24);
    let mut x = data::<f32>(big, |v| v as f32);
    let mut g = c.benchmark_group("engine/f32-one-buffer");
    g.sample_size(10);
    g.throughput(Throughput::Bytes((big * 4) as u64));
    g.bench_function(BenchmarkId::new("sumsq", big), |b| {
        b.iter(|| {
            multi::norms(
                1,
                |_| Tensor::F32(black_box(&x)),
                NormType::P(2.0),
                false,
                isa,
            )
        })
    });
    // two read+write passes per iteration
    g.throughput(Throughput::Bytes((big * 16) as u64));
    g.bench_function(BenchmarkId::new("scale", big), |b| {
        b.iter(|| {
            multi::apply(vec![TensorMut::F32(&mut x)], |_| Op::Scale(2.0), isa);
            multi::apply(vec![TensorMut::F32(&mut x)], |_| Op::Scale(0.5), isa);
        })
    });
    g.finish();

    let mut small: Vec<Vec<f32>> = (0..5000).map(|_| data::<f32>(256, |v| v as f32)).collect();
    let mut g = c.benchmark_group("engine/f32-5000x256");
    g.throughput(Throughput::Bytes(5000 * 256 * 4));
    g.bench_function("sumsq", |b| {
        b.iter(|| {
            let t: Vec<Tensor> = small.iter().map(|v| Tensor::F32(v)).collect();
            let t = black_box(&t);
            multi::norms(t.len(), |i| t[i], NormType::P(2.0), true, isa)
        })
    });
    g.bench_function("scale", |b| {
        b.iter(|| {
            let t: Vec<TensorMut> = small.iter_mut().map(|v| TensorMut::F32(v)).collect();
            multi::apply(t, |_| Op::Scale(1.5), isa);
        })
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
}

criterion_group! {
    name = benches;
    config = config();
    targets = kernels_by_dtype, engine
}
criterion_main!(benches);
