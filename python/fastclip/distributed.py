"""Gradient norms over many processes: each rank passes its own shard, every rank gets one total.

``get_total_norm``, ``clip_grad_norm_`` and ``ClipGradByGlobalNorm`` take ``group=``: an
``mpi4py.MPI.Comm``, a ``torch.distributed.ProcessGroup`` (``torch.distributed.group.WORLD``
included), or any object with the :class:`Communicator` protocol. ``group=None`` is the
single-process behaviour. mpi4py and torch are imported only when such a group is passed.

What one call does on each rank:

1. the local norm pass (the extension's, overflow-safe, f64 accumulation) over the rank's grads:
   ``n_r``, the p-norm of the grads this rank counts, and ``q_r``, that of its *replicated* grads
   (held identically by every rank: ``replicated=`` flags, ``Parameter(replicated=True)``, DTensor
   ``Replicate()`` placements);
2. one collective: an allgather of :data:`FIELDS` float64 values per rank (no gradient data):
   what the call is (norm_type, threshold, flags, a call counter), whether the rank failed before
   the collective, ``n_r`` and ``q_r``;
3. every rank computes the same function of the same gathered rows, in rank order:
   ``total = combine_norms([n_0, ..., n_{R-1}, q_0], p)``, i.e. ``(sum_r n_r^p + q_0^p)^(1/p)``
   (``max`` for p = inf), so every rank has the bitwise same total and makes the same decision.

Guarantees: NaN/inf on any rank is NaN/inf on all ranks (``error_if_nonfinite`` raises and
``auto_skip_clip`` skips everywhere); a rank's local norm is at most the global one, so no rank's
contribution overflows where the total is finite; the total is the single-process norm of the
concatenated shards up to the rounding of the local norms (see :func:`combine_norms`); p = inf
is exact. Errors are raised on **every** rank, before any gradient is modified: a rank whose
local checks fail (a bad buffer, a bad argument) still joins the collective, raises its own
error, and every other rank raises ``RuntimeError`` naming it; ranks passing a different
``norm_type``, threshold, flags or operation raise ``ValueError``; replicated grads whose norms
differ between ranks raise ``ValueError`` (they were not identical: a desync).

What cannot be detected (these hang, or fail inside the engine): a rank that never makes the
call, or whose ``group`` is not a valid group (``TypeError`` before the collective, so it does not
join it); a rank whose call is matched with a collective of a different size by another library
(the engine's own error, if any; one of the same size is recognized by a marker value and raises
``RuntimeError``). The call counter (each process counts its fastclip collectives per group
object) catches ranks whose counts drifted apart, but two ranks that each make an extra call in
a matching pattern cannot be told apart from a correct sequence.
"""

from __future__ import annotations

import math
import sys
import threading
import weakref
from collections.abc import Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ._buffers import Collected, collect, is_torch_tensor
from ._checks import norm_type as _norm_type
from ._checks import threshold as _threshold

__all__ = ["FIELDS", "Communicator", "as_communicator", "combine_norms"]


@runtime_checkable
class Communicator(Protocol):
    """What fastclip needs from a process group: its size, this process's rank, one allgather.

    - ``rank``: this process's index in the group, ``0 <= rank < size``;
    - ``size``: the number of processes;
    - ``allgather_f64(values)``: ``values`` is a 1-D float64 array of ``k`` values (the same ``k``
      on every rank); returns a float64 array of shape ``(size, k)`` whose row ``r`` is rank
      ``r``'s ``values``, bit for bit, on every rank. Called once per fastclip call, collectively
      (every rank calls it in the same order).

    mpi4py communicators and torch.distributed process groups are adapted automatically
    (:func:`as_communicator`); any other engine plugs in by implementing these three members.
    """

    rank: int
    size: int

    def allgather_f64(self, values: np.ndarray) -> np.ndarray:
        """Rank ``r``'s ``values`` in row ``r`` of a ``(size, len(values))`` float64 array."""
        ...


# --- the group: adapters, and a call counter per group object -------------------------------------


