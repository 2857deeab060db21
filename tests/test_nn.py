"""fastclip.nn and fastclip.initializer: gradients against float64 central differences, Paddle's layout and defaults."""

from __future__ import annotations

import math

import fastclip
import numpy as np
import pytest
from fastclip import clip, initializer, nn
from fastclip.initializer import Assign, Constant, Normal, Uniform, XavierUniform, compute_fans
from fastclip.param import ParamAttr, Parameter

# ---------------------------------------------------------------------------------------------
# An independent float64 model of the math, and central differences over it
# ---------------------------------------------------------------------------------------------


def reference_loss(params: list[np.ndarray], x: np.ndarray, label: np.ndarray, reduction: str, weights=None) -> float:
    """float64: chain of ``h = h @ W + b`` over (W, b) pairs (b may be None), then the MSE."""
    h = x.astype(np.float64)
    for w, b in params:
        h = h @ w
        if b is not None:
            h = h + b
    sq = (h - label) ** 2
    if reduction == "mean":
        return float(sq.mean())
    if reduction == "sum":
        return float(sq.sum())
    return float((sq * weights).sum())


def central_differences(f, arrays: list[np.ndarray], h: float = 1e-6) -> list[np.ndarray]:
    """d f / d a for every element of every array in ``arrays`` (float64, modified and restored in place)."""
    grads = []
    for a in arrays:
        g = np.zeros_like(a)
        for i in np.ndindex(a.shape):
            old = a[i]
            a[i] = old + h
            up = f()
            a[i] = old - h
            down = f()
            a[i] = old
            g[i] = (up - down) / (2 * h)
        grads.append(g)
    return grads


def assign_attr(rng: np.random.Generator, shape: tuple[int, ...], scale: float = 0.5, **kw) -> ParamAttr:
    return ParamAttr(initializer=Assign(rng.standard_normal(shape) * scale), **kw)


class Chain(nn.Layer):
    """A small composite layer: three Linear layers, the middle one without a bias."""

    def __init__(self, rng: np.random.Generator, sizes=(3, 5, 4, 2)) -> None:
        super().__init__()
        a, b, c, d = sizes
        self.first = nn.Linear(a, b, weight_attr=assign_attr(rng, (a, b)), bias_attr=assign_attr(rng, (b,)))
        self.middle = nn.Linear(b, c, weight_attr=assign_attr(rng, (b, c)), bias_attr=False)
        self.last = nn.Linear(c, d, weight_attr=assign_attr(rng, (c, d)), bias_attr=assign_attr(rng, (d,)))

    def forward(self, x):
        return self.last(self.middle(self.first(x)))


def float64_copy(model: Chain) -> list[tuple[np.ndarray, np.ndarray | None]]:
    layers = [model.first, model.middle, model.last]
    return [
        (lin.weight.value.astype(np.float64), None if lin.bias is None else lin.bias.value.astype(np.float64))
        for lin in layers
    ]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_chain_gradients_match_central_differences(reduction: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    model = Chain(rng)
    x = rng.standard_normal((7, 3)).astype(np.float32)
    label = rng.standard_normal((7, 2)).astype(np.float32)
    upstream = rng.standard_normal((7, 2)) if reduction == "none" else None

    loss_fn = nn.MSELoss(reduction=reduction)
    loss = loss_fn(model(x), label)
    grad_x = model.backward(loss_fn.backward(1.0 if upstream is None else upstream))

    params = float64_copy(model)
    x64 = x.astype(np.float64)
    label64 = label.astype(np.float64)
    ref = reference_loss(params, x64, label64, reduction, upstream)
    if reduction != "none":
        assert loss.dtype == np.float32 and loss.shape == ()
        assert float(loss) == pytest.approx(ref, rel=1e-5)
    else:
        assert loss.shape == (7, 2)
        assert float((loss.astype(np.float64) * upstream).sum()) == pytest.approx(ref, rel=1e-5)

    arrays = [a for pair in params for a in pair if a is not None] + [x64]
    numeric = central_differences(lambda: reference_loss(params, x64, label64, reduction, upstream), arrays)
    analytic = [p.grad for p in model.parameters()] + [grad_x]
    assert [a.shape for a in analytic] == [n.shape for n in numeric]
    for a, n in zip(analytic, numeric):
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, n, rtol=2e-4, atol=2e-4 * float(np.abs(n).max()))


