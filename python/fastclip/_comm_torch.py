"""The :class:`fastclip.distributed.Communicator` of a ``torch.distributed`` group (imported only for one)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["TorchCommunicator"]


def _process_group(group: Any) -> Any:
    """A ``ProcessGroup`` from a group or a 1-D ``DeviceMesh``."""
    if type(group).__name__ == "DeviceMesh":
        if group.ndim != 1:
            raise ValueError(
                f"group is a {group.ndim}-D DeviceMesh; pass a ProcessGroup (e.g. torch.distributed.group.WORLD "
                "or mesh.get_group(dim)) spanning the ranks whose grads make up the norm"
            )
        return group.get_group()
    return group


class TorchCommunicator:
    """``allgather_f64`` through ``torch.distributed.all_gather`` of float64 tensors: on the CPU for
    gloo (and mpi, ucc), on the current CUDA device for NCCL.

    ``global_ranks``: the members' ranks in the default group (a DTensor's mesh must be these).
    Raises ``ValueError`` when torch.distributed is not initialized or this process is not in the
    group (torch would silently skip the collective on a non-member).
    """

    __slots__ = ("device", "global_ranks", "group", "rank", "size")

    def __init__(self, group: Any) -> None:
        if not dist.is_available() or not dist.is_initialized():
            raise ValueError("group is a torch.distributed group, but torch.distributed is not initialized")
        pg = _process_group(group)
        rank = dist.get_rank(pg)
        if rank < 0:
            raise ValueError(
                f"this process (global rank {dist.get_rank()}) is not in the torch.distributed group passed as group"
            )
        self.group = pg
        self.rank = int(rank)
        self.size = int(dist.get_world_size(pg))
        self.global_ranks = [int(r) for r in dist.get_process_group_ranks(pg)]
        backend = str(dist.get_backend(pg)).lower()
        if "nccl" in backend and not any(b in backend for b in ("gloo", "mpi")):
            self.device = torch.device("cuda", torch.cuda.current_device())
        else:
            self.device = torch.device("cpu")

    def allgather_f64(self, values: np.ndarray) -> np.ndarray:
        """Rank ``r``'s ``values`` in row ``r`` of a ``(size, k)`` float64 array, on every rank."""
        send = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64).reshape(-1).copy()).to(self.device)
        out = [torch.empty_like(send) for _ in range(self.size)]
        dist.all_gather(out, send, group=self.group)
        return torch.stack(out).cpu().numpy().astype(np.float64, copy=False)
