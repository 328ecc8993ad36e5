r"""BatchNorm with PyTorch's train-mode semantics, as a Flax NNX module.

`nnx.BatchNorm` updates its running variance with the *biased* batch variance and keeps no batch
counter; `torch.nn.BatchNorm1d/2d` updates it with the *unbiased* one and counts its train-mode
forward passes in `num_batches_tracked`. `BatchNorm` here does what torch does, so a torch model
and its Flax port stay comparable through training and an exported state_dict holds what torch
would have written (`parity_tests/test_batch_norm_parity.py`: float64 to 1e-12).

With `n` the number of values per channel (`B*H*W` for NHWC input, `B` for `(B, C)`), the batch
statistics :math:`\mu_B = \frac1n \sum x`, :math:`\sigma_B^2 = \frac1n \sum (x - \mu_B)^2`
(two passes, never :math:`E[x^2] - E[x]^2`) and the momentum `m` (torch's convention), a train-mode
call returns :math:`\gamma (x - \mu_B) / \sqrt{\sigma_B^2 + \epsilon} + \beta` and sets

.. math::
  t \leftarrow t + 1,\quad
  \mu \leftarrow (1 - m)\,\mu + m\,\mu_B,\quad
  \sigma^2 \leftarrow (1 - m)\,\sigma^2 + m\,\frac{n}{n - 1}\,\sigma_B^2,

with `m = 1 / t` (a cumulative average) when `momentum=None`. Eval mode normalises with the running
`mean` and `var` and changes nothing.

`groups=G` is per-device BatchNorm for a batch split over `G` devices (torch's DDP without
`SyncBatchNorm`): the batch is `G` consecutive groups of `B / G` examples (one device's rows under
`train.parallel`), each normalised with its own statistics (`n` counts one group's values). The
running statistics follow group 0's, as DDP's default `broadcast_buffers=True` makes every rank use
rank 0's buffers. `groups=1` (the default) is torch's `SyncBatchNorm`, or one device.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

__all__ = ["BatchNorm", "set_groups"]


def _is_float_dtype(dtype: Any) -> bool:
    try:
        return bool(jnp.issubdtype(jnp.dtype(dtype), jnp.floating))
    except TypeError:
        return False


class BatchNorm(nnx.Module):
    """torch's `nn.BatchNorm1d` / `nn.BatchNorm2d` over the last (feature) axis.

    Input is NHWC images or `(N, C)` features; statistics are taken over every axis but the last.

    Variables (names shared with `nnx.BatchNorm`, so `train.pytorch.port` maps them to torch's):
    `scale`, `bias` (`nnx.Param`, ones and zeros: torch's `weight`, `bias`), `mean`, `var`
    (`nnx.BatchStat`, zeros and ones: `running_mean`, `running_var`) and `num_batches_tracked`
    (`nnx.BatchStat`, a 0-d int32 count of train-mode calls). The counter is int32, not torch's
    int64: JAX runs with 64-bit types disabled (int64 arrays silently become int32), and int32
    counts 2**31 - 1 train steps; `train.pytorch.port.to_torch` writes it as int64.

    Statistics are computed, and the output normalised, in at least float32 (bf16 and float16
    inputs are upcast); the output is cast to `dtype`. The running statistics are float32 (float64
    with a float64 `param_dtype`) and never receive gradients.

    Args:
      num_features: the size of the last axis of the input (torch's `num_features`).
      momentum: torch's convention, `running = (1 - momentum) * running + momentum * batch` (0.1
        is Flax's `momentum=0.9`); `None` is torch's cumulative average, `1 / num_batches_tracked`.
      epsilon: added to the variance before the square root (torch's `eps`).
      dtype: the output (compute) dtype, e.g. `jnp.bfloat16`.
      param_dtype: dtype of `scale` and `bias`.
      unbiased_running_var: `False` updates `var` with the biased batch variance, as
        `nnx.BatchNorm` does (the normalisation is the same either way).
      groups: train-mode statistics per group of `B / groups` consecutive examples (per device,
        see the module docstring); 1 takes them over the whole batch.
      rngs: consumed as `nnx.BatchNorm` consumes it (one `params` key each for `scale` and `bias`),
        so models initialise their other layers with the same keys.

    Raises:
      ValueError: a bad argument, named.

    Examples:
      >>> bn = BatchNorm(2, rngs=nnx.Rngs(0))
      >>> x = jnp.array([[0.0, 1.0], [2.0, 5.0]])  # n = 2 values per channel
      >>> jnp.round(bn(x, use_running_average=False), 4).tolist()  # (x - mean) / sqrt(1 + 1e-5)
      [[-1.0, -1.0], [1.0, 1.0]]
      >>> [round(float(v), 6) for v in bn.var[...]], int(bn.num_batches_tracked[...])
      ([1.1, 1.7], 1)
      >>> [round(float(v), 6) for v in bn.mean[...]]  # 0.9 * 0 + 0.1 * (1, 3)
      [0.1, 0.3]
      >>> bn(jnp.ones((1, 2)), use_running_average=False)
      Traceback (most recent call last):
      ...
      ValueError: Expected more than 1 value per channel when training, got input size (1, 2)
    """

    def __init__(
        self,
        num_features: int,
        *,
        momentum: float | None = 0.1,
        epsilon: float = 1e-5,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        unbiased_running_var: bool = True,
        groups: int = 1,
        rngs: nnx.Rngs,
    ):
        if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"num_features must be an int >= 1, got {num_features=}")
        if momentum is not None and (
            isinstance(momentum, bool)
            or not isinstance(momentum, (int, float))
            or not 0 <= momentum <= 1
        ):
            raise ValueError(f"momentum must be None or a float in [0, 1], got {momentum=}")
        if (
            isinstance(epsilon, bool)
            or not isinstance(epsilon, (int, float))
            or not (math.isfinite(epsilon) and epsilon >= 0)
        ):
            raise ValueError(f"epsilon must be a finite float >= 0, got {epsilon=}")
        for name, value in (("dtype", dtype), ("param_dtype", param_dtype)):
            if not _is_float_dtype(value):
                raise ValueError(f"{name} must be a floating dtype, got {name}={value!r}")
        if not isinstance(unbiased_running_var, bool):
            raise ValueError(f"unbiased_running_var must be a bool, got {unbiased_running_var=}")
        _check_groups(groups)
        shape = (num_features,)
        stat_dtype = jnp.promote_types(param_dtype, jnp.float32)
        self.scale = nnx.Param(nnx.initializers.ones_init()(rngs.params(), shape, param_dtype))
        self.bias = nnx.Param(nnx.initializers.zeros_init()(rngs.params(), shape, param_dtype))
        self.mean = nnx.BatchStat(jnp.zeros(shape, stat_dtype))
        self.var = nnx.BatchStat(jnp.ones(shape, stat_dtype))
        self.num_batches_tracked = nnx.BatchStat(jnp.zeros((), jnp.int32))
        self.num_features = num_features
        self.momentum = None if momentum is None else float(momentum)
        self.epsilon = float(epsilon)
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.unbiased_running_var = unbiased_running_var
        self.groups = groups

    def __call__(self, x: jax.Array, *, use_running_average: bool) -> jax.Array:
        """Normalises `x` (shape `(..., num_features)`).

        Args:
          x: NHWC images or `(N, C)` features, any float dtype.
          use_running_average: `True` (eval) normalises with `mean` and `var`; `False` (train)
            with the batch statistics, and updates `mean`, `var` and `num_batches_tracked`.

        Returns:
          `x`'s shape, in `dtype`.

        Raises:
          ValueError: `x` is not `(..., num_features)`, or (train mode) has one value per
            channel (torch's error; the shape is static, so this is raised while tracing).
        """
        if x.ndim < 2 or x.shape[-1] != self.num_features:
            raise ValueError(
                f"expected input of shape (..., {self.num_features}) with at least 2 axes, "
                f"got {tuple(x.shape)}"
            )
        compute = jnp.promote_types(jnp.promote_types(x.dtype, self.dtype), jnp.float32)
        xs = jnp.asarray(x, compute)
        if use_running_average:
            mean = self.mean[...].astype(compute)
            var = self.var[...].astype(compute)
        else:
            g = self.groups
            if x.shape[0] % g:
                raise ValueError(
                    f"BatchNorm groups={g} must divide the batch, got input size {tuple(x.shape)}"
                )
            n = math.prod(x.shape[:-1]) // g
            if n <= 1:
                raise ValueError(
                    "Expected more than 1 value per channel when training, "
                    f"got input size {tuple(x.shape)}" + (f" in {g} groups" if g > 1 else "")
                )
            if g == 1:
                axes = tuple(range(x.ndim - 1))
                mean = jnp.mean(xs, axis=axes)
                sum_sq = jnp.sum(jnp.square(xs - mean), axis=axes)  # two passes: no cancellation
                var = sum_sq / n
                self._update(mean, sum_sq / (n - 1) if self.unbiased_running_var else var)
            else:  # group i: device i's rows under train.parallel
                xs = xs.reshape(g, x.shape[0] // g, *x.shape[1:])
                axes = tuple(range(1, xs.ndim - 1))
                mean = jnp.mean(xs, axis=axes, keepdims=True)
                sum_sq = jnp.sum(jnp.square(xs - mean), axis=axes, keepdims=True)
                var = sum_sq / n
                first = (0,) * (xs.ndim - 1)  # group 0's statistics, shape (C,)
                unbiased = sum_sq[first] / (n - 1)
                self._update(mean[first], unbiased if self.unbiased_running_var else var[first])
        mul = jax.lax.rsqrt(var + self.epsilon) * self.scale[...].astype(compute)
        y = (xs - mean) * mul + self.bias[...].astype(compute)
        return y.reshape(x.shape).astype(self.dtype)

    def _update(self, batch_mean: jax.Array, batch_var: jax.Array) -> None:
        count = self.num_batches_tracked[...] + 1
        if self.momentum is None:  # torch: exponential_average_factor = 1 / num_batches_tracked
            m = 1 / count.astype(batch_mean.dtype)
        else:
            m = self.momentum
        stop = jax.lax.stop_gradient
        new_mean = (1 - m) * self.mean[...] + m * batch_mean
        new_var = (1 - m) * self.var[...] + m * batch_var
        # written like nnx.BatchNorm writes its statistics (works under nnx.merge(copy=True)
        # inside jax.value_and_grad); dtypes stay those of the variables
        self.mean[...] = stop(new_mean.astype(self.mean[...].dtype))
        self.var[...] = stop(new_var.astype(self.var[...].dtype))
        self.num_batches_tracked[...] = stop(count.astype(jnp.int32))


def _check_groups(groups: Any) -> None:
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups must be an int >= 1, got {groups=}")


def set_groups(model: nnx.Module, groups: int) -> nnx.Module:
    """Sets `groups` on every `BatchNorm` of `model` (in place); returns `model`.

    Examples:
      >>> class Net(nnx.Module):
      ...     def __init__(self):
      ...         self.bn = BatchNorm(3, rngs=nnx.Rngs(0))
      >>> set_groups(Net(), 4).bn.groups
      4
    """
    _check_groups(groups)
    for _, module in nnx.iter_modules(model):
        if isinstance(module, BatchNorm):
            module.groups = groups
    return model
