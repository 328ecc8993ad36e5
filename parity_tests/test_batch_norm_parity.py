"""train.batch_norm.BatchNorm vs torch.nn.BatchNorm2d / BatchNorm1d, train and eval mode.

Each case starts both modules from the same random affine parameters, running statistics and
`num_batches_tracked`, runs K = 3 train-mode forwards on fresh random inputs and then one
eval-mode forward, and compares after every forward: the output, the gradients (a VJP with a
random cotangent) with respect to the input, `scale` (`weight`) and `bias`, and the running mean,
running variance (torch's unbiased update, no factor undone) and counter (exactly). Momenta 0.1,
0.3 and None (cumulative average). Each train input channel has a mean ~ N(0, 3) and a batch
standard deviation in [0.5, 2], so |x| / std stays below ~20: a channel whose spread is tiny
against its mean loses digits in `x - mean` in any float32 implementation, and the two sides
would then differ by that conditioning rather than by a mistake.

Tolerances, `|jax - torch| <= atol + rtol * |torch|` (worst measured over 80 cases of 4 forwards):
- float64: `rtol=1e-12, atol=1e-12` (values and gradients are O(1..10)). Both sides use the same
  two-pass formulas and differ only in summation order and in torch's `x * alpha + beta` vs
  `(x - mean) * alpha + bias`: measured 3e-14 absolute on gradients, 6e-15 on outputs, 9e-16 on
  the running statistics (under 1% of the tolerance).
- float32: `rtol=1e-5, atol=1e-5`, the same differences at float32 rounding: measured 1.3e-5
  absolute on `d weight` (values ~10), 3e-6 on `dx` and the outputs, 5e-7 on the running
  statistics (at most 35% of the tolerance).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from hypothesis import example, given, settings
from hypothesis import strategies as st

from train.batch_norm import BatchNorm

K = 3  # train-mode forwards per case
TOLERANCES = {np.float64: dict(rtol=1e-12, atol=1e-12), np.float32: dict(rtol=1e-5, atol=1e-5)}
MOMENTA = (0.1, 0.3, None)
CASES = settings(max_examples=max(1, settings().max_examples // 5))  # ~1 s each (compiles)


def _torch_dtype(dtype):
    return torch.float64 if dtype == np.float64 else torch.float32


@functools.partial(jax.jit, static_argnums=(0, 1))
def _jax_step(graphdef, train, params, stats, x, ct):
    """One forward: output, VJPs (x, scale, bias), running mean and variance, counter."""

    def f(params, x):
        m = nnx.merge(graphdef, params, stats, copy=True)
        return m(x, use_running_average=not train), nnx.state(m, nnx.BatchStat)

    y, vjp, new_stats = jax.vjp(f, params, x, has_aux=True)
    dparams, dx = vjp(ct)
    grads = (dx, dparams["scale"][...], dparams["bias"][...])
    running = (new_stats["mean"][...], new_stats["var"][...])
    return new_stats, (y, grads, running, new_stats["num_batches_tracked"][...])


def _jax_run(graphdef, params, stats, xs, cts):
    """K train-mode forwards then one eval forward (the last input)."""
    out = []
    for i, (x, ct) in enumerate(zip(xs, cts, strict=True)):
        stats, result = _jax_step(graphdef, i < len(xs) - 1, params, stats, x, ct)
        out.append(result)
    return out


def _torch_run(bn, xs, cts, dtype):
    out = []
    for i, (x, ct) in enumerate(zip(xs, cts, strict=True)):
        bn.train(i < len(xs) - 1)
        tx = torch.tensor(x, dtype=_torch_dtype(dtype), requires_grad=True)
        y = bn(tx)
        grads = torch.autograd.grad(y, (tx, bn.weight, bn.bias), torch.tensor(ct, dtype=y.dtype))
        stats = (bn.running_mean.clone(), bn.running_var.clone())
        out.append((y.detach(), grads, stats, int(bn.num_batches_tracked)))
    return out


@st.composite
def _cases(draw):
    """NHWC images (BatchNorm2d) or (N, C) features (BatchNorm1d): batch 2..6, channels 1..7,
    height and width 1..5, and a seed."""
    batch, channels = draw(st.integers(2, 6)), draw(st.integers(1, 7))
    images = draw(st.booleans())
    spatial = (draw(st.integers(1, 5)), draw(st.integers(1, 5))) if images else ()
    return (batch, *spatial, channels), draw(st.integers(0, 2**32 - 1))


def _compare(shape, seed, momentum, dtype):
    """Runs one case on both sides; asserts equality within TOLERANCES[dtype]."""
    rng = np.random.default_rng(seed)
    c = shape[-1]
    init = {
        "weight": rng.uniform(0.5, 1.5, c),
        "bias": rng.normal(0, 0.5, c),
        "running_mean": rng.normal(0, 0.5, c),
        "running_var": rng.uniform(0.5, 1.5, c),
    }
    tracked = int(rng.integers(0, 5))
    axes = tuple(range(len(shape) - 1))
    xs = []
    for _ in range(K):  # each channel: mean ~ N(0, 3), standard deviation in [0.5, 2]
        z = rng.normal(size=shape)
        z = (z - z.mean(axes)) / z.std(axes)
        xs.append((rng.normal(0, 3, c) + rng.uniform(0.5, 2, c) * z).astype(dtype))
    xs.append(rng.normal(size=shape).astype(dtype))  # the eval-mode input
    cts = [rng.normal(size=shape).astype(dtype) for _ in xs]

    tbn = (torch.nn.BatchNorm2d if len(shape) == 4 else torch.nn.BatchNorm1d)(
        c, momentum=momentum, dtype=_torch_dtype(dtype)
    )
    with torch.no_grad():
        for name, value in init.items():
            getattr(tbn, name).copy_(torch.from_numpy(value))
        tbn.num_batches_tracked.fill_(tracked)
    nchw = (0, 3, 1, 2) if len(shape) == 4 else (0, 1)
    nhwc = (0, 2, 3, 1) if len(shape) == 4 else (0, 1)
    want = _torch_run(tbn, [x.transpose(nchw) for x in xs], [t.transpose(nchw) for t in cts], dtype)

    with jax.enable_x64(dtype == np.float64):
        jdt = jnp.dtype(dtype)
        bn = BatchNorm(c, momentum=momentum, dtype=jdt, param_dtype=jdt, rngs=nnx.Rngs(0))
        for var, name in ((bn.scale, "weight"), (bn.bias, "bias"), (bn.mean, "running_mean")):
            var[...] = jnp.asarray(init[name], jdt)
        bn.var[...] = jnp.asarray(init["running_var"], jdt)
        bn.num_batches_tracked[...] = jnp.int32(tracked)
        graphdef, params, stats = nnx.split(bn, nnx.Param, nnx.BatchStat)
        got = jax.device_get(_jax_run(graphdef, params, stats, xs, cts))

    tol = TOLERANCES[dtype]
    for i, ((y, grads, running, count), (ty, tgrads, trunning, tcount)) in enumerate(
        zip(got, want, strict=True)
    ):
        where = f"forward {i + 1} ({'train' if i < K else 'eval'})"
        assert y.dtype == dtype and count.dtype == np.int32
        np.testing.assert_allclose(y, ty.numpy().transpose(nhwc), **tol, err_msg=f"y, {where}")
        for name, g, tg in zip(("x", "weight", "bias"), grads, tgrads, strict=True):
            tg = tg.numpy().transpose(nhwc) if name == "x" else tg.numpy()
            np.testing.assert_allclose(g, tg, **tol, err_msg=f"d{name}, {where}")
        for name, r, tr in zip(("running_mean", "running_var"), running, trunning, strict=True):
            assert r.dtype == dtype
            np.testing.assert_allclose(r, tr.numpy(), **tol, err_msg=f"{name}, {where}")
        assert count == tcount == tracked + min(i + 1, K), where


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@CASES
@given(case=_cases(), momentum=st.sampled_from(MOMENTA))
@example(case=((2, 1, 1, 3), 0), momentum=0.1)  # n = 2 values per channel, the fewest torch takes
@example(case=((2, 1), 1), momentum=0.3)  # BatchNorm1d, n = 2
@example(case=((6, 5, 5, 7), 2), momentum=None)
def test_batch_norm_1d_and_2d_match_torch(dtype, case, momentum):
    _compare(*case, momentum, dtype)


@pytest.mark.parametrize("shape", [(1, 3), (1, 1, 1, 3)])
def test_one_value_per_channel_is_torch_error_in_train_mode_only(shape):
    tbn = (torch.nn.BatchNorm2d if len(shape) == 4 else torch.nn.BatchNorm1d)(3)
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    tx = torch.from_numpy(x.transpose((0, 3, 1, 2)) if len(shape) == 4 else x)
    message = "Expected more than 1 value per channel when training"
    with pytest.raises(ValueError, match=message):
        tbn.train()(tx)
    bn = BatchNorm(3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=message):
        bn(jnp.asarray(x), use_running_average=False)
    with pytest.raises(ValueError, match=message):  # at trace time, under jit too
        jax.jit(lambda x: nnx.merge(*nnx.split(bn))(x, use_running_average=False))(x)
    assert int(bn.num_batches_tracked[...]) == 0
    with torch.no_grad():
        expected = tbn.eval()(tx).numpy()
    got = np.asarray(bn(jnp.asarray(x), use_running_average=True))
    np.testing.assert_allclose(
        got, expected.transpose((0, 2, 3, 1)) if len(shape) == 4 else expected, rtol=1e-6, atol=1e-6
    )


def test_bf16_input_keeps_float32_statistics():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(4, 3, 3, 5)) * 2 + 1, jnp.bfloat16)
    bn = BatchNorm(5, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    y = bn(x, use_running_average=False)
    assert y.dtype == jnp.bfloat16
    assert bn.mean[...].dtype == bn.var[...].dtype == jnp.float32
    assert bn.num_batches_tracked[...].dtype == jnp.int32
    # torch float32 on the same (bf16-rounded) values: the statistics agree to float32 rounding
    tbn = torch.nn.BatchNorm2d(5)
    tx = torch.from_numpy(np.array(x.astype(jnp.float32)).transpose(0, 3, 1, 2))
    with torch.no_grad():
        ty = tbn.train()(tx).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(bn.mean[...], tbn.running_mean.numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(bn.var[...], tbn.running_var.numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.asarray(y, np.float32), ty, rtol=1e-2, atol=1e-2)  # bf16 output


def test_two_pass_variance_survives_a_large_mean():
    # std 1 around 1000 in float32: E[x^2] - E[x]^2 (nnx.BatchNorm's default) is off by ~20%
    x = (np.random.default_rng(0).normal(size=(8, 4, 4, 3)) + 1e3).astype(np.float32)
    n, truth = 8 * 4 * 4, x.astype(np.float64).var(axis=(0, 1, 2))
    bn = BatchNorm(3, momentum=1.0, rngs=nnx.Rngs(0))
    bn(jnp.asarray(x), use_running_average=False)
    tbn = torch.nn.BatchNorm2d(3, momentum=1.0)
    tbn.train()(torch.from_numpy(x.transpose(0, 3, 1, 2)))
    np.testing.assert_allclose(bn.var[...], tbn.running_var.numpy(), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(bn.var[...]) * (n - 1) / n, truth, rtol=1e-6)
    fast = nnx.BatchNorm(3, momentum=0.0, rngs=nnx.Rngs(0))
    fast(jnp.asarray(x), use_running_average=False)
    assert np.abs(np.asarray(fast.var[...]) / truth - 1).max() > 1e-2


def test_biased_running_var_flag_is_the_old_flax_update():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(5, 2, 2, 3)), jnp.float32)
    new, old = (BatchNorm(3, unbiased_running_var=flag, rngs=nnx.Rngs(0)) for flag in (True, False))
    flax_bn = nnx.BatchNorm(
        3, momentum=0.9, epsilon=1e-5, use_fast_variance=False, rngs=nnx.Rngs(0)
    )
    ys = [m(x, use_running_average=False) for m in (new, old, flax_bn)]
    np.testing.assert_allclose(ys[0], ys[2], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ys[1], ys[2], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(old.var[...], flax_bn.var[...], rtol=1e-6)
    n = 5 * 2 * 2
    np.testing.assert_allclose((new.var[...] - 0.9) * (n - 1) / n, old.var[...] - 0.9, rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(num_features=0), "num_features"),
        (dict(num_features=2.0), "num_features"),
        (dict(num_features=2, momentum=1.5), "momentum"),
        (dict(num_features=2, momentum=True), "momentum"),
        (dict(num_features=2, epsilon=-1e-5), "epsilon"),
        (dict(num_features=2, epsilon=float("nan")), "epsilon"),
        (dict(num_features=2, dtype=jnp.int32), "dtype"),
        (dict(num_features=2, param_dtype="foo"), "param_dtype"),
        (dict(num_features=2, unbiased_running_var=1), "unbiased_running_var"),
    ],
)
def test_bad_arguments_are_named(kwargs, name):
    with pytest.raises(ValueError, match=f"^{name} must"):
        BatchNorm(**kwargs, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"expected input of shape \(\.\.\., 3\)"):
        BatchNorm(3, rngs=nnx.Rngs(0))(jnp.ones((2, 4)), use_running_average=True)
