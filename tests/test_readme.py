"""The README's quick start runs as written (so the front page stays true)."""

from __future__ import annotations

import pathlib
import re

import numpy as np

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def test_quick_start_runs():
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README has no python block"
    spaces = []
    for code in blocks:
        namespace: dict[str, object] = {}
        exec(compile(code, str(README), "exec"), namespace)
        spaces.append(namespace)
    # the quick start's (the first block's) promises, checked independently of what it printed
    namespace = spaces[0]
    clip = namespace["clip"]
    stats = clip.last_stats
    # w's gradient (256 x 128 standard normals) has a norm near 181; b is left out (need_clip=False)
    assert stats.indices == (0,) and 170 < stats.global_norm < 190
    assert stats.scales[0] == np.float32(1.0 / stats.global_norm)
    assert np.all(namespace["w"].value != 0)  # the optimizer stepped


def test_readme_shows_the_two_commands():
    text = README.read_text(encoding="utf-8")
    assert "make demo" in text and "make test" in text