class _Channel:
    """A resolved group: the :class:`Communicator`, the number of fastclip collectives made on it
    by this process, and (torch only) the global ranks of its members."""

    __slots__ = ("calls", "comm", "lock", "ranks")

    def __init__(self, comm: Any, ranks: list[int] | None) -> None:
        self.comm = comm
        self.ranks = ranks
        self.calls = 0
        self.lock = threading.Lock()

    def next_call(self) -> int:
        with self.lock:
            self.calls += 1
            return self.calls


#: id(group) -> (weak reference to the group, or the group itself, _Channel). The identity check
#: on lookup makes a recycled id harmless.
_channels: dict[int, tuple[Any, _Channel]] = {}
_channels_lock = threading.Lock()


def _module_of(group: Any) -> str:
    return getattr(type(group), "__module__", "") or ""


def _adapt(group: Any) -> tuple[Any, list[int] | None]:
    mod = _module_of(group)
    if mod == "mpi4py" or mod.startswith("mpi4py."):
        from ._comm_mpi import MPICommunicator

        return MPICommunicator(group), None
    if mod == "torch" or mod.startswith("torch."):
        from ._comm_torch import TorchCommunicator

        c = TorchCommunicator(group)
        return c, c.global_ranks
    if all(hasattr(group, a) for a in ("rank", "size", "allgather_f64")):
        return group, None
    tdist = sys.modules.get("torch.distributed")
    member = getattr(tdist, "GroupMember", None)
    if type(group) is int and member is not None and group == getattr(member, "NON_GROUP_MEMBER", None):
        # what torch.distributed.new_group returns on a rank outside the new group
        raise ValueError("group is torch.distributed's NON_GROUP_MEMBER: this process is not in that group")
    raise TypeError(
        "group must be an mpi4py.MPI.Comm, a torch.distributed.ProcessGroup or an object with rank, size "
        f"and allgather_f64 (fastclip.distributed.Communicator), not {type(group).__name__}"
    )


def _checked(comm: Any) -> None:
    rank, size = comm.rank, comm.size
    for name, v in (("rank", rank), ("size", size)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"group.{name} must be an int, not {type(v).__name__}")
    if size < 1 or not 0 <= rank < size:
        raise ValueError(f"group has rank {rank} and size {size}; need 0 <= rank < size")


def _channel(group: Any) -> _Channel:
    key = id(group)
    with _channels_lock:
        hit = _channels.get(key)
        if hit is not None:
            old, ch = hit
            held = old() if isinstance(old, weakref.ref) else old
            if held is group:
                return ch
    comm, ranks = _adapt(group)
    _checked(comm)
    ch = _Channel(comm, ranks)
    try:
        ref: Any = weakref.ref(group)
    except TypeError:
        ref = group  # kept alive so that its id is not reused while the entry exists
    with _channels_lock:
        _channels[key] = (ref, ch)
    return ch


def as_communicator(group: Any) -> Communicator:
    """The :class:`Communicator` fastclip uses for ``group``.

    An ``mpi4py.MPI.Comm`` (an intracommunicator) gets an adapter over ``Comm.Allgather``; a
    ``torch.distributed.ProcessGroup`` (or a 1-D ``DeviceMesh``) one over
    ``torch.distributed.all_gather`` (CPU tensors for gloo, CUDA tensors for NCCL); any other
    object with ``rank``, ``size`` and ``allgather_f64`` is used as it is. The adapter is
    chosen from the module of ``type(group)``, so mpi4py and torch are imported only for their
    own objects. Resolved once per group object and cached.

    Raises ``TypeError`` for anything else, and ``ValueError`` for a group this process is not in
    (``MPI.COMM_NULL``; a torch group without this rank; torch.distributed not initialized), an
    intercommunicator, or a rank outside ``[0, size)``.

    >>> class Solo:
    ...     rank, size = 0, 1
    ...     def allgather_f64(self, values):
    ...         return values.reshape(1, -1).copy()
    >>> as_communicator(Solo()).size
    1
    """
    return _channel(group).comm