def test_linear_gradients_with_leading_dimensions() -> None:
    rng = np.random.default_rng(3)
    lin = nn.Linear(4, 3, weight_attr=assign_attr(rng, (4, 3)), bias_attr=assign_attr(rng, (3,)))
    x = rng.standard_normal((2, 5, 4)).astype(np.float32)
    upstream = rng.standard_normal((2, 5, 3))
    y = lin(x)
    assert y.shape == (2, 5, 3) and y.dtype == np.float32
    grad_x = lin.backward(upstream)

    w = lin.weight.value.astype(np.float64)
    b = lin.bias.value.astype(np.float64)
    x64 = x.astype(np.float64)

    def f() -> float:
        return float(((x64 @ w + b) * upstream).sum())

    for analytic, numeric in zip([lin.weight.grad, lin.bias.grad, grad_x], central_differences(f, [w, b, x64])):
        np.testing.assert_allclose(analytic, numeric, rtol=1e-4, atol=1e-4 * float(np.abs(numeric).max()))


def test_forward_values_are_float32_x_at_w_plus_b() -> None:
    w = np.array([[1.0, -2.0, 0.5]])
    b = np.array([0.25, 0.0, -1.0])
    lin = nn.Linear(1, 3, weight_attr=ParamAttr(initializer=Assign(w)), bias_attr=ParamAttr(initializer=Assign(b)))
    assert lin.weight.value.shape == (1, 3)  # Paddle's [in, out]
    out = lin(np.array([[2.0], [-1.0]]))  # float64 input is converted
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.array([[2.25, -4.0, 0.0], [-0.75, 2.0, -1.5]], np.float32))


