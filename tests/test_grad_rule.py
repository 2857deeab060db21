"""The two meanings of ``.grad`` (fastclip._buffers module doc), row by row, in every public entry
point, with NumPy arrays, fastclip.Parameter and small fakes that have torch's and Paddle's
attribute shapes (no framework needed: these run in ``make test``).

1. an item whose ``.grad`` is not None contributes its ``.grad``;
2. an item whose ``.grad`` is None contributes nothing if it is a parameter or requires grad;
3. only a plain array or tensor is itself the buffer.

References are independent of fastclip: ``refs.ref_norm`` (float64, fsum), ``torch_coef``,
``scaled_ref`` and ``clamp_ref``. Every weight an item does not contribute must be bit-identical
after the call. The torch and Paddle rows, against their own functions, are in
``test_dlpack.py`` / ``test_torch_grad_rule.py`` and ``test_paddle_interop.py``.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from typing import Any

import fastclip as fc
import numpy as np
import pytest
from refs import DLPackProducer, Param, clamp_ref, ref_norm, same_bits, scaled_ref, torch_coef

MAX_NORM = 0.5
CLIP_VALUE = 0.3
GIVEN_TOTAL = 7.0  # clip_grads_with_norm_'s precomputed total


class TensorLike(DLPackProducer):
    """A DLPack producer with torch's attributes: ``.grad`` (None unless given) and ``requires_grad``."""

    def __init__(self, arr: np.ndarray, grad: Any = None, requires_grad: bool = False) -> None:
        super().__init__(arr)
        self.grad = grad
        self.requires_grad = requires_grad


class PaddleLike(DLPackProducer):
    """A DLPack producer with Paddle's attributes: ``.grad`` and ``stop_gradient`` (True by default)."""

    def __init__(self, arr: np.ndarray, grad: Any = None, stop_gradient: bool = True) -> None:
        super().__init__(arr)
        self.grad = grad
        self.stop_gradient = stop_gradient


class Row:
    """One item, the arrays it holds, and which one (if any) the rule says it contributes."""

    def __init__(self, item: Any, weights: np.ndarray | None, grad: np.ndarray | None, contributes: str | None) -> None:
        self.item = item
        self.weights = weights
        self.grad = grad
        self.contributes = contributes  # "grad", "self" or None
        self.before = [None if a is None else a.copy() for a in (weights, grad)]

    @property
    def buffer(self) -> np.ndarray | None:
        return {"grad": self.grad, "self": self.weights, None: None}[self.contributes]

    def untouched(self) -> list[np.ndarray]:
        """(now, before) of every array this item holds but does not contribute."""
        out = []
        for a, b in zip((self.weights, self.grad), self.before):
            if a is not None and a is not self.buffer:
                out.append((a, b))
        return out


