"""The host side of ``kernels.cu``: its enums, its launch geometry, loading and compiling it.

``kernels.cu`` ships inside the package (maturin puts every file under ``python/fastclip`` in the
wheel) and is compiled at run time by NVRTC through CuPy's ``RawModule``, once per device (CuPy
also caches the binary on disk). Nothing here imports CuPy at import time.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

__all__ = [
    "BF16",
    "CUDA_BLOCK_ELEMS",
    "F16",
    "F32",
    "F64",
    "MODE_MAX",
    "MODE_P",
    "MODE_P1",
    "MODE_P2",
    "OP_CLAMP",
    "OP_SCALE",
    "THREADS",
    "compile_options",
    "compiled",
    "source",
]

#: Elements per CUDA block (per entry of the block table): 64 elements for each of the
#: :data:`THREADS` threads. Not the CPU engine's ``fastclip._fastclip.CHUNK`` (32Ki, sized for a
#: core's L2): a GPU wants many blocks in flight, and each block's partial is combined on the host.
CUDA_BLOCK_ELEMS = 16384
#: Threads per block; the kernels' shared-memory tree assumes a power of two. Passed to NVRTC as
#: ``-DFC_THREADS``, so the launch and the shared arrays agree.
THREADS = 256

#: Storage dtype codes (``enum fc_code`` in kernels.cu).
F32, F64, F16, BF16 = 0, 1, 2, 3
#: What the norm kernel sums (``enum fc_mode``): |x|, |x|^2, |x|^p, nothing (p = inf: the max only).
MODE_P1, MODE_P2, MODE_P, MODE_MAX = 0, 1, 2, 3
#: What the apply kernel does (``enum fc_op``).
OP_SCALE, OP_CLAMP = 0, 1

#: The file name of the kernel source inside this package.
SOURCE_FILE = "kernels.cu"


def source() -> str:
    """The CUDA C++ source of both kernels (``kernels.cu``, shipped in the package)."""
    return resources.files(__package__).joinpath(SOURCE_FILE).read_text(encoding="utf-8")


def compile_options() -> tuple[str, ...]:
    """The NVRTC options the source needs: the block size it is launched with."""
    return (f"-DFC_THREADS={THREADS}",)


@cache
def compiled(device_id: int) -> tuple[Any, Any]:
    """``(fastclip_norm_partials, fastclip_apply)`` compiled for ``device_id`` (once per device)."""
    from .streams import cupy

    cp = cupy()
    with cp.cuda.Device(device_id):
        mod = cp.RawModule(code=source(), options=compile_options())
        return mod.get_function("fastclip_norm_partials"), mod.get_function("fastclip_apply")
