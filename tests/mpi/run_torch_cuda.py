"""``python tests/mpi/run_torch_cuda.py RANK WORLD_SIZE INIT_METHOD BACKEND``: the CUDA path under a
group, one process per rank on GPU 0: torch CUDA parameters (float32, bfloat16) sharded over the
ranks, ``clip_grad_norm_`` and ``ClipGradByGlobalNorm`` with ``group=dist.group.WORLD`` (NCCL: the
collective itself runs on the GPU; gloo: on the CPU), checked against a float64 reference of the
concatenated shards and the CPU kernels' rounding. Prints ``rank R: K failures``."""

from __future__ import annotations

import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fastclip as fc
import numpy as np
import torch
import torch.distributed as dist
from dist_cases import Ranks, check, ref_norm, rel, run_all, scaled_ref, shard, tensors, torch_coef


def case_cuda_grads(r: Ranks) -> None:
    for dt, tdt in ((np.float32, torch.float32), (np.float64, torch.float64)):
        full = tensors(900, dt)
        mine = shard(full, r.rank, r.size, "flat", 9)
        params = []
        for a in mine:
            p = torch.nn.Parameter(torch.zeros(a.shape, dtype=tdt, device="cuda"))
            p.grad = torch.from_numpy(a.copy()).to("cuda")
            params.append(p)
        want = ref_norm(full, 2.0)
        got = fc.clip_grad_norm_(params, want / 2, group=dist.group.WORLD)
        r.all_same(got, f"cuda {dt}")
        check(rel(got, want) <= 1e-13, f"cuda {dt}: {got!r} vs {want!r}")
        coef = torch_coef(want / 2, got)
        for p, a in zip(params, mine):
            check(np.array_equal(p.grad.cpu().numpy(), scaled_ref(a, coef)), f"cuda {dt}: grad not scaled exactly")
        got_inf = fc.get_total_norm([p.grad for p in params], math.inf, group=dist.group.WORLD)
        check(got_inf == ref_norm([scaled_ref(a, coef) for a in full], math.inf), f"cuda {dt} p=inf")
    # bfloat16 through ClipGradByGlobalNorm, a NaN on the last rank skipped everywhere
    full = [np.asarray(a, np.float32) for a in tensors(901, np.float32)]
    mine = shard(full, r.rank, r.size, "whole", 1)
    grads = [torch.from_numpy(a.copy()).to("cuda", torch.bfloat16) for a in mine]
    if r.rank == r.size - 1 and grads:
        grads[0].view(-1)[0] = float("nan")
    before = [g.clone() for g in grads]
    clip = fc.ClipGradByGlobalNorm(1.0, auto_skip_clip=True, group=dist.group.WORLD)
    clip([(None, g) for g in grads])
    check(math.isnan(clip.last_stats.global_norm), "bf16: NaN on the last rank not seen")
    same = all(torch.equal(a.view(torch.int16), b.view(torch.int16)) for a, b in zip(grads, before))  # NaN too
    check(same, "bf16: auto_skip_clip modified a grad")


def main() -> int:
    rank, world, init, backend = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    torch.cuda.set_device(0)
    dist.init_process_group(backend, init_method=init, rank=rank, world_size=world)
    try:
        failures = run_all(dist.group.WORLD, cases=[case_cuda_grads])
        for f in failures:
            print(f, flush=True)
        print(f"rank {rank}: {len(failures)} failures", flush=True)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
