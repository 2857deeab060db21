"""The cost of fastclip's collective next to the local clip on GPT-2 small's sharded gradients:
``python benches/distributed_collective.py --ranks 2`` is ``python -m fastclip.bench_distributed``
(see there)."""

from __future__ import annotations

import sys

from fastclip.bench_distributed import main

if __name__ == "__main__":
    sys.exit(main())