def test_mse_loss_values_and_backward() -> None:
    x = np.array([[1.0], [2.0], [4.0]], np.float32)
    t = np.array([[0.0], [0.0], [1.0]], np.float32)
    assert float(nn.MSELoss()(x, t)) == pytest.approx((1 + 4 + 9) / 3)
    assert float(nn.MSELoss("sum")(x, t)) == pytest.approx(14.0)
    none = nn.MSELoss("none")
    np.testing.assert_array_equal(none(x, t), np.array([[1.0], [4.0], [9.0]], np.float32))
    np.testing.assert_array_equal(none.backward(), np.array([[2.0], [4.0], [6.0]], np.float32))
    mean = nn.MSELoss()
    mean(x, t)
    np.testing.assert_allclose(mean.backward(0.5), np.array([[1.0], [2.0], [3.0]]) / 3, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Gradient bookkeeping
# ---------------------------------------------------------------------------------------------


def test_gradients_accumulate_until_cleared_in_place() -> None:
    rng = np.random.default_rng(4)
    model = Chain(rng)
    x = rng.standard_normal((5, 3)).astype(np.float32)
    label = rng.standard_normal((5, 2)).astype(np.float32)
    loss_fn = nn.MSELoss()
    loss_fn(model(x), label)
    model.backward(loss_fn.backward())
    first = [p.grad.copy() for p in model.parameters()]
    held = [p.grad for p in model.parameters()]
    loss_fn(model(x), label)
    model.backward(loss_fn.backward())
    for p, g, h in zip(model.parameters(), first, held):
        assert p.grad is h  # accumulated in place: references (e.g. a clip's) stay valid
        np.testing.assert_allclose(p.grad, 2 * g, rtol=1e-6)


def test_non_trainable_parameter_gets_no_grad_but_gradient_flows() -> None:
    rng = np.random.default_rng(5)
    frozen = nn.Linear(2, 2, weight_attr=assign_attr(rng, (2, 2), trainable=False))
    head = nn.Linear(2, 1, weight_attr=assign_attr(rng, (2, 1)))
    seq = _Seq(frozen, head)
    loss_fn = nn.MSELoss()
    loss_fn(seq(np.ones((3, 2), np.float32)), np.zeros((3, 1), np.float32))
    grad_x = seq.backward(loss_fn.backward())
    assert frozen.weight.grad is None and frozen.bias.grad is not None
    assert head.weight.grad is not None
    assert grad_x.shape == (3, 2) and np.any(grad_x != 0)


class _Seq(nn.Layer):
    def __init__(self, *layers: nn.Layer) -> None:
        super().__init__()
        for k, layer in enumerate(layers):
            setattr(self, f"l{k}", layer)

    def forward(self, x):
        for layer in self.sublayers():
            x = layer(x)
        return x


def test_backward_follows_call_order_not_registration_order() -> None:
    rng = np.random.default_rng(6)

    class Reversed(nn.Layer):
        def __init__(self) -> None:
            super().__init__()
            self.second = nn.Linear(3, 1, weight_attr=assign_attr(rng, (3, 1)))
            self.first = nn.Linear(2, 3, weight_attr=assign_attr(rng, (2, 3)))

        def forward(self, x):
            return self.second(self.first(x))

    model = Reversed()
    x = rng.standard_normal((4, 2)).astype(np.float32)
    out = model(x)
    model.backward(np.ones_like(out))
    w1, w2 = model.first.weight.value.astype(np.float64), model.second.weight.value.astype(np.float64)
    np.testing.assert_allclose(model.first.weight.grad, x.T.astype(np.float64) @ np.ones((4, 1)) @ w2.T, rtol=1e-5)
    np.testing.assert_allclose(model.second.weight.grad, (x @ w1).T @ np.ones((4, 1)), rtol=1e-5)


def test_backward_errors() -> None:
    rng = np.random.default_rng(7)
    with pytest.raises(RuntimeError, match="forward"):
        Chain(rng).backward(np.ones((1, 2)))
    with pytest.raises(RuntimeError, match="forward"):
        nn.Linear(2, 2).backward(np.ones((1, 2)))
    with pytest.raises(RuntimeError, match="forward"):
        nn.MSELoss().backward()

    class Twice(nn.Layer):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(2, 2)

        def forward(self, x):
            return self.lin(self.lin(x))

    twice = Twice()
    twice(np.ones((1, 2)))
    with pytest.raises(RuntimeError, match="twice"):
        twice.backward(np.ones((1, 2)))

    class OwnMath(nn.Layer):
        def forward(self, x):
            return 2 * x

    own = OwnMath()
    own(np.ones(2))
    with pytest.raises(NotImplementedError):
        own.backward(np.ones(2))

    lin = nn.Linear(2, 3)
    lin(np.ones((4, 2)))
    with pytest.raises(ValueError, match="shape"):
        lin.backward(np.ones((4, 2)))


def test_failed_forward_leaves_no_stale_record() -> None:
    model = Chain(np.random.default_rng(8))
    with pytest.raises(ValueError, match="Linear expects input"):
        model(np.ones((2, 4)))
    with pytest.raises(RuntimeError, match="forward"):
        model.backward(np.ones((2, 2)))


# ---------------------------------------------------------------------------------------------
# Parameters, attributes, defaults
# ---------------------------------------------------------------------------------------------


def test_parameters_in_registration_order_own_first_then_sublayers() -> None:
    class Outer(nn.Layer):
        def __init__(self) -> None:
            super().__init__()
            self.inner = nn.Linear(2, 3)
            self.scale = Parameter(np.ones(1, np.float32), name="scale")
            self.head = nn.Linear(3, 1, bias_attr=False)
            self.shared = self.inner  # registered twice, listed once

    outer = Outer()
    names = [n for n, _ in outer.named_parameters()]
    assert names == ["scale", "inner.weight", "inner.bias", "head.weight"]
    assert [p.shape for p in outer.parameters()] == [(1,), (2, 3), (3,), (3, 1)]
    assert outer.sublayers() == [outer.inner, outer.head]

    outer.head = nn.Linear(3, 2)  # reassigning replaces the registration
    assert [n for n, _ in outer.named_parameters()][-2:] == ["head.weight", "head.bias"]


def test_need_clip_trainable_name_and_learning_rate_come_from_param_attr() -> None:
    lin = nn.Linear(
        2,
        3,
        weight_attr=ParamAttr(name="w1", need_clip=False, learning_rate=0.5),
        bias_attr=ParamAttr(trainable=False),
    )
    assert lin.weight.name == "w1" and lin.weight.need_clip is False and lin.weight.learning_rate == 0.5
    assert lin.bias.need_clip is True and lin.bias.trainable is False
    assert lin.bias.name.startswith(lin.full_name() + ".b_")
    default = nn.Linear(2, 3)
    assert default.weight.name == f"{default.full_name()}.w_0"
    assert default.weight.need_clip and default.bias.need_clip


def test_attr_shorthands_like_paddle() -> None:
    assert nn.Linear(2, 2, bias_attr=False).bias is None
    assert [p.shape for p in nn.Linear(2, 5, bias_attr=False).parameters()] == [(2, 5)]
    named = nn.Linear(2, 2, weight_attr="my_w")
    assert named.weight.name == "my_w"
    by_init = nn.Linear(1, 2, weight_attr=Constant(3.0))
    np.testing.assert_array_equal(by_init.weight.value, np.full((1, 2), 3.0, np.float32))
    with pytest.raises(ValueError, match="weight"):
        nn.Linear(2, 2, weight_attr=False)
    with pytest.raises(TypeError):
        nn.Linear(2, 2, bias_attr=3)


def test_default_init_is_xavier_uniform_weight_and_zero_bias() -> None:
    initializer.seed(123)
    lin = nn.Linear(200, 300)
    w = lin.weight.value
    assert w.dtype == np.float32 and w.shape == (200, 300)
    limit = math.sqrt(6.0 / (200 + 300))
    assert float(np.abs(w).max()) <= limit
    # U[-a, a] has standard deviation a / sqrt(3); 60000 samples pin it to well under 1%.
    assert float(w.std()) == pytest.approx(limit / math.sqrt(3), rel=0.01)
    assert abs(float(w.mean())) < 0.01 * limit
    np.testing.assert_array_equal(lin.bias.value, np.zeros(300, np.float32))


def test_bad_sizes_and_inputs() -> None:
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError):
            nn.Linear(bad, 2)
    with pytest.raises(ValueError, match="expects input"):
        nn.Linear(3, 2)(np.ones((2, 2)))
    with pytest.raises(ValueError, match="reduction"):
        nn.MSELoss("avg")
    with pytest.raises(ValueError, match="same shape"):
        nn.MSELoss()(np.ones((16, 1)), np.ones(16))
    loss = nn.MSELoss()
    loss(np.ones(3), np.zeros(3))
    with pytest.raises(ValueError, match="scalar"):
        loss.backward(np.ones(3))
    none = nn.MSELoss("none")
    none(np.ones(3), np.zeros(3))
    with pytest.raises(ValueError, match="does not fit"):
        none.backward(np.ones((2, 3)))