# --- combining norms exactly ----------------------------------------------------------------------

#: Above this p the ratios are formed by dividing by the largest norm (so the largest term is
#: exactly 1 and 0.5^p cannot underflow); at or below it by the power of two of the largest norm,
#: which is exact.
_POW2_MAX_P = 512.0
_SPLIT = 134217729.0  # 2^27 + 1, Veltkamp's splitter


def _two_square(x: float) -> tuple[float, float]:
    """``x * x`` as ``hi + lo`` exactly (Dekker), for ``0 <= x < 1``."""
    hi = x * x
    c = _SPLIT * x
    xh = c - (c - x)
    xl = x - xh
    return hi, ((xh * xh - hi) + 2.0 * xh * xl) + xl * xl


def _root(s: float, p: float, e: int) -> float:
    """``2^e * s^(1/p)`` for ``s >= 1/2^p``, inf only if the result itself is past the f64 range."""
    try:
        r = math.sqrt(s) if p == 2.0 else s ** (1.0 / p)
        return math.ldexp(r, e)
    except OverflowError:
        pass
    # p < 1 and s^(1/p) past the range while 2^e brings it back (or does not): in the log domain
    q = math.log2(s) / p + e
    if q >= 1024.0:
        return math.inf
    k = math.floor(q)
    return math.ldexp(2.0 ** (q - k), k)


def combine_norms(norms: Sequence[float], p: float) -> float:
    """The p-norm of a union of disjoint parts from the parts' p-norms ``n_i``.

    ``max_i n_i`` for p = inf (exact); otherwise ``(sum_i n_i^p)^(1/p)``, computed as
    ``M * (fsum_i (n_i / M)^p)^(1/p)`` where ``M`` is the power of two of ``max_i n_i`` (exact
    ratios; for p > 512 ``M = max_i n_i``), with exact squares (Dekker) for p = 2 and ``math.fsum``
    for the sum: so it overflows only when the result does, never underflows to 0 for a nonzero
    result, and adds at most about one ulp to the parts' own rounding. NaN anywhere gives NaN,
    else an infinite part gives inf. No parts give 0.0.

    The same inputs give the bitwise same result on every machine with IEEE floats for
    p = 1, 2, inf (only correctly rounded operations); other p use ``math.pow``, so ranks on
    different C libraries could in principle differ in the last bit.

    >>> combine_norms([3.0, 4.0], 2.0)
    5.0
    >>> combine_norms([1e300, 1e300], 2.0)  # no overflow
    1.4142135623730952e+300
    >>> combine_norms([2.0, float("nan"), float("inf")], float("inf"))
    nan
    """
    ns = [float(n) for n in norms]
    if not ns:
        return 0.0
    if any(math.isnan(n) for n in ns):
        return math.nan
    top = max(ns)
    if math.isinf(p) or top == 0.0 or math.isinf(top):
        return top
    if p == 1.0:
        try:
            return math.fsum(ns)
        except OverflowError:  # the sum of finite norms is past the f64 range
            return math.inf
    if p > _POW2_MAX_P:
        s = math.fsum((n / top) ** p for n in ns)
        try:
            return top * s ** (1.0 / p)
        except OverflowError:  # pragma: no cover - s <= len(ns), so s^(1/p) is tiny
            return math.inf
    _, e = math.frexp(top)  # top = f * 2^e, 0.5 <= f < 1: ratios n / 2^e are exact
    xs = [math.ldexp(n, -e) for n in ns]
    if p == 2.0:
        terms: list[float] = []
        for x in xs:
            terms.extend(_two_square(x))
        s = math.fsum(terms)
    else:
        s = math.fsum(x**p for x in xs)
    return _root(s, p, e)


# --- the gathered vector --------------------------------------------------------------------------

#: Values each rank contributes to the one allgather of a call.
FIELDS = 10
#: Marks a fastclip row (so that a collective matched with someone else's is recognized).
_MAGIC = float.fromhex("0x1.fa57c11bp+3")
_MAGIC_I, _STATUS, _CALL, _OP, _P, _THRESHOLD, _FLAGS, _COUNTED, _REPLICATED, _N_REPLICATED = range(FIELDS)

