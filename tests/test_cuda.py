"""The CUDA path (the fastclip._cuda package).

Two parts:

- host-side logic that needs no GPU and no CuPy, run everywhere: block tables, the combination of
  partial sums (driven by a NumPy stand-in for the norm kernel that follows the kernel's contract),
  overlap checks, rounding of factors and bounds, the ImportError, and — where CuPy's NVRTC binding
  loads — that the kernel source compiles;
- device tests, marked ``cuda``, skipped unless CuPy sees a GPU. They compare with float64 NumPy,
  with the CPU kernels (an independent implementation of the same rounding contract) and with
  ``torch.nn.utils.clip_grad_norm_`` on CUDA.
"""

from __future__ import annotations

import math
import os
import re
import runpy
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import fastclip as fc
import ml_dtypes
import numpy as np
import pytest
from fastclip import _cuda, _fastclip
from fastclip._cuda import buffers, kernels, partials, rounding

BF16 = np.dtype(ml_dtypes.bfloat16)
CODES = {np.dtype(np.float32): kernels.F32, np.dtype(np.float64): kernels.F64, np.dtype(np.float16): kernels.F16,
         BF16: kernels.BF16}  # fmt: skip


def _gpu_count() -> int:
    try:
        import cupy

        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:
        return 0


HAVE_GPU = _gpu_count() > 0
cuda = pytest.mark.skipif(not HAVE_GPU, reason="needs CuPy and a CUDA GPU")


def _ref_norm(arrays: list[np.ndarray], p: float) -> float:
    if not arrays:
        return 0.0
    flat = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])
    if flat.size == 0:
        return 0.0
    if math.isinf(p):
        return float(np.max(np.abs(flat)))
    m = float(np.max(np.abs(flat)))
    if m == 0.0 or not math.isfinite(m):
        return m
    return m * float(np.sum((np.abs(flat) / m) ** p) ** (1.0 / p))  # scaled: exact enough for 1e±200


# ---------------------------------------------------------------------------------------------
# Host-side logic: no GPU.


def test_importing_the_module_does_not_import_cupy() -> None:
    code = (
        "import sys, fastclip._cuda as c; from fastclip._cuda import kernels; "
        "assert 'fastclip_apply' in kernels.source(); assert c.norms([]) == ([], 0.0); "
        "assert 'cupy' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_missing_cupy_is_an_import_error_with_the_install_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cupy", None)
    with pytest.raises(ImportError, match=r"pip install 'fastclip-rs\[cuda\]' \(which installs cupy-cuda12x\)"):
        _cuda.cupy()


def test_block_table_small_example() -> None:
    t = partials.block_table([5, 0, 2, 8], chunk=4)
    assert t.block_tensor.tolist() == [0, 0, 2, 3, 3]
    assert t.block_start.tolist() == [0, 4, 0, 0, 4]
    assert t.first_block.tolist() == [0, 2, 2, 3]
    assert t.nblocks.tolist() == [2, 0, 1, 2]
    assert len(partials.block_table([])) == 0 and len(partials.block_table([0, 0])) == 0
    with pytest.raises(ValueError):
        partials.block_table([1], chunk=0)
    with pytest.raises(ValueError):
        partials.block_table([-1])


def test_block_table_covers_every_element_once() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        sizes = rng.integers(0, 50, size=rng.integers(1, 12)).tolist()
        chunk = int(rng.integers(1, 9))
        t = partials.block_table(sizes, chunk)
        seen: list[set[int]] = [set() for _ in sizes]
        for b in range(len(t)):
            k, s = int(t.block_tensor[b]), int(t.block_start[b])
            assert 0 <= s < sizes[k] and s % chunk == 0
            seen[k].update(range(s, min(s + chunk, sizes[k])))
            assert t.first_block[k] <= b < t.first_block[k] + t.nblocks[k]
        assert all(seen[k] == set(range(n)) for k, n in enumerate(sizes))
        assert t.block_tensor.dtype == np.int32 and t.block_start.dtype == np.int64