def _arrays(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    w = (rng.standard_normal(n) * 4.0).astype(np.float32)
    g = (rng.standard_normal(n) * 2.0).astype(np.float32)
    return w, g


def _fc_param(w: np.ndarray, g: np.ndarray | None, trainable: bool = True) -> fc.Parameter:
    p = fc.Parameter(w, trainable=trainable)
    p.grad = g
    return p


#: id -> (rng, n) -> Row. Every row of the module-doc table that fakes can express.
ROWS: dict[str, Callable[[np.random.Generator, int], Row]] = {
    "ndarray": lambda r, n: (lambda w: Row(w, w, None, "self"))(_arrays(r, n)[0]),
    "fc.Parameter/no-grad": lambda r, n: (lambda w, g: Row(_fc_param(w, None), w, None, None))(*_arrays(r, n)),
    "fc.Parameter/grad": lambda r, n: (lambda w, g: Row(_fc_param(w, g), w, g, "grad"))(*_arrays(r, n)),
    "fc.Parameter/frozen-grad": lambda r, n: (lambda w, g: Row(_fc_param(w, g, False), w, g, "grad"))(
        *_arrays(r, n)
    ),
    "fc.Parameter/frozen-no-grad": lambda r, n: (lambda w, g: Row(_fc_param(w, None, False), w, None, None))(
        *_arrays(r, n)
    ),
    "grad-holder/none": lambda r, n: Row(Param(None), None, None, None),
    "grad-holder/grad": lambda r, n: (lambda w, g: Row(Param(g), None, g, "grad"))(*_arrays(r, n)),
    "producer": lambda r, n: (lambda w, g: Row(DLPackProducer(w), w, None, "self"))(*_arrays(r, n)),
    "torch-like/plain": lambda r, n: (lambda w, g: Row(TensorLike(w), w, None, "self"))(*_arrays(r, n)),
    "torch-like/frozen-with-grad": lambda r, n: (lambda w, g: Row(TensorLike(w, g), w, g, "grad"))(*_arrays(r, n)),
    "torch-like/requires-grad-no-grad": lambda r, n: (
        lambda w, g: Row(TensorLike(w, None, requires_grad=True), w, None, None)
    )(*_arrays(r, n)),
    "torch-like/requires-grad-grad": lambda r, n: (
        lambda w, g: Row(TensorLike(w, g, requires_grad=True), w, g, "grad")
    )(*_arrays(r, n)),
    "torch-like/grad-is-producer": lambda r, n: (
        lambda w, g: Row(TensorLike(w, DLPackProducer(g), requires_grad=True), w, g, "grad")
    )(*_arrays(r, n)),
    "paddle-like/plain": lambda r, n: (lambda w, g: Row(PaddleLike(w), w, None, "self"))(*_arrays(r, n)),
    "paddle-like/trainable-no-grad": lambda r, n: (
        lambda w, g: Row(PaddleLike(w, None, stop_gradient=False), w, None, None)
    )(*_arrays(r, n)),
    "paddle-like/trainable-grad": lambda r, n: (
        lambda w, g: Row(PaddleLike(w, g, stop_gradient=False), w, g, "grad")
    )(*_arrays(r, n)),
    "paddle-like/stop-gradient-with-grad": lambda r, n: (lambda w, g: Row(PaddleLike(w, g), w, g, "grad"))(
        *_arrays(r, n)
    ),
}

ENTRY_POINTS = ["get_total_norm", "clip_grad_norm_", "clip_grads_with_norm_", "clip_grad_value_"]


def _call(entry: str, items: Any) -> Any:
    if entry == "get_total_norm":
        return fc.get_total_norm(items)
    if entry == "clip_grad_norm_":
        return fc.clip_grad_norm_(items, MAX_NORM)
    if entry == "clip_grads_with_norm_":
        return fc.clip_grads_with_norm_(items, MAX_NORM, GIVEN_TOTAL)
    return fc.clip_grad_value_(items, CLIP_VALUE)


def _expect(entry: str, buffers: list[np.ndarray]) -> tuple[Any, list[np.ndarray]]:
    """The entry point's result and every contributed buffer's expected new value (float64 refs)."""
    total = ref_norm(buffers, 2.0)
    if entry == "get_total_norm":
        return total, [b.copy() for b in buffers]
    if entry == "clip_grad_norm_":
        return total, [scaled_ref(b, torch_coef(MAX_NORM, total)) for b in buffers]
    if entry == "clip_grads_with_norm_":
        return None, [scaled_ref(b, torch_coef(MAX_NORM, GIVEN_TOTAL)) for b in buffers]
    return None, [clamp_ref(b, CLIP_VALUE) for b in buffers]


def _check(entry: str, rows: list[Row], items: Any) -> None:
    buffers = [r.before[0 if r.contributes == "self" else 1] for r in rows if r.contributes]
    want_result, want = _expect(entry, buffers)
    got = _call(entry, items)
    if want_result is None:
        assert got is None
    else:
        assert got == pytest.approx(want_result, rel=1e-12)
    for r, w in zip([r for r in rows if r.contributes], want):
        np.testing.assert_allclose(r.buffer, w, rtol=1e-6, atol=0)
    for r in rows:
        for now, before in r.untouched():
            assert same_bits(now, before), "an array the item does not contribute was modified"


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("row", list(ROWS))
def test_each_row_alone_in_each_entry_point(row: str, entry: str) -> None:
    rng = np.random.default_rng(zlib.crc32(f"{row}/{entry}".encode()))
    # the item itself, and the item inside a list (a single item takes a different path in collect)
    r = ROWS[row](rng, 9)
    _check(entry, [r], r.item)
    r = ROWS[row](rng, 9)
    _check(entry, [r], [r.item])


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_all_rows_together_keep_positions(entry: str) -> None:
    rng = np.random.default_rng(7)
    rows = [make(rng, 5 + i) for i, make in enumerate(ROWS.values())]
    _check(entry, rows, (r.item for r in rows))  # a generator, read once


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_error_positions_count_items_that_contribute_nothing(entry: str) -> None:
    # the caller's position of the bad buffer, though earlier items contribute nothing
    w = np.ones(3, np.float32)
    bad = np.arange(3)  # int64: refused
    items = [
        _fc_param(w.copy(), None),
        TensorLike(w.copy(), None, requires_grad=True),
        PaddleLike(w.copy(), None, stop_gradient=False),
        TensorLike(np.full(3, 9.0, np.float32), bad),
    ]
    with pytest.raises(TypeError, match=r"grads\[3\] has dtype int64"):
        _call(entry, items)


def test_a_grad_that_is_not_a_buffer_is_refused_with_the_position() -> None:
    for item in (TensorLike(np.ones(2), [1.0, 2.0]), PaddleLike(np.ones(2), "g"), Param(3.0)):
        with pytest.raises(TypeError, match=r"grads\[1\] must be a numpy.ndarray, a DLPack tensor or have a .grad"):
            fc.get_total_norm([np.ones(1), item])


def test_flags_that_are_not_bools_mean_nothing() -> None:
    # rule 2 needs requires_grad literally True / stop_gradient literally False
    class Odd(DLPackProducer):
        grad = None
        requires_grad = "yes"
        stop_gradient = 0

    a = np.array([3.0, 4.0])
    assert fc.get_total_norm([Odd(a)]) == 5.0


# ---------------------------------------------------------------------------------------------
# The clip classes on (param, grad) pairs: a pair's grad is always the buffer, its param never.


def _pairs_rows(rng: np.random.Generator) -> list[Row]:
    """(param, grad) pairs as a Paddle optimizer builds them, from every kind of param."""
    rows = []
    for make in ROWS.values():
        r = make(rng, 6)
        rows.append(r)
    return rows


CLASSES = {
    "ByValue": (lambda: fc.ClipGradByValue(CLIP_VALUE), lambda bs: [clamp_ref(b, CLIP_VALUE) for b in bs]),
    "ByValue-asym": (
        lambda: fc.ClipGradByValue(0.4, -0.1),
        lambda bs: [np.clip(b, np.float32(-0.1), np.float32(0.4)) for b in bs],
    ),
    "ByNorm": (
        lambda: fc.ClipGradByNorm(MAX_NORM),
        lambda bs: [b if ref_norm([b], 2) <= MAX_NORM else scaled_ref(b, MAX_NORM / ref_norm([b], 2)) for b in bs],
    ),
    "ByGlobalNorm": (
        lambda: fc.ClipGradByGlobalNorm(MAX_NORM),
        lambda bs: [scaled_ref(b, MAX_NORM / max(ref_norm(bs, 2), MAX_NORM)) for b in bs],
    ),
}


@pytest.mark.parametrize("cls", list(CLASSES))
def test_clip_classes_clip_the_pairs_grads_never_the_params(cls: str) -> None:
    rng = np.random.default_rng(11)
    rows = _pairs_rows(rng)
    pairs = []
    grads = []
    for r in rows:
        if r.grad is not None:
            g = r.item.grad if not isinstance(r.item, np.ndarray) else r.grad
            pairs.append((r.item, g))
            grads.append(r.grad)
        else:
            pairs.append((r.item, None))  # dropped, as in Paddle
    make, ref = CLASSES[cls]
    want = ref([g.copy() for g in grads])
    out = make()(pairs)
    assert [p for p, _ in out] == [p for p, g in pairs if g is not None]
    for g, w in zip(grads, want):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=0)
    for r in rows:
        if r.weights is not None:
            assert same_bits(r.weights, r.before[0]), "a param's weights were modified"


@pytest.mark.parametrize("p", [1.0, 2.0, math.inf])
def test_frozen_fastclip_parameters_in_a_model_keep_their_weights(p: float) -> None:
    # fine-tuning: frozen layers have no grad; model.parameters() still yields them
    rng = np.random.default_rng(3)
    frozen = [_fc_param(*_arrays(rng, 8)[:1], None, trainable=False) for _ in range(3)]
    live = [_fc_param(*_arrays(rng, 8)) for _ in range(2)]
    params = frozen[:2] + live + frozen[2:]
    weights = [q.value.copy() for q in params]
    grads = [q.grad.copy() for q in live]
    total = fc.clip_grad_norm_(params, 0.1, norm_type=p)
    assert total == pytest.approx(ref_norm(grads, p), rel=1e-12)
    fc.clip_grad_value_(params, 0.01)
    for q, w in zip(params, weights):
        assert same_bits(q.value, w)
    for q in frozen:
        assert q.grad is None