OP_TOTAL_NORM, OP_CLIP_GRAD_NORM, OP_CLIP_GLOBAL = 1.0, 2.0, 3.0
_OP_NAMES = {1.0: "get_total_norm", 2.0: "clip_grad_norm_", 3.0: "ClipGradByGlobalNorm"}
FLAG_ERROR_IF_NONFINITE, FLAG_AUTO_SKIP = 1.0, 2.0

#: The status a rank reports when its local phase failed (by exception type).
_STATUS_OF = {TypeError: 1.0, ValueError: 2.0, RuntimeError: 3.0, ImportError: 4.0}
_STATUS_NAMES = {1.0: "TypeError", 2.0: "ValueError", 3.0: "RuntimeError", 4.0: "ImportError", 5.0: "an error"}


def _status_of(exc: BaseException) -> float:
    for t, code in _STATUS_OF.items():
        if isinstance(exc, t):
            return code
    return 5.0


def _same_bits(column: np.ndarray) -> bool:
    bits = np.ascontiguousarray(column, dtype=np.float64).view(np.uint64)
    return bool((bits == bits[0]).all())


def _per_rank(column: np.ndarray, fmt: Any = repr) -> str:
    return ", ".join(f"rank {r}: {fmt(float(v))}" for r, v in enumerate(column))


def _flags_text(v: float) -> str:
    f = int(v)
    return f"error_if_nonfinite={bool(f & 1)}, auto_skip_clip={bool(f & 2)}"


class _Call:
    """One collective call: what it is, and this rank's local result (or error)."""

    __slots__ = ("flags", "op", "p", "threshold")

    def __init__(self, op: float, p: float = math.nan, threshold: float = math.nan, flags: float = 0.0) -> None:
        self.op, self.p, self.threshold, self.flags = op, p, threshold, flags


def _gather(
    ch: _Channel, call: _Call, counted: float, replicated: float, n_replicated: int, error: BaseException | None
) -> float:
    """The one collective of a call, and the total every rank derives from it.

    Raises on every rank (the same way, from the same gathered rows): the local ``error`` on its
    own rank and ``RuntimeError`` naming it elsewhere; ``RuntimeError`` for a foreign collective or
    drifted call counts; ``ValueError`` for ranks that disagree on the call or on replicated grads.
    """
    comm = ch.comm
    row = np.empty(FIELDS, dtype=np.float64)
    row[_MAGIC_I] = _MAGIC
    row[_STATUS] = 0.0 if error is None else _status_of(error)
    row[_CALL] = float(ch.next_call())
    row[_OP] = call.op
    row[_P] = call.p
    row[_THRESHOLD] = call.threshold
    row[_FLAGS] = call.flags
    row[_COUNTED] = counted
    row[_REPLICATED] = replicated
    row[_N_REPLICATED] = float(n_replicated)
    try:
        got = np.asarray(comm.allgather_f64(row), dtype=np.float64)
    except BaseException as exc:
        if error is not None:
            raise error from exc
        raise
    if got.shape != (comm.size, FIELDS):
        raise RuntimeError(
            f"group.allgather_f64 returned shape {got.shape}, expected ({comm.size}, {FIELDS}): "
            "not a fastclip.distributed.Communicator"
        )
    if not _same_bits(got[:, _MAGIC_I]) or got[0, _MAGIC_I] != _MAGIC:
        bad = [r for r in range(comm.size) if got[r, _MAGIC_I] != _MAGIC]
        raise RuntimeError(
            f"the collective of this fastclip call was matched with another kind of collective on rank(s) {bad}: "
            "the ranks' collective calls are out of step"
        )
    failed = [r for r in range(comm.size) if got[r, _STATUS] != 0.0]
    if failed:
        if error is not None:
            raise error
        what = ", ".join(f"rank {r} ({_STATUS_NAMES.get(float(got[r, _STATUS]), 'an error')})" for r in failed)
        raise RuntimeError(
            f"{what} failed before the collective of this fastclip call (see that rank's error); "
            "no gradient was modified on any rank"
        )
    if not _same_bits(got[:, _CALL]):
        raise RuntimeError(
            "the ranks are out of step: this is fastclip's collective call number "
            f"{_per_rank(got[:, _CALL], lambda v: str(int(v)))} on this group"
        )
    if not _same_bits(got[:, _OP]):
        raise ValueError(
            "the ranks made different fastclip calls: "
            + _per_rank(got[:, _OP], lambda v: _OP_NAMES.get(v, str(v)))
        )
    if not _same_bits(got[:, _P]):
        raise ValueError(f"the ranks passed different norm_type values: {_per_rank(got[:, _P])}")
    if not _same_bits(got[:, _THRESHOLD]):
        raise ValueError(
            f"the ranks passed different clipping thresholds (max_norm/clip_norm): {_per_rank(got[:, _THRESHOLD])}"
        )
    if not _same_bits(got[:, _FLAGS]):
        raise ValueError(f"the ranks passed different options: {_per_rank(got[:, _FLAGS], _flags_text)}")
    if not _same_bits(got[:, _N_REPLICATED]):
        raise ValueError(
            "the ranks passed different numbers of replicated grads (every rank must hold the same replicated "
            f"grads, in the same order): {_per_rank(got[:, _N_REPLICATED], lambda v: str(int(v)))}"
        )
    reps = got[:, _REPLICATED]
    if _same_bits(reps):
        rep = float(reps[0])
    elif np.isnan(reps).any():
        rep = math.nan  # a NaN on one rank's copy is seen by all
    elif np.isinf(reps).any():
        rep = math.inf
    else:
        raise ValueError(
            "the replicated grads differ between ranks (their norms are "
            f"{_per_rank(reps)}): grads marked replicated must be bitwise identical on every rank"
        )
    return combine_norms([*got[:, _COUNTED].tolist(), rep], call.p)