class KernelStandIn:
    """NumPy stand-in for ``fastclip_norm_partials``: per block, sum (|x| s1 s2)^p (mode) and max |x|
    in float64 (NaN-propagating). Records the tensors of each launch."""

    def __init__(self, arrays: list[np.ndarray], p: float) -> None:
        self.flat = [np.abs(np.asarray(a, dtype=np.float64).ravel()) for a in arrays]
        self.p = p
        self.launches: list[list[int]] = []

    def __call__(self, idx: Any, table: Any, mode: int, s1: np.ndarray, s2: np.ndarray) -> tuple[Any, Any]:
        idx = list(idx)
        self.launches.append(idx)
        sums, maxes = np.zeros(len(table)), np.zeros(len(table))
        for b in range(len(table)):
            k = int(table.block_tensor[b])
            s = int(table.block_start[b])
            v = self.flat[idx[k]][s : s + kernels.CUDA_BLOCK_ELEMS]
            with np.errstate(over="ignore", under="ignore"):  # overflow is what the kernel sees too
                w = v * s1[k] * s2[k]
                sums[b] = {0: w.sum(), 1: (w * w).sum(), 2: (w**self.p).sum(), 3: 0.0}[mode]
            maxes[b] = v.max()  # np.max propagates NaN, as the kernel's sticky max
        return sums, maxes


def _arrays(dtype: Any) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [
        rng.standard_normal(40000).astype(dtype),  # three blocks
        np.zeros(0, dtype),
        (rng.standard_normal((3, 5)) * 100).astype(dtype),
        np.zeros(17, dtype),
    ]


@pytest.mark.parametrize("dtype", [np.float16, BF16, np.float32, np.float64])
@pytest.mark.parametrize("p", [1.0, 2.0, 3.0, math.inf])
def test_compute_norms_matches_float64_reference(dtype: Any, p: float) -> None:
    arrays = _arrays(dtype)
    k = KernelStandIn(arrays, p)
    per, total = partials.compute_norms([a.size for a in arrays], p, k)
    assert total == pytest.approx(_ref_norm(arrays, p), rel=1e-12)
    for a, n in zip(arrays, per):
        assert n == pytest.approx(_ref_norm([a], p), rel=1e-12, abs=0)
    assert k.launches == [[0, 1, 2, 3]]  # one launch for all tensors; nothing out of range
    cpu_per, cpu_total = _fastclip.norms(arrays, p, True)  # the Rust kernels agree
    assert total == pytest.approx(cpu_total, rel=1e-12)
    np.testing.assert_allclose(per, cpu_per, rtol=1e-12)


@pytest.mark.parametrize("scale", [1e200, 1e-200, 1e300, 5e-320])
@pytest.mark.parametrize("p", [1.0, 2.0, 3.0])
def test_out_of_range_float64_sums_are_redone_scaled(scale: float, p: float) -> None:
    normal = np.array([3.0, 4.0])
    extreme = np.array([3.0, 4.0, 0.0, 12.0]) * scale
    arrays = [normal, extreme]
    k = KernelStandIn(arrays, p)
    per, total = partials.compute_norms([2, 4], p, k)
    want = _ref_norm([extreme], p)
    assert per[1] == pytest.approx(want, rel=1e-12)
    assert per[0] == pytest.approx(_ref_norm([normal], p), rel=1e-15)
    assert total == pytest.approx(_ref_norm(arrays, p), rel=1e-12)
    with np.errstate(over="ignore", under="ignore"):
        plain = float(np.sum(np.abs(extreme) ** p))
    out_of_range = not (math.isfinite(plain) and plain >= partials.SAFE_MIN)
    # a second launch only where the plain sum is out of range, and only over that tensor
    assert k.launches == ([[0, 1], [1]] if out_of_range else [[0, 1]])
    assert total == pytest.approx(_fastclip.norms(arrays, p, False)[1], rel=1e-12)


def test_large_p_on_float32_is_redone_scaled() -> None:
    a = np.array([3e37, 4e37], dtype=np.float32)
    k = KernelStandIn([a], 12.0)
    _, total = partials.compute_norms([2], 12.0, k)
    assert total == pytest.approx(_ref_norm([a], 12.0), rel=1e-12)
    assert len(k.launches) == 2


