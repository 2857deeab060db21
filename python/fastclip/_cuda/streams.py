"""CuPy itself and the stream the CUDA path works on.

:func:`cupy` is the only place that imports CuPy. Work is ordered with the producer's work: for
torch tensors on torch's current stream of the device (wrapped for CuPy), otherwise on CuPy's
current stream.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence
from typing import Any

from .._frameworks import is_torch_tensor

__all__ = ["INSTALL_HINT", "cupy", "stream_for"]

INSTALL_HINT = "pip install 'fastclip-rs[cuda]' (which installs cupy-cuda12x)"


def cupy() -> Any:
    """The ``cupy`` module; ``ImportError`` saying what to install if it is missing."""
    try:
        import cupy as cp  # type: ignore[import-not-found, unused-ignore]
    except ImportError as e:
        raise ImportError(f"fastclip needs CuPy for CUDA buffers: {INSTALL_HINT}") from e
    return cp


def stream_for(cp: Any, objs: Sequence[Any], device_id: int) -> Any:
    """torch's current stream on the device when any producer is a torch tensor (work is then
    ordered with torch's kernels); otherwise CuPy's current stream."""
    if any(is_torch_tensor(o) for o in objs):
        torch = sys.modules["torch"]
        ts = torch.cuda.current_stream(device_id)
        if hasattr(cp.cuda.Stream, "from_external") and hasattr(ts, "__cuda_stream__"):
            return cp.cuda.Stream.from_external(ts)  # CuPy >= 14: the CUDA stream protocol
        with warnings.catch_warnings():  # ExternalStream is deprecated from CuPy 14 on
            warnings.simplefilter("ignore", DeprecationWarning)
            return cp.cuda.ExternalStream(ts.cuda_stream, device_id)
    with cp.cuda.Device(device_id):
        return cp.cuda.get_current_stream()