def test_layer_needs_super_init() -> None:
    class Broken(nn.Layer):
        def __init__(self) -> None:
            self.lin = nn.Linear(1, 1)

    with pytest.raises(RuntimeError, match="super"):
        Broken()


def test_clip_classes_reexported_under_nn() -> None:
    assert nn.ClipGradByValue is clip.ClipGradByValue is fastclip.ClipGradByValue
    assert nn.ClipGradByNorm is clip.ClipGradByNorm
    assert nn.ClipGradByGlobalNorm is clip.ClipGradByGlobalNorm
    assert nn.initializer is initializer


# ---------------------------------------------------------------------------------------------
# Initializers
# ---------------------------------------------------------------------------------------------


def test_assign_copies_casts_and_checks_shape() -> None:
    src = np.array([[1.5, -2.0]], np.float64)
    init = Assign(src)
    out = init((1, 2), np.float32)
    assert out.dtype == np.float32 and not np.shares_memory(out, src)
    src[0, 0] = 99.0  # later changes to the source do not leak in
    np.testing.assert_array_equal(init((1, 2), np.float32), np.array([[1.5, -2.0]], np.float32))
    assert init((1, 2), np.float32) is not init((1, 2), np.float32)
    with pytest.raises(ValueError, match="shape"):
        init((2, 1), np.float32)
    with pytest.raises(TypeError):
        Assign(["a", "b"])


def test_constant_normal_uniform() -> None:
    np.testing.assert_array_equal(Constant(2.5)((2, 2), "float32"), np.full((2, 2), 2.5, np.float32))
    with pytest.raises(TypeError):
        Constant("1")

    a = Normal(1.0, 2.0, rng=0)((100_000,), np.float32)
    assert a.dtype == np.float32
    # standard errors: 2/sqrt(1e5) = 0.0063 for the mean; about 0.0045 for the std
    assert float(a.mean()) == pytest.approx(1.0, abs=0.03)
    assert float(a.std()) == pytest.approx(2.0, abs=0.03)
    np.testing.assert_array_equal(Normal(rng=7)((5,)), Normal(rng=7)((5,)))
    with pytest.raises(ValueError):
        Normal(0.0, -1.0)
    with pytest.raises(ValueError):
        Normal(math.nan)

    u = Uniform(-0.5, 0.25, rng=1)((10_000,))
    assert float(u.min()) >= -0.5 and float(u.max()) < 0.25
    with pytest.raises(ValueError):
        Uniform(1.0, 0.0)
    with pytest.raises(TypeError):
        Normal(rng="seed")


def test_module_seed_makes_default_draws_reproducible() -> None:
    initializer.seed(42)
    first = nn.Linear(3, 4).weight.value.copy()
    initializer.seed(42)
    np.testing.assert_array_equal(nn.Linear(3, 4).weight.value, first)


def test_xavier_uniform_fans_and_gain() -> None:
    assert compute_fans(()) == (1, 1)
    assert compute_fans((7,)) == (7, 7)
    assert compute_fans((3, 5)) == (3, 5)
    assert compute_fans((8, 4, 3, 3)) == (36, 72)  # conv [out_c, in_c, kh, kw]
    w = XavierUniform(gain=2.0, rng=0)((10, 6))
    assert float(np.abs(w).max()) <= 2.0 * math.sqrt(6.0 / 16)
    w = XavierUniform(fan_in=1.0, fan_out=1.0, rng=0)((50, 50))
    assert float(np.abs(w).max()) > 1.5  # limit sqrt(3) from the given fans, not from the shape
    with pytest.raises(ValueError):
        XavierUniform(fan_in=0.0, fan_out=0.0)((2, 2))
    with pytest.raises(ValueError):
        XavierUniform()((2, -1))


@pytest.mark.parametrize("module", [nn, initializer], ids=lambda m: m.__name__)
def test_docstring_examples_run(module) -> None:
    import doctest

    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