@pytest.mark.parametrize("p", [1.0, 2.0, math.inf])
def test_nan_and_inf_semantics(p: float) -> None:
    cases = [
        ([np.array([1.0, np.inf]), np.array([2.0])], math.inf),
        ([np.array([1.0, np.nan]), np.array([np.inf])], math.nan),
        ([np.array([np.inf]), np.array([np.nan], dtype=np.float32)], math.nan),
        ([np.zeros(3), np.zeros(0)], 0.0),
    ]
    for arrays, want in cases:
        _, total = partials.compute_norms([a.size for a in arrays], p, KernelStandIn(arrays, p))
        cpu = _fastclip.norms(arrays, p, False)[1]
        if math.isnan(want):
            assert math.isnan(total) and math.isnan(cpu)
        else:
            assert total == want == cpu


def test_total_of_does_not_overflow_or_underflow() -> None:
    assert partials.total_of([1e300, 1e300], 2.0) == pytest.approx(math.sqrt(2) * 1e300, rel=1e-15)
    assert partials.total_of([3e-300, 4e-300], 2.0) == pytest.approx(5e-300, rel=1e-15)
    assert partials.total_of([1e308, 1e308], 2.0) == pytest.approx(math.sqrt(2) * 1e308, rel=1e-15)
    assert partials.total_of([1e308, 1e308], 1.0) == math.inf  # the true 1-norm overflows
    assert partials.total_of([], 2.0) == 0.0
    assert partials.total_of([0.0, 0.0], 3.0) == 0.0
    assert math.isnan(partials.total_of([math.inf, math.nan], 2.0))
    assert partials.total_of([1.0, 5.0, 2.0], math.inf) == 5.0


def test_rescale_factors_map_the_max_to_one_without_overflow() -> None:
    for m in [5e-324, 2.2e-308, 1e-200, 0.75, 1.0, 3.0, 1e200, 1.7976931348623157e308]:
        scale, s1, s2 = partials.rescale_factors(m)
        assert scale == m
        assert math.frexp(s1)[0] == 0.5  # a power of two
        assert math.isfinite(s1) and math.isfinite(s2) and s1 > 0 and s2 > 0
        assert (m * s1) * s2 == pytest.approx(1.0, rel=1e-15)


def test_huge_p_is_not_underflowed_away() -> None:
    # (|x| / max)^p keeps the largest term at 1 however large p is
    sizes = [2]
    data = [np.array([0.5, 0.25])]

    def launch(idx, table, mode, s1, s2):
        sums = [float(np.sum((np.abs(data[i]) * a * b) ** 1100.0)) for i, a, b in zip(idx, s1, s2)]
        maxes = [float(np.abs(data[i]).max()) for i in idx]
        return np.array(sums), np.array(maxes)

    per, total = partials.compute_norms(sizes, 1100.0, launch)
    assert per == [0.5] and total == 0.5


def test_check_disjoint_names_callers_positions() -> None:
    base = np.zeros(100)
    addr = base.__array_interface__["data"][0]

    def span(a: np.ndarray) -> tuple[int, int]:
        return buffers.byte_span(a.__array_interface__["data"][0], a.shape, a.strides, a.itemsize)

    parts = [base[:10], base[10:20], base[50:], base[20:20]]
    buffers.check_disjoint([span(a) for a in parts], "grads", [0, 2, 5, 6])  # disjoint (empty one too)
    assert span(base[:10]) == (addr, addr + 80)
    assert span(base[::-1]) == (addr, addr + 800)
    assert span(base.reshape(10, 10).T) == (addr, addr + 800)
    with pytest.raises(ValueError, match=r"grads\[2\] and grads\[7\] share memory"):
        buffers.check_disjoint([span(base[:10]), span(base[5:15]), span(base[60:])], "grads", [2, 7, 9])
    with pytest.raises(ValueError, match=r"g\[0\] and g\[2\] share memory"):
        buffers.check_disjoint([span(base[:50]), span(base[60:]), span(base[40:45])], "g", [0, 1, 2])


