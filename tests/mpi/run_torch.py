"""``python tests/mpi/run_torch.py RANK WORLD_SIZE INIT_METHOD``, one process per rank: every case
of ``dist_cases.py`` on ``torch.distributed.group.WORLD`` (gloo), then torch-specific ones: torch
tensor grads, a subgroup this rank is not in, DTensor grads (``Shard(0)``, ``Replicate()``, a
``Partial`` refused, a 2-D mesh with mixed placements), a 1-D ``DeviceMesh`` as the group, and
FSDP2 (``fully_shard``) gradients against torch's own ``clip_grad_norm_``. Prints
``rank R: K failures``; exits 1 if this rank failed."""

from __future__ import annotations

import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dist_cases
import fastclip as fc
import numpy as np
import torch
import torch.distributed as dist
from dist_cases import check, ref_norm, rel, run_all, scaled_ref, shard, tensors


def case_torch_tensors(r: dist_cases.Ranks) -> None:
    """torch CPU tensors and torch Parameters with .grad, sharded: in place through DLPack."""
    full = tensors(700, np.float32)
    mine = shard(full, r.rank, r.size, "flat", 7)
    ts = [torch.from_numpy(a.copy()) for a in mine]
    params = [torch.nn.Parameter(torch.zeros(t.shape)) for t in ts]
    for p, t in zip(params, ts):
        p.grad = t.clone()
    want = ref_norm(full, 2.0)
    got = fc.clip_grad_norm_(params, want / 2, group=dist.group.WORLD)
    r.all_same(got, "torch params")
    check(rel(got, want) <= 2e-15, f"torch params: {got!r} vs {want!r}")
    coef = dist_cases.torch_coef(want / 2, got)
    for p, a in zip(params, mine):
        check(np.array_equal(p.grad.numpy(), scaled_ref(a, coef)), "torch param grad not scaled exactly")
    got_t = fc.get_total_norm(ts, math.inf, group=dist.group.WORLD)
    check(got_t == ref_norm(full, math.inf), "torch tensors p=inf")


def case_not_in_group(r: dist_cases.Ranks) -> None:
    """A subgroup of ranks [0, 1]: its members get their own total; a rank outside it gets a
    ValueError (torch would silently skip the collective there)."""
    sub = dist.new_group([0, 1])
    g = [np.ones(3) * (r.rank + 1)]
    if r.rank in (0, 1):
        got = fc.get_total_norm(g, group=sub)
        check(rel(got, math.sqrt(3 * (1 + 4))) <= 2e-16, f"subgroup: {got!r}")
    else:
        try:
            fc.get_total_norm(g, group=sub)
            check(False, "a rank outside the group was accepted")
        except ValueError as e:
            check("not in" in str(e), str(e))


