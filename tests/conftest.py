"""pytest fixtures shared by the tests. The references and helpers live in ``refs.py``."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240611)