def test_factor_and_bounds_rounding_follow_the_cpu_contract() -> None:
    assert rounding.round_factor(0.1, kernels.F64) == 0.1
    for code in (kernels.F32, kernels.F16, kernels.BF16):
        assert rounding.round_factor(0.1, code) == float(np.float32(0.1))
        assert rounding.round_factor(1e300, code) == math.inf
    for v in (0.1, 1 / 3, 1e-3, 65504.7, 1e5, 1e-8):
        with np.errstate(over="ignore"):  # 1e5 is inf in float16
            b16 = float(np.float16(v))
            b = float(np.asarray(v).astype(BF16).astype(np.float64))
        assert rounding.dtype_bounds(-v, v, kernels.F64) == (-v, v)
        assert rounding.dtype_bounds(-v, v, kernels.F32) == (float(np.float32(-v)), float(np.float32(v)))
        assert rounding.dtype_bounds(-v, v, kernels.F16) == (-b16, b16)
        assert rounding.dtype_bounds(-v, v, kernels.BF16) == (-b, b)


def test_argument_checks_need_no_gpu() -> None:
    with pytest.raises(ValueError, match="norm_type"):
        _cuda.norms([], 0.0)
    with pytest.raises(TypeError, match=r"grads\[0\] must be a fastclip._cuda.Buffer"):
        _cuda.norms([np.ones(2)])
    with pytest.raises(ValueError, match="lo <= hi"):
        _cuda.clamp_([], 1.0, -1.0)
    assert _cuda.norms([], 2.0) == ([], 0.0)
    _cuda.scale_([], 0.5)  # nothing to do


def test_kernel_enums_match_the_host_constants() -> None:
    # kernels.cu spells the dtype codes, norm modes and apply ops as enums; kernels.py mirrors them.
    src = kernels.source()
    enums = {}
    for body in re.findall(r"enum\s+fc_\w+\s*\{([^}]*)\}", src):
        for name, value in re.findall(r"FC_(\w+)\s*=\s*(\d+)", body):
            enums[name] = int(value)
    host = {name: getattr(kernels, name) for name in ("F32", "F64", "F16", "BF16", "MODE_P1", "MODE_P2", "MODE_P",
                                                      "MODE_MAX", "OP_SCALE", "OP_CLAMP")}  # fmt: skip
    assert enums == host
    assert len(set(enums[n] for n in ("F32", "F64", "F16", "BF16"))) == 4
    # the block size reaches the kernels only through -DFC_THREADS (no second copy in the source)
    assert "#error" in src and f"-DFC_THREADS={kernels.THREADS}" in kernels.compile_options()
    assert kernels.THREADS & (kernels.THREADS - 1) == 0  # the shared-memory tree needs a power of two
    assert "CHUNK" not in vars(kernels) and "CHUNK" not in vars(partials)  # not the CPU engine's CHUNK


def test_safe_min_is_the_cpu_kernels_threshold() -> None:
    reduce_rs = Path(__file__).resolve().parent.parent / "rust" / "src" / "kernels" / "reduce.rs"
    if not reduce_rs.is_file():
        pytest.skip("needs the Rust source tree")
    m = re.search(r"const SAFE_MIN: f64 = ([0-9.eE+-]+);", reduce_rs.read_text())
    assert m is not None, "SAFE_MIN not found in rust/src/kernels/reduce.rs"
    assert float(m.group(1)) == partials.SAFE_MIN == 2.0**-900


def test_the_kernel_source_ships_inside_the_package() -> None:
    cu = Path(kernels.__file__).with_name(kernels.SOURCE_FILE)
    assert cu.is_file() and cu.read_text(encoding="utf-8") == kernels.source()
    assert ".entry" not in kernels.source() and "fastclip_norm_partials" in kernels.source()


def _nvrtc() -> Any:
    try:
        from cupy_backends.cuda.libs import nvrtc

        nvrtc.getVersion()
        return nvrtc
    except Exception as e:
        pytest.skip(f"CuPy's NVRTC binding is not available: {e}")


