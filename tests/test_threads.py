"""Threads: bitwise identical results for any ``RAYON_NUM_THREADS`` (fresh subprocesses, since rayon's
pool is sized once per process), and safe concurrent calls from many Python threads."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import threading
import time

import fastclip as fc
import numpy as np
import pytest
from refs import assert_rel, clamp_ref, ref_norm, same_bits, scaled_ref, torch_coef

# Over 1M elements in many tensors of awkward sizes, in float32, float64 and float16; the
# script prints every total (as hex), every per-tensor norm and a digest of the clipped grads.
_SCRIPT = textwrap.dedent(
    """
    import hashlib, json, math
    import numpy as np
    import fastclip as fc
    from fastclip import _fastclip

    rng = np.random.default_rng(12345)
    sizes = [int(s) for s in rng.integers(1, 40_000, size=60)] + [300_001, 65_537, 1, 0]
    out = {"n": sum(sizes)}
    for dt in ("float32", "float64", "float16"):
        grads = [(rng.standard_normal(n) * 10.0 ** rng.integers(-3, 4)).astype(dt) for n in sizes]
        res = {}
        for p in (2.0, 1.0, 3.0, 0.5, math.inf):
            per, total = _fastclip.norms(grads, p, True)
            res[str(p)] = [total.hex(), [v.hex() for v in per]]
        total = fc.clip_grad_norm_(grads, 1.0)
        h = hashlib.sha256()
        for g in grads:
            h.update(g.tobytes())
        res["clip"] = [total.hex(), h.hexdigest()]
        fc.clip_grad_value_(grads, 1e-4)
        h = hashlib.sha256()
        for g in grads:
            h.update(g.tobytes())
        res["value"] = h.hexdigest()
        out[dt] = res
    print(json.dumps(out))
    """
)


def _run(threads: int) -> dict:
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    proc = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def run_threads(worker) -> None:
    """Run ``worker(i)`` on N_THREADS threads at once and wait for all of them."""
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(N_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_bitwise_identical_for_any_thread_count():
    one = _run(1)
    assert one["n"] > 1_000_000
    for threads in (2, 3, 8):
        assert _run(threads) == one, f"RAYON_NUM_THREADS={threads} differs from 1"


def test_same_result_when_called_repeatedly(rng):
    grads = [rng.standard_normal(n).astype(np.float32) for n in (500_000, 3, 70_001, 129)]
    first = fc.get_total_norm(grads)
    assert_rel(first, ref_norm(grads, 2))
    for _ in range(5):
        assert fc.get_total_norm(grads) == first
        assert fc.get_total_norm(list(grads)) == first


# ---------------------------------------------------------------------------------------------
# Many Python threads at once
# ---------------------------------------------------------------------------------------------

N_THREADS = 8
ROUNDS = 6


def _workload(seed: int) -> list[np.ndarray]:
    r = np.random.default_rng(seed)
    dt = (np.float32, np.float64, np.float16)[seed % 3]
    sizes = [int(s) for s in r.integers(1, 60_000, size=8)] + [200_000]
    return [(r.standard_normal(n) * 3).astype(dt) for n in sizes]


def test_concurrent_clip_grad_norm_on_own_buffers():
    inputs = [_workload(s) for s in range(N_THREADS)]
    # Expected results from the references, computed up front: every round clips with max_norm
    # 1/(round+1), so each round really scales.
    expected = []
    for grads in inputs:
        cur = [g.copy() for g in grads]
        rounds = []
        for k in range(ROUNDS):
            total = fc.get_total_norm(cur)
            assert_rel(total, ref_norm(cur, 2))
            cur = [scaled_ref(g, torch_coef(1.0 / (k + 1), total)) for g in cur]
            rounds.append(total)
        expected.append((rounds, cur))

    work = [[g.copy() for g in grads] for grads in inputs]
    results: list[list[float] | None] = [None] * N_THREADS
    errors: list[BaseException] = []
    barrier = threading.Barrier(N_THREADS)

    def worker(i: int) -> None:
        try:
            barrier.wait()
            results[i] = [fc.clip_grad_norm_(work[i], 1.0 / (k + 1)) for k in range(ROUNDS)]
        except BaseException as e:  # reported below
            errors.append(e)

    run_threads(worker)
    assert not errors, errors
    for i in range(N_THREADS):
        rounds, final = expected[i]
        assert results[i] == rounds  # bitwise: same totals as the single-threaded calls
        for g, want in zip(work[i], final):
            assert same_bits(g, want)


def test_concurrent_mixed_calls_and_shared_read_only_input():
    shared = np.random.default_rng(1).standard_normal(400_000)
    shared.flags.writeable = False
    want_shared = fc.get_total_norm(shared, 3)
    own = [_workload(100 + s) for s in range(N_THREADS)]
    before = [[g.copy() for g in grads] for grads in own]
    errors: list[BaseException] = []
    barrier = threading.Barrier(N_THREADS)

    def worker(i: int) -> None:
        try:
            barrier.wait()
            for _ in range(3):
                assert fc.get_total_norm(shared, 3) == want_shared
                if i % 2:
                    fc.clip_grad_value_(own[i], 0.25)
                else:
                    with pytest.raises(ValueError, match="read-only"):
                        fc.clip_grad_norm_([own[i][0], shared], 1.0)
        except BaseException as e:
            errors.append(e)

    run_threads(worker)
    assert not errors, errors
    for i in range(N_THREADS):
        for g, b in zip(own[i], before[i]):
            if i % 2:
                assert same_bits(g, clamp_ref(b, 0.25))
            else:
                assert same_bits(g, b)  # the failed calls touched nothing


def test_gil_is_released_during_kernels():
    # Another Python thread runs *inside* the window of one long fastclip call: with the GIL held
    # for the whole call it could only run before the call starts or after it returns. The
    # window's middle third is used, so bytecode-boundary switches at its edges do not count.
    big = [np.random.default_rng(2).standard_normal(8_000_000)]
    done = threading.Event()
    seen: list[float] = []

    def spin() -> None:
        while not done.is_set():
            seen.append(time.perf_counter())
            if len(seen) > 100_000:
                del seen[:50_000]

    t = threading.Thread(target=spin)
    t.start()
    inside: list[float] = []
    try:
        # A loaded machine may not schedule the other thread in one window: up to 5 windows (with
        # the GIL held, no window could ever see it).
        for _ in range(5):
            time.sleep(0.01)
            start = time.perf_counter()
            total = fc.get_total_norm(big, 0.5)  # the slow (powf) path keeps the kernel busy
            end = time.perf_counter()
            assert math.isfinite(total)
            third = (end - start) / 3
            inside = [s for s in list(seen) if start + third < s < end - third]
            if inside:
                break
    finally:
        done.set()
        t.join()
    assert inside, f"no other Python thread ran during a {end - start:.3f} s call: the GIL was held"
