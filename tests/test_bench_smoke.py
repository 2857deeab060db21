"""Keeps ``fastclip bench`` alive: runs it on tiny workloads; checks the output, not the speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_bench_quick_runs(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = {"FASTCLIP_BENCH_SCALE": "0.0005", "PATH": "/usr/bin:/bin"}
    r = subprocess.run(
        [sys.executable, "-m", "fastclip", "bench", "--quick", "--reps", "2", "--no-busy", "--json", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    for name in ("64M f32", "GPT-2 small f32", "ResNet-50 f32", "5000x256 f32", "64M f16"):
        assert name in r.stdout
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert len(rows) == 15
    assert {r["op"] for r in rows} == {"global", "per-tensor", "value"}
    for row in rows:
        assert row["median_s"]["fastclip"] > 0 and row["median_s"]["numpy"] > 0
        assert row["norm_rel_err"] <= 1e-6
    assert result["machine"]["isa"]
