"""Unit tests for train.optim (torch parity lives in parity_tests/test_optimizers_parity.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from train.optim import OPTIMIZERS, create_optimizer, get_learning_rate, set_learning_rate


def test_registry_names():
    assert isinstance(OPTIMIZERS, dict)
    assert sorted(OPTIMIZERS) == ["adam", "adamw", "sgd"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(name="rmsprop"), "name"),
        (dict(name="SGD"), "name"),
        (dict(learning_rate=-0.1), "learning_rate"),
        (dict(learning_rate=float("nan")), "learning_rate"),
        (dict(learning_rate="0.1"), "learning_rate"),
        (dict(momentum=-0.9), "momentum"),
        (dict(weight_decay=-1e-4), "weight_decay"),
        (dict(nesterov=True, momentum=0.0), "momentum"),
        (dict(nesterov=1), "nesterov"),
        (dict(name="adam", nesterov=True), "nesterov"),
        (dict(accum_steps=0), "accum_steps"),
        (dict(accum_steps=2.0), "accum_steps"),
        (dict(accum_steps=True), "accum_steps"),
        (dict(name="adam", b1=1.0), "b1"),
        (dict(name="adam", b2=-0.1), "b2"),
        (dict(name="adam", eps=-1e-8), "eps"),
    ],
)
def test_argument_validation(kwargs, match):
    kwargs = {"name": "sgd", "learning_rate": 0.1, **kwargs}
    with pytest.raises(ValueError, match=match):
        create_optimizer(**kwargs)


@pytest.mark.parametrize("accum_steps", [1, 3])
@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_learning_rate_lives_in_state_without_retracing(name, accum_steps):
    tx = create_optimizer(name, learning_rate=0.1, accum_steps=accum_steps)
    params = {"w": jnp.ones((2, 3))}
    state = tx.init(params)
    lr = get_learning_rate(state)
    assert lr.shape == () and lr.dtype == jnp.float32
    np.testing.assert_allclose(lr, 0.1, rtol=1e-7)

    traces = []

    @jax.jit
    def step(p, s):
        traces.append(None)
        updates, s = tx.update(jax.tree.map(jnp.ones_like, p), s, p)
        return optax.apply_updates(p, updates), s

    for lr in [0.1, 0.01, 1e-5, 0.0]:
        state = set_learning_rate(state, lr)
        np.testing.assert_allclose(get_learning_rate(state), lr, rtol=1e-7)
        params, state = step(params, state)
        np.testing.assert_allclose(get_learning_rate(state), lr, rtol=1e-7)
    assert len(traces) == 1  # the LR changes are state, not constants: one compilation


def test_set_learning_rate_is_pure_and_keeps_structure():
    tx = create_optimizer("adam", learning_rate=1e-3, accum_steps=2)
    state = tx.init({"w": jnp.zeros(4)})
    new = set_learning_rate(state, 5e-4)
    assert float(get_learning_rate(state)) == pytest.approx(1e-3)  # old state untouched
    assert float(get_learning_rate(new)) == pytest.approx(5e-4)
    assert jax.tree.structure(new) == jax.tree.structure(state)
    assert jax.tree.map(lambda x: (x.shape, x.dtype), new) == jax.tree.map(
        lambda x: (x.shape, x.dtype), state
    )
    # accepts array values too, cast to the state's dtype
    assert get_learning_rate(set_learning_rate(state, jnp.asarray(0.5, jnp.bfloat16))).dtype == (
        jnp.float32
    )


def test_set_learning_rate_changes_the_step():
    tx = create_optimizer("sgd", learning_rate=0.1, momentum=0.0)
    params = jnp.array([1.0, -2.0])
    state = set_learning_rate(tx.init(params), 0.25)
    updates, _ = tx.update(jnp.array([2.0, 4.0]), state, params)
    np.testing.assert_allclose(updates, [-0.5, -1.0], rtol=1e-7)


def test_foreign_state_raises():
    state = optax.sgd(0.1).init(jnp.zeros(2))
    with pytest.raises(ValueError, match="learning_rate"):
        get_learning_rate(state)
    with pytest.raises(ValueError, match="learning_rate"):
        set_learning_rate(state, 0.1)


def test_accumulation_emits_every_n_calls():
    tx = create_optimizer("sgd", learning_rate=1.0, momentum=0.0, accum_steps=3)
    params = jnp.zeros(2)
    state = tx.init(params)
    outs = []
    for g in ([1.0, 0.0], [2.0, 3.0], [3.0, 6.0], [1.0, 1.0]):
        u, state = tx.update(jnp.asarray(g), state, params)
        outs.append(np.asarray(u))
    np.testing.assert_allclose(outs[0], [0.0, 0.0])
    np.testing.assert_allclose(outs[1], [0.0, 0.0])
    np.testing.assert_allclose(outs[2], [-2.0, -3.0], rtol=1e-6)  # -lr * mean
    np.testing.assert_allclose(outs[3], [0.0, 0.0])


def test_adamw_differs_from_adam_with_l2():
    params = jnp.array([1.0, -1.0])
    grads = jnp.array([0.1, 0.1])
    out = {}
    for name in ("adam", "adamw"):
        tx = create_optimizer(name, learning_rate=0.1, weight_decay=0.5)
        out[name] = np.asarray(tx.update(grads, tx.init(params), params)[0])
    # adam (L2): g + wd*p = [0.6, -0.4] -> normalised step -lr*sign = [-0.1, 0.1]
    np.testing.assert_allclose(out["adam"], [-0.1, 0.1], rtol=0, atol=2e-6)
    # adamw: -lr * (sign(g) + wd * p) = [-0.15, -0.05]
    np.testing.assert_allclose(out["adamw"], [-0.15, -0.05], rtol=0, atol=2e-6)


@pytest.mark.parametrize("accum_steps", [1, 2])
def test_works_with_nnx_optimizer(accum_steps):
    model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(
        model,
        create_optimizer("sgd", learning_rate=0.1, momentum=0.0, accum_steps=accum_steps),
        wrt=nnx.Param,
    )
    assert set_learning_rate(opt.opt_state, 0.5) is opt.opt_state  # nnx Variables: set in place
    np.testing.assert_allclose(get_learning_rate(opt.opt_state), 0.5)
    kernel = np.asarray(model.kernel[...])
    grads = jax.tree.map(jnp.ones_like, nnx.state(model, nnx.Param))
    for _ in range(accum_steps):
        opt.update(model, grads)
    np.testing.assert_allclose(kernel - np.asarray(model.kernel[...]), 0.5, rtol=1e-6)


def test_torch_adam_bias_correction_is_within_3e_7_of_double_precision():
    import math

    import jax.numpy as jnp

    from train.adam import bias_correction

    worst = 0.0
    for decay in (0.5, 0.9, 0.99, 0.999, 0.9999):
        for count in (*range(1, 200), 1000, 10**4, 10**5, 10**6):
            got = float(bias_correction(decay, jnp.int32(count)))
            exact = -math.expm1(count * math.log(decay))
            worst = max(worst, abs(got - exact) / exact)
    assert worst <= 3e-7, worst  # measured 2.9e-7 (decay 0.99, count 2: 2.0e-7)
    # optax's float32 formula at the first step is 1.3e-5 off
    optax_first = float(1 - jnp.float32(0.999) ** 1)
    assert abs(optax_first - 1e-3) / 1e-3 > 1e-5