# --- the local phase: this rank's buffers and their roles -----------------------------------------

COUNT, REPLICA, ELSEWHERE = 0, 1, 2  # counted here; identical everywhere (rank 0 counts); counted by another rank


class _Slot:
    """Stands for one item handed to :func:`collect`: ``.grad`` is the buffer, or ``None``."""

    __slots__ = ("grad",)

    def __init__(self, grad: Any) -> None:
        self.grad = grad


class Local:
    """This rank's buffers (:class:`Collected`) and each one's role (COUNT, REPLICA, ELSEWHERE)."""

    __slots__ = ("c", "roles")

    def __init__(self, c: Collected, roles: list[int]) -> None:
        self.c = c
        self.roles = roles

    @property
    def positions(self) -> list[int]:
        return list(range(len(self.c.arrays))) if self.c.positions is None else list(self.c.positions)

    def subset(self, role: int) -> tuple[list[Any], list[int]]:
        pos = self.positions
        idx = [i for i, r in enumerate(self.roles) if r == role]
        return [self.c.arrays[i] for i in idx], [pos[i] for i in idx]

    def norm_of(self, role: int, p: float, name: str) -> float:
        arrays, pos = self.subset(role)
        if not arrays:
            return 0.0
        _, total = self.c.ops.norms(arrays, p, False, name, pos)
        return float(total)

    def check_writeable(self, name: str) -> None:
        """The in-place checks (writeable, pairwise disjoint) of every buffer, before the collective:
        ``scale_`` by exactly 1 checks and changes nothing."""
        if self.c.arrays:
            self.c.ops.scale_(self.c.arrays, 1.0, name, self.c.positions)


def _items(grads: Any, name: str) -> list[Any]:
    """``grads`` as a list of items (one array or tensor, or an iterable read once)."""
    if isinstance(grads, np.ndarray) or hasattr(grads, "__dlpack__"):
        return [grads]
    if hasattr(grads, "grad") and not isinstance(grads, Iterable):
        return [grads]
    if isinstance(grads, (str, bytes)) or not isinstance(grads, Iterable):
        raise TypeError(f"{name} must be an array or an iterable of arrays/parameters, not {type(grads).__name__}")
    return list(grads)