def case_dtensor(r: dist_cases.Ranks) -> None:
    """DTensor grads: Shard(0) (uneven: sizes not divisible by the world size) counted by their
    local shards, Replicate() counted once, clipped in place in the DTensor's own memory."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (r.size,))
    rng = np.random.default_rng(800)  # the same on every rank
    fulls = [rng.standard_normal(n).astype(np.float32) * s for n, s in ((1001, 3.0), (7, 50.0), (2, 1.0))]
    reps = [rng.standard_normal(13).astype(np.float32) * 4]
    shards = [distribute_tensor(torch.from_numpy(a.copy()), mesh, [Shard(0)]) for a in fulls]
    repl = [distribute_tensor(torch.from_numpy(a.copy()), mesh, [Replicate()]) for a in reps]
    want = ref_norm(fulls + reps, 2.0)
    group = dist.group.WORLD
    got = fc.get_total_norm(shards + repl, group=group)
    r.all_same(got, "dtensor total")
    check(rel(got, want) <= 2e-15, f"dtensor total: {got!r} vs {want!r}")
    got_mesh = fc.get_total_norm(shards + repl, group=mesh)  # a 1-D DeviceMesh as the group
    check(got_mesh == got, f"DeviceMesh group: {got_mesh!r} vs {got!r}")
    # as .grad of parameters, clipped in place
    params = []
    for d in shards + repl:
        p = torch.nn.Parameter(torch.zeros_like(d))
        p.grad = d
        params.append(p)
    total = fc.clip_grad_norm_(params, want / 3, group=group)
    check(rel(total, want) <= 2e-15, f"dtensor clip: {total!r}")
    coef = dist_cases.torch_coef(want / 3, total)
    for d, a in zip(shards + repl, fulls + reps):
        full_after = d.full_tensor().numpy()
        check(np.array_equal(full_after, scaled_ref(a, coef)), "a DTensor grad not scaled exactly in place")
    # ClipGradByGlobalNorm over DTensor pairs
    shards2 = [distribute_tensor(torch.from_numpy(a.copy()), mesh, [Shard(0)]) for a in fulls]
    repl2 = [distribute_tensor(torch.from_numpy(a.copy()), mesh, [Replicate()]) for a in reps]
    clip = fc.ClipGradByGlobalNorm(want / 5, group=group)
    out = clip([(None, d) for d in shards2 + repl2])
    check(out[0][1] is shards2[0], "pairs keep the DTensor objects")
    check(rel(clip.last_stats.global_norm, want) <= 2e-15, "dtensor global clip norm")
    factor = (want / 5) / clip.last_stats.global_norm
    for d, a in zip(shards2 + repl2, fulls + reps):
        check(np.array_equal(d.full_tensor().numpy(), scaled_ref(a, factor)), "global clip of a DTensor")
    # Partial placements are refused on every rank (they are the same on every rank)
    part = DTensor.from_local(torch.ones(4), mesh, [Partial()])
    try:
        fc.get_total_norm([part], group=group)
        check(False, "a Partial DTensor was accepted")
    except ValueError as e:
        check("Partial" in str(e), str(e))
    # replicated=True on a sharded DTensor contradicts its placements
    try:
        fc.get_total_norm([shards[0]], group=group, replicated=[True])
        check(False, "replicated=True on a Shard DTensor accepted")
    except ValueError as e:
        check("placements" in str(e), str(e))
    # an MPI-like group with a DTensor: a torch group is needed
    if r.size == 2:
        mesh2 = init_device_mesh("cpu", (2, 1), mesh_dim_names=("dp", "tp"))
        a = rng.standard_normal(9).astype(np.float32)
        mixed = distribute_tensor(torch.from_numpy(a.copy()), mesh2, [Replicate(), Shard(0)])
        got2 = fc.get_total_norm([mixed], group=group)
        check(rel(got2, ref_norm([a], 2.0)) <= 2e-15, f"2-D mesh (Replicate, Shard): {got2!r}")


def case_fsdp2(r: dist_cases.Ranks) -> None:
    """FSDP2 (fully_shard) on CPU: fastclip's total over the sharded DTensor grads equals torch's
    clip_grad_norm_ on an identical model, and the clipped grads agree."""
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:  # pragma: no cover
        return
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (r.size,))

    def build() -> torch.nn.Module:
        torch.manual_seed(0)
        m = torch.nn.Sequential(torch.nn.Linear(7, 33), torch.nn.Linear(33, 5))
        m.double()
        for layer in m:
            fully_shard(layer, mesh=mesh)
        fully_shard(m, mesh=mesh)
        return m

    torch.manual_seed(1 + r.rank)
    x = torch.randn(4, 7, dtype=torch.float64) * 30
    models = [build(), build()]
    for m in models:
        m(x).pow(2).sum().backward()
    ref_total = float(torch.nn.utils.clip_grad_norm_(models[0].parameters(), 1.0))
    got = fc.clip_grad_norm_(list(models[1].parameters()), 1.0, group=dist.group.WORLD)
    r.all_same(got, "fsdp2 total")
    check(rel(got, ref_total) <= 1e-12, f"fsdp2: fastclip {got!r} vs torch {ref_total!r}")
    for pa, pb in zip(models[0].parameters(), models[1].parameters()):
        a, b = pa.grad.full_tensor(), pb.grad.full_tensor()
        check(torch.allclose(a, b, rtol=1e-12, atol=0), "fsdp2 clipped grads differ from torch's")


def main() -> int:
    rank, world, init = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        group = dist.group.WORLD
        failures = run_all(group)
        failures += run_all(
            group, cases=[case_torch_tensors, case_not_in_group, case_dtensor, case_fsdp2]
        )
        for f in failures:
            print(f, flush=True)
        print(f"rank {rank}: {len(failures)} failures", flush=True)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