def test_kernel_source_compiles_with_nvrtc() -> None:
    # Needs only CuPy and NVRTC (no GPU, no driver): catches syntax and type errors in the kernels.
    nvrtc = _nvrtc()
    major = nvrtc.getVersion()[0]
    arch = "compute_90" if major >= 12 else "compute_80"
    prog = nvrtc.createProgram(kernels.source(), "kernels.cu", [], [])
    try:
        nvrtc.compileProgram(prog, [f"-arch={arch}", *kernels.compile_options()])
    except Exception:
        pytest.fail(nvrtc.getProgramLog(prog))
    ptx = nvrtc.getPTX(prog)
    ptx = ptx.decode() if isinstance(ptx, bytes) else ptx
    assert ".entry fastclip_norm_partials" in ptx and ".entry fastclip_apply" in ptx
    assert "cvt.rn.f16.f32" in ptx
    bare = nvrtc.createProgram(kernels.source(), "kernels.cu", [], [])
    with pytest.raises(Exception):  # noqa: B017 - NVRTC raises its own error type
        nvrtc.compileProgram(bare, [f"-arch={arch}"])  # no -DFC_THREADS: the #error fires
    assert "FC_THREADS" in nvrtc.getProgramLog(bare)


# ---------------------------------------------------------------------------------------------
# On a GPU.


def _cp() -> Any:
    import cupy

    return cupy


def _host(x: Any) -> np.ndarray:
    return x.get() if hasattr(x, "get") else np.asarray(x)


def _cupy_arrays(dtype: Any, rng: np.random.Generator) -> tuple[list[np.ndarray], list[Any]]:
    cp = _cp()
    shapes = [(300, 70), (5,), (0,), (40000,), (3, 4, 5)]
    host = [(rng.standard_normal(s) * 3).astype(dtype) for s in shapes]
    dev = [cp.asarray(h.view(np.uint16)) if h.dtype == BF16 else cp.asarray(h) for h in host]
    return host, dev


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("p", [1.0, 2.0, 3.0, math.inf])
def test_cupy_norms_and_scale_match_cpu(dtype: Any, p: float) -> None:
    rng = np.random.default_rng(11)
    host, dev = _cupy_arrays(dtype, rng)
    total = fc.get_total_norm(dev, norm_type=p)
    assert total == pytest.approx(_ref_norm(host, p), rel=1e-12)
    assert fc.get_total_norm(dev, norm_type=p) == total  # deterministic, bit for bit
    ptrs = [a.data.ptr for a in dev]
    got = fc.clip_grad_norm_(dev, 0.5, norm_type=p)
    cpu_total = fc.clip_grad_norm_(host, 0.5, norm_type=p)
    assert got == pytest.approx(cpu_total, rel=1e-12)
    assert [a.data.ptr for a in dev] == ptrs
    coef_same = (0.5 / (got + 1e-6)) == (0.5 / (cpu_total + 1e-6))
    for h, d in zip(host, dev):
        if coef_same:  # same factor: the same rounding contract gives the same bits
            np.testing.assert_array_equal(_host(d), h)
        else:
            np.testing.assert_allclose(_host(d), h, rtol=1e-6)


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_cupy_clamp_matches_cpu_bitwise(dtype: Any) -> None:
    rng = np.random.default_rng(12)
    host, dev = _cupy_arrays(dtype, rng)
    host[0].flat[:3] = [np.nan, np.inf, -np.inf]
    dev[0] = _cp().asarray(host[0])
    fc.clip_grad_value_(dev, 0.1)
    fc.clip_grad_value_(host, 0.1)
    for h, d in zip(host, dev):
        np.testing.assert_array_equal(_host(d), h)


@cuda
@pytest.mark.cuda
def test_cupy_non_contiguous_and_extreme_values() -> None:
    cp = _cp()
    base_h = np.arange(1.0, 25.0).reshape(4, 6)
    base = cp.asarray(base_h)
    views, views_h = [base.T, base[1:3, ::2]], [base_h.T, base_h[1:3, ::2]]
    assert fc.get_total_norm(views[0]) == pytest.approx(_ref_norm([views_h[0]], 2.0), rel=1e-14)
    fc.clip_grad_norm_([views[1]], 1.0)
    fc.clip_grad_norm_([views_h[1]], 1.0)
    np.testing.assert_array_equal(base.get(), base_h)
    big = cp.asarray(np.array([3e200, 4e200]))
    tiny = cp.asarray(np.array([3e-200, 4e-200]))
    assert fc.get_total_norm(big) == pytest.approx(5e200, rel=1e-14)
    assert fc.get_total_norm(tiny) == pytest.approx(5e-200, rel=1e-14)
    assert fc.get_total_norm([cp.asarray([1.0, np.inf])]) == math.inf
    assert math.isnan(fc.get_total_norm([cp.asarray([np.inf]), cp.asarray([np.nan])], norm_type=math.inf))