def replicated_flags(replicated: Any, n: int, name: str = "grads") -> list[bool]:
    """``replicated`` (None, or a sequence of ``n`` bools aligned with the items of ``name``) as a list.

    Raises ``TypeError`` for a non-sequence or a non-bool entry and ``ValueError`` for a wrong length.
    """
    if replicated is None:
        return [False] * n
    if isinstance(replicated, np.ndarray):
        ok = replicated.dtype == np.bool_ and replicated.ndim == 1
    else:
        ok = isinstance(replicated, Sequence) and not isinstance(replicated, (str, bytes))
    if not ok:
        raise TypeError(f"replicated must be a sequence of bools aligned with {name}, not {type(replicated).__name__}")
    flags = list(replicated)
    if len(flags) != n:
        raise ValueError(f"replicated has {len(flags)} entries but {name} has {n} items; give one bool per item")
    for i, f in enumerate(flags):
        if not isinstance(f, (bool, np.bool_)):
            raise TypeError(f"replicated[{i}] must be a bool, not {type(f).__name__}")
    return [bool(f) for f in flags]


def _dtensor_type() -> type[Any] | None:
    """``torch.distributed.tensor.DTensor`` if torch is already imported and has it."""
    if "torch" not in sys.modules:
        return None
    mod = sys.modules.get("torch.distributed.tensor")
    if mod is None:
        try:
            import torch.distributed.tensor as mod  # type: ignore[no-redef]
        except ImportError:  # pragma: no cover - torch without distributed
            return None
    return getattr(mod, "DTensor", None)


def _grad_of(item: Any) -> Any:
    """The buffer an item stands for, as :func:`fastclip._buffers.collect` reads it (unconverted)."""
    if isinstance(item, np.ndarray):
        return item
    if is_torch_tensor(item):
        return item.grad if (item.requires_grad or item.grad is not None) else item
    if hasattr(item, "__dlpack_device__"):
        return item
    return getattr(item, "grad", item)


def _dtensor_role(dt: Any, ch: _Channel, name: str, pos: int) -> int:
    """A DTensor's role from its placements: all ``Replicate()`` -> REPLICA; ``Shard`` on some mesh
    dims -> COUNT on the ranks at coordinate 0 of every ``Replicate()`` dim, ELSEWHERE on the others.
    ``ValueError`` for a ``Partial`` placement (not reduced yet) or a mesh that is not the group."""
    mesh = dt.device_mesh
    placements = tuple(dt.placements)
    if any(pl.is_partial() for pl in placements):
        raise ValueError(
            f"{name}[{pos}] is a DTensor with a Partial placement {placements}: its local values are not the "
            "gradient yet; reduce it first (redistribute to Shard/Replicate)"
        )
    if ch.ranks is None:
        raise ValueError(f"{name}[{pos}] is a DTensor: pass a torch.distributed group as group")
    mesh_ranks = sorted(int(r) for r in mesh.mesh.flatten().tolist())
    if mesh_ranks != sorted(ch.ranks):
        raise ValueError(
            f"{name}[{pos}] is a DTensor on a device mesh of ranks {mesh_ranks}, but the group has ranks "
            f"{sorted(ch.ranks)}: pass the group that spans its mesh"
        )
    if all(pl.is_replicate() for pl in placements):
        return REPLICA
    coord = mesh.get_coordinate()
    for d, pl in enumerate(placements):
        if pl.is_replicate() and coord[d] != 0:
            return ELSEWHERE
    return COUNT


def _local_of(dt: Any) -> Any:
    """A DTensor's local shard (a view of its memory), waited for if its collective is pending."""
    local = dt.to_local()
    wait = getattr(local, "wait", None)
    if type(local).__name__ == "AsyncCollectiveTensor" and callable(wait):
        local = wait()
    return local


