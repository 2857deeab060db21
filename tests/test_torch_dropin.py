"""torch drop-in details of the functional API: ``foreach=``, the result's ``.item()``, and the
exhausted-generator warning (checked against torch's own where torch is installed)."""

from __future__ import annotations

import warnings

import fastclip as fc
import numpy as np
import pytest


def _grads():
    rng = np.random.default_rng(5)
    return [rng.standard_normal(7), rng.standard_normal((3, 4)).astype(np.float32)]


@pytest.mark.parametrize("foreach", [None, True, False])
def test_foreach_is_accepted_everywhere_and_changes_nothing(foreach):
    a, b = _grads(), _grads()
    assert fc.get_total_norm(a, 2.0, False, foreach) == fc.get_total_norm(b)
    assert fc.clip_grad_norm_(a, 1.0, 2.0, False, foreach) == fc.clip_grad_norm_(b, 1.0)
    fc.clip_grads_with_norm_(a, 0.5, 3.0, foreach=foreach)
    fc.clip_grads_with_norm_(b, 0.5, 3.0)
    fc.clip_grad_value_(a, 0.01, foreach=foreach)
    fc.clip_grad_value_(b, 0.01)
    for x, y in zip(a, b):
        assert x.tobytes() == y.tobytes()


@pytest.mark.parametrize("bad", ["yes", 1, 0.0, np.bool_(True)])
def test_a_bad_foreach_is_refused_before_anything_changes(bad):
    g = _grads()
    before = [x.tobytes() for x in g]
    for call in (
        lambda: fc.get_total_norm(g, foreach=bad),
        lambda: fc.clip_grad_norm_(g, 1e-3, foreach=bad),
        lambda: fc.clip_grads_with_norm_(g, 1e-3, 10.0, foreach=bad),
        lambda: fc.clip_grad_value_(g, 1e-3, foreach=bad),
    ):
        with pytest.raises(TypeError, match="foreach"):
            call()
    assert [x.tobytes() for x in g] == before


def test_the_result_supports_what_torch_callers_do():
    g = [np.array([3.0, 4.0])]
    n = fc.clip_grad_norm_(g, 1.0)
    assert isinstance(n, float) and isinstance(n.item(), float) and type(n.item()) is float
    assert n.item() == 5.0 and float(n) == 5.0 and n > 4.0 and f"{n:.1f}" == "5.0" and repr(n) == "5.0"
    t = fc.get_total_norm(g)
    assert t.item() == pytest.approx(1.0, rel=1e-6)
    assert fc.get_total_norm([]).item() == 0.0


def test_an_exhausted_generator_warns_as_torch_does():
    params = (p for p in [fc.Parameter(np.ones(3))])
    list(params)  # read once already, as `model.parameters()` passed twice would be
    with pytest.warns(UserWarning, match="empty generator, no gradient clipping will occur"):
        assert fc.clip_grad_norm_(params, 1.0) == 0.0
    with pytest.warns(UserWarning, match="empty generator"):
        fc.clip_grad_value_((x for x in []), 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = np.array([3.0, 4.0])
        assert fc.clip_grad_norm_((x for x in [g]), 1.0) == 5.0  # a non-empty generator: no warning
        fc.clip_grad_norm_([], 1.0)  # an empty list is not a generator: no warning (as torch)


def test_the_warning_is_torchs_own():
    torch = pytest.importorskip("torch")
    with pytest.warns(UserWarning) as ours:
        fc.clip_grad_norm_((x for x in []), 1.0)
    with pytest.warns(UserWarning) as theirs:
        torch.nn.utils.clip_grad_norm_((x for x in []), 1.0)
    assert str(ours[0].message) == str(theirs[0].message)
