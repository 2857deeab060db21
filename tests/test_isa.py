"""The ISA the kernels run with: ``FASTCLIP_ISA`` forces a lower path, never a higher one, and
every path gives the same bits (``rust/src/isa.rs``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import fastclip as fc

LEVELS = ["scalar", "avx2", "avx512"]

# One process per setting: the ISA is chosen once per process.
CHILD = """
import json, sys
import numpy as np
import fastclip as fc
from fastclip import _fastclip

rng = np.random.default_rng(7)
arrays = [rng.standard_normal(n).astype(dt) for n, dt in [(100_003, np.float32), (4099, np.float64),
                                                           (70_001, np.float16), (12_345, np.float32)]]
arrays[0][::97] *= np.float32(1e30)
arrays[1][::89] *= 1e-200
per, total = _fastclip.norms(arrays, 2.0)
_, inf_total = _fastclip.norms(arrays, float("inf"))
_, one_total = _fastclip.norms(arrays, 1.0)
grads = [a.copy() for a in arrays]
_fastclip.scale_(arrays, [0.37, 0.1, 0.3, 3.0])
_fastclip.clamp_(arrays, -0.5, 0.25)
# the optimizer kernel: float32/float64 parameters, AdamW then momentum (Nesterov)
params = [a.astype(np.float32) for a in arrays[2:]] + [arrays[1].copy()]
g = [x.astype(p.dtype) for x, p in zip(grads[2:] + [grads[1]], params)]
m1 = [np.zeros_like(p) for p in params]
m2 = [np.zeros_like(p) for p in params]
for t in range(1, 4):
    _fastclip.adam_(params, g, m1, m2, 0.01, 0.9, 0.999, 1e-8, 0.9**t, 0.999**t,
                    weight_decay=0.01, decoupled=True)
    _fastclip.momentum_(params, g, m2, 0.01, 0.9, nesterov=True, weight_decay=0.001)
arrays += params + m1 + m2
print(json.dumps({
    "isa": fc.isa(),
    "norms": [float(x).hex() for x in [total, inf_total, one_total, *per]],
    "data": [a.tobytes().hex() for a in arrays],
}))
"""


def run_with(isa: str | None) -> dict[str, object]:
    env = dict(os.environ)
    env.pop("FASTCLIP_ISA", None)
    if isa is not None:
        env["FASTCLIP_ISA"] = isa
    out = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=120, check=True
    ).stdout
    result: dict[str, object] = json.loads(out)
    return result


def test_override_lowers_never_raises_and_every_path_agrees_bitwise() -> None:
    best = run_with(None)
    assert best["isa"] == fc.isa()
    baseline = "neon" if best["isa"] == "neon" else "scalar"
    have = LEVELS[: LEVELS.index(str(best["isa"])) + 1] if best["isa"] in LEVELS else []
    # case and spaces are ignored; an unknown name is ignored
    for spelled in [" Scalar ", "avx2", "AVX512", "avx9000"]:
        wanted = spelled.strip().lower()
        got = run_with(spelled)
        # a level the CPU has is honoured; one it lacks (or an unknown one) gives the best it has
        expected = baseline if wanted == "scalar" else wanted if wanted in have else best["isa"]
        assert got["isa"] == expected, (spelled, got["isa"])
        assert got["norms"] == best["norms"], spelled
        assert got["data"] == best["data"], spelled