def local_buffers(items: list[Any], flags: list[bool], ch: _Channel | None, name: str = "grads") -> Local:
    """Collect this rank's buffers with their roles: a flag in ``flags``, or ``replicated is True``
    on the item (``fastclip.Parameter(replicated=True)``), makes a buffer REPLICA; a DTensor is
    replaced by its local shard, its role taken from its placements (:func:`_dtensor_role`).
    ``ch=None`` means single-process (DTensors are left to :func:`collect`)."""
    dtensor = _dtensor_type() if ch is not None else None
    staged: list[Any] = []
    role_of: dict[int, int] = {}
    for pos, item in enumerate(items):
        role = REPLICA if (flags[pos] or getattr(item, "replicated", False) is True) else COUNT
        if dtensor is not None:
            g = _grad_of(item)
            if isinstance(g, dtensor):
                assert ch is not None
                placed = _dtensor_role(g, ch, name, pos)
                if role == REPLICA and placed != REPLICA:
                    raise ValueError(
                        f"{name}[{pos}] is marked replicated but is a DTensor with placements "
                        f"{tuple(g.placements)}: its placements already say how it is laid out"
                    )
                role = placed
                item = _Slot(_local_of(g))
        role_of[pos] = role
        staged.append(item)
    c = collect(staged, name)
    positions = list(range(len(c.arrays))) if c.positions is None else c.positions
    return Local(c, [role_of[p] for p in positions])


# --- the three calls ------------------------------------------------------------------------------


def get_total_norm(
    grads: Any, norm_type: Any = 2.0, error_if_nonfinite: bool = False, *, group: Any, replicated: Any = None
) -> float:
    """:func:`fastclip.get_total_norm` over ``group``: the p-norm of every rank's grads together,
    replicated ones counted once; the same float on every rank (see the module doc)."""
    ch = _channel(group)
    call = _Call(OP_TOTAL_NORM, flags=FLAG_ERROR_IF_NONFINITE if error_if_nonfinite else 0.0)
    counted = rep = 0.0
    n_rep = 0
    error: BaseException | None = None
    try:
        call.p = _norm_type(norm_type)
        items = _items(grads, "grads")
        loc = local_buffers(items, replicated_flags(replicated, len(items)), ch)
        counted = loc.norm_of(COUNT, call.p, "grads")
        rep = loc.norm_of(REPLICA, call.p, "grads")
        n_rep = loc.roles.count(REPLICA)
    except Exception as exc:  # joins the collective anyway, so that every rank raises
        error = exc
    total = _gather(ch, call, counted, rep, n_rep, error)
    from .functional import _refuse_nonfinite

    _refuse_nonfinite(total, call.p, bool(error_if_nonfinite))
    return total


def clip_grad_norm_(
    grads: Any,
    max_norm: Any,
    norm_type: Any = 2.0,
    error_if_nonfinite: bool = False,
    *,
    group: Any,
    replicated: Any = None,
) -> float:
    """:func:`fastclip.clip_grad_norm_` over ``group``: the global total as in
    :func:`get_total_norm`, then every rank scales its own grads (replicated ones too) by
    torch's ``min(1, max_norm / (total + 1e-6))``. Every check, the in-place ones included, runs
    before the collective: on any error no rank modifies anything."""
    from .functional import _coefficient, _refuse_nonfinite

    ch = _channel(group)
    call = _Call(OP_CLIP_GRAD_NORM, flags=FLAG_ERROR_IF_NONFINITE if error_if_nonfinite else 0.0)
    counted = rep = 0.0
    n_rep = 0
    error: BaseException | None = None
    loc: Local | None = None
    try:
        call.threshold = _threshold(max_norm, "max_norm")
        call.p = _norm_type(norm_type)
        items = _items(grads, "grads")
        loc = local_buffers(items, replicated_flags(replicated, len(items)), ch)
        counted = loc.norm_of(COUNT, call.p, "grads")
        rep = loc.norm_of(REPLICA, call.p, "grads")
        n_rep = loc.roles.count(REPLICA)
        loc.check_writeable("grads")
    except Exception as exc:
        error = exc
    total = _gather(ch, call, counted, rep, n_rep, error)
    assert loc is not None
    _refuse_nonfinite(total, call.p, bool(error_if_nonfinite))
    if loc.c.arrays:
        loc.c.ops.scale_(loc.c.arrays, _coefficient(call.threshold, total), "grads", loc.c.positions)
    return total


