"""The :class:`fastclip.distributed.Communicator` of an ``mpi4py.MPI.Comm`` (imported only for one)."""

from __future__ import annotations

from typing import Any

import numpy as np
from mpi4py import MPI

__all__ = ["MPICommunicator"]


class MPICommunicator:
    """``allgather_f64`` through ``comm.Allgather`` of float64 buffers (``MPI.DOUBLE``).

    Raises ``ValueError`` for ``MPI.COMM_NULL`` (this process is not in the communicator) and for
    an intercommunicator (whose allgather collects the *remote* group), ``TypeError`` for an
    object that is not an ``MPI.Comm``.
    """

    __slots__ = ("comm", "rank", "size")

    def __init__(self, comm: Any) -> None:
        if not isinstance(comm, MPI.Comm):
            raise TypeError(f"group must be an mpi4py.MPI.Comm, not {type(comm).__name__}")
        if comm == MPI.COMM_NULL:
            raise ValueError("group is MPI.COMM_NULL: this process is not in the communicator")
        if comm.Is_inter():
            raise ValueError("group is an MPI intercommunicator; pass an intracommunicator (e.g. comm.Merge())")
        self.comm = comm
        self.rank = int(comm.Get_rank())
        self.size = int(comm.Get_size())

    def allgather_f64(self, values: np.ndarray) -> np.ndarray:
        """Rank ``r``'s ``values`` in row ``r`` of a ``(size, k)`` float64 array, on every rank."""
        send = np.ascontiguousarray(values, dtype=np.float64).reshape(-1)
        recv = np.empty((self.size, send.size), dtype=np.float64)
        self.comm.Allgather([send, MPI.DOUBLE], [recv, MPI.DOUBLE])
        return recv
