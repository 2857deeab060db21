"""The benchmark behind ``fastclip bench``: fastclip against the NumPy way (and torch when
importable) and against the machine's memory-bandwidth floor, measured side by side in one run.

For each workload (``workloads.py``: one 64Mi-element float32 buffer; GPT-2 small's 148 parameter
shapes; a ResNet-50-like list of 161 tensors; 5,000 tensors of 256; the 64Mi buffer in float16)
and each operation (global-norm clip, per-tensor norm clip, value clip) it measures every peer
(``peers.py``: fastclip, NumPy, torch), the median time, the bandwidth in GB/s (bytes a minimal
implementation must move: a read pass plus a read/write pass for norm clipping, one read/write
pass for value clipping), the ratio to the floor, and the speed-up over NumPy (and torch)
(``suite.py``), and prints or plots them (``report.py``).

The floor (``measure.py``) is what NumPy reaches on one thread over the same number of bytes:
``np.dot(a, a)`` (a read pass) plus ``np.multiply(a, c, out=a)`` (a read/write pass) on one
float32 buffer; for value clipping only the read/write pass. A ratio below 1 means faster than a
single-threaded streaming pass: on a 2-core machine the best possible is about 0.5-0.6.

The same workloads and peers feed the pytest-benchmark suite in ``benches/`` and
``scripts/gpu_check.py``.
"""