def clip_by_global_norm(clip: Any, params_grads: Any) -> list[tuple[Any, Any]]:
    """:meth:`fastclip.ClipGradByGlobalNorm.clip` over ``clip.group``: the global L2 norm of every
    rank's clipped grads (replicated ones once: ``replicated=True`` on the param, or a DTensor
    grad with ``Replicate()`` placements), then Paddle's factor on every rank. ``clip.last_stats``
    holds this rank's per-grad norms and the global norm."""
    from .clip import _NAME, ClipStats, _applied

    ch = _channel(clip.group)
    call = _Call(
        OP_CLIP_GLOBAL, 2.0, clip.clip_norm, FLAG_AUTO_SKIP if clip.auto_skip_clip else 0.0
    )
    counted = rep = 0.0
    n_rep = 0
    error: BaseException | None = None
    out: list[tuple[Any, Any]] = []
    loc: Local | None = None
    norms: list[float] = []
    positions: list[int] = []
    try:
        out, loc = _split_pairs(params_grads, ch)
        positions = loc.positions
        norms = [0.0] * len(loc.c.arrays)
        for role in (COUNT, REPLICA, ELSEWHERE):
            idx = [i for i, r in enumerate(loc.roles) if r == role]
            if not idx:
                continue
            per, total = loc.c.ops.norms(
                [loc.c.arrays[i] for i in idx], 2.0, True, _NAME, [positions[i] for i in idx]
            )
            for i, n in zip(idx, per):
                norms[i] = float(n)
            if role == COUNT:
                counted = float(total)
            elif role == REPLICA:
                rep = float(total)
        n_rep = loc.roles.count(REPLICA)
        loc.check_writeable(_NAME)
    except Exception as exc:
        error = exc
    total = _gather(ch, call, counted, rep, n_rep, error)
    assert loc is not None
    factor = clip.scale_for(total) if loc.c.arrays else 1.0
    if factor != 1.0:
        loc.c.ops.scale_(loc.c.arrays, factor, _NAME, loc.c.positions)
    clip.last_stats = ClipStats(
        tuple(positions),
        tuple(norms),
        _applied([factor] * len(loc.c.arrays), loc.c.arrays),
        (factor != 1.0,) * len(loc.c.arrays),
        total,
    )
    return out


def _split_pairs(params_grads: Any, ch: _Channel) -> tuple[list[tuple[Any, Any]], Local]:
    """Paddle's pair filtering (``None`` grads dropped, ``need_clip=False`` passed through), then
    the clipped grads as :func:`local_buffers` with each param's ``replicated`` flag."""
    from .clip import _NAME

    if isinstance(params_grads, (str, bytes)) or not isinstance(params_grads, Iterable):
        raise TypeError(f"params_grads must be an iterable of (param, grad) pairs, not {type(params_grads).__name__}")
    out: list[tuple[Any, Any]] = []
    items: list[Any] = []
    flags: list[bool] = []
    for i, pair in enumerate(params_grads):
        try:
            p, g = pair
        except (TypeError, ValueError):
            raise TypeError(f"params_grads[{i}] must be a (param, grad) pair, not {type(pair).__name__}") from None
        if g is not None:
            out.append((p, g))
        if g is None or getattr(p, "need_clip", True) is False:
            items.append(_Slot(None))
            flags.append(False)
            continue
        items.append(_Slot(g))
        flags.append(getattr(p, "replicated", False) is True)
    return out, local_buffers(items, flags, ch, _NAME)


def single_process_items(grads: Any, replicated: Any) -> list[Any]:
    """``group=None`` with ``replicated=`` given: check the flags (one process holds one copy of
    everything, so they change nothing) and return the items, read once."""
    items = _items(grads, "grads")
    replicated_flags(replicated, len(items))
    return items