@cuda
@pytest.mark.cuda
def test_cupy_errors_leave_buffers_unchanged() -> None:
    cp = _cp()
    a = cp.asarray(np.array([10.0, 10.0]))
    with pytest.raises(ValueError, match=r"grads\[0\] and grads\[1\] share memory"):
        fc.clip_grad_norm_([a, a[1:]], 1.0)
    with pytest.raises(TypeError, match=r"grads\[1\] has dtype int32"):
        fc.clip_grad_norm_([a, cp.ones(3, dtype=cp.int32)], 1.0)
    with pytest.raises(ValueError, match="mixes CPU and CUDA"):
        fc.clip_grad_norm_([a, np.ones(2)], 1.0)
    np.testing.assert_array_equal(a.get(), [10.0, 10.0])


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("name", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("p", [1.0, 2.0, math.inf])
def test_torch_cuda_matches_torch(name: str, p: float) -> None:
    try:
        import torch
    except Exception as e:
        pytest.skip(f"torch is not usable here: {e}")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    dtype = getattr(torch, name)

    def model() -> Any:
        torch.manual_seed(0)
        m = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 64))
        m = m.to("cuda", dtype)
        x = torch.randn(32, 64, device="cuda", dtype=dtype)
        m(x).square().sum().backward()
        return m

    mine, ref = model(), model()
    ptrs = [q.grad.data_ptr() for q in mine.parameters()]
    before = [q.grad.clone() for q in mine.parameters()]
    total = fc.clip_grad_norm_(mine.parameters(), 0.5, norm_type=p)
    want = float(torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.5, norm_type=p))
    exact = _ref_norm([b.double().cpu().numpy() for b in before], p)
    assert total == pytest.approx(exact, rel=1e-12)
    assert total == pytest.approx(want, rel=1e-5 if name == "float32" else 1e-2)
    assert [q.grad.data_ptr() for q in mine.parameters()] == ptrs
    coef = torch.tensor(min(1.0, 0.5 / (total + 1e-6)), dtype=torch.float32, device="cuda")
    for q, b in zip(mine.parameters(), before):
        torch.testing.assert_close(q.grad, (b.float() * coef).to(dtype), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# scripts/gpu_check.sh: its own logic, without a GPU.

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gpu_check.sh"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_dry_run_prints_the_table_last() -> None:
    r = subprocess.run(["bash", str(SCRIPT), "--dry-run"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHON": sys.executable})  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[-4].split()[:3] == ["dtype", "tensors", "elements"]
    assert lines[-2].split()[:3] == ["float32", "148", "124,439,808"]  # GPT-2 small: 148 tensors, 124M
    assert lines[-1].split()[0] == "bfloat16"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_rejects_bad_arguments() -> None:
    for args in (["--iters", "0"], ["--iters", "x"], ["--nope"]):
        r = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and "gpu_check:" in r.stderr


def test_gpu_check_uses_the_benchmark_shapes_and_needs_no_extension_for_a_dry_run() -> None:
    script = SCRIPT.with_suffix(".py")
    code = (
        "import runpy, sys\n"
        f"g = runpy.run_path({str(script)!r})\n"
        "assert g['main'](['--dry-run']) == 0\n"
        "assert not any(m == 'fastclip' or m.startswith('fastclip.') for m in sys.modules), 'imported fastclip'\n"
        "print(len(g['gpt2_small_shapes']()))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "148"
    from fastclip._bench.workloads import gpt2_small_shapes

    g = runpy.run_path(str(script))
    assert g["gpt2_small_shapes"]() == gpt2_small_shapes()  # one definition, not a copy
    rows = [{"dtype": "float32", "tensors": 2, "elements": 10, "fastclip_ms": 0.5, "torch_ms": 2.0, "rel_diff": 1e-9}]
    lines = g["table"](rows).splitlines()
    assert lines[2].split() == ["float32", "2", "10", "0.500", "2.000", "4.00x", "1.0e-09"]
