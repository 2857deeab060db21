"""fastclip: exact, fast gradient clipping for NumPy (and DLPack) training loops.

torch-style functions: :func:`get_total_norm`, :func:`clip_grad_norm_`, :func:`clip_grads_with_norm_`,
:func:`clip_grad_value_`. All work in place on the caller's buffers through a Rust core (SIMD +
rayon) that accumulates in float64 and gives bitwise identical results for any thread count.
"""

from __future__ import annotations

from . import _fastclip, adaptive, distributed, initializer, nn, optimizer, skip
from .adaptive import AdaGC, AdaptiveGradClip, AutoClip, ZClip
from .clip import ClipGradBase, ClipGradByGlobalNorm, ClipGradByNorm, ClipGradByValue, ClipStats
from .functional import clip_grad_norm_, clip_grad_value_, clip_grads_with_norm_, get_total_norm
from .param import ParamAttr, Parameter
from .skip import SkipAbove, SkipNonFinite

__version__ = "0.1.0"

__all__ = [
    "AdaGC",
    "AdaptiveGradClip",
    "AutoClip",
    "ClipGradBase",
    "ClipGradByGlobalNorm",
    "ClipGradByNorm",
    "ClipGradByValue",
    "ClipStats",
    "ParamAttr",
    "Parameter",
    "SkipAbove",
    "SkipNonFinite",
    "ZClip",
    "__version__",
    "adaptive",
    "clip_grad_norm_",
    "clip_grad_value_",
    "clip_grads_with_norm_",
    "distributed",
    "get_total_norm",
    "initializer",
    "isa",
    "nn",
    "optimizer",
    "skip",
]


def isa() -> str:
    """The instruction set the kernels run with: ``"avx512"``, ``"avx2"``, ``"scalar"`` or ``"neon"``.

    Chosen once per process from the CPU; ``FASTCLIP_ISA=scalar|avx2|avx512`` forces a lower one.
    """
    return _fastclip.isa()
