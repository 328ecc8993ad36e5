"""The sigmoid focal loss's float32 ``log1p``: a short atanh series in place of XLA's ``log1p``.

``jaxloss._sigmoid_terms._log1p`` is the loss's largest cost; its docstring promises at most a few
ulps on every normal ``e = exp(-|z|)`` and ``log1p(e) == e`` for tiny ``e``. These tests hold it to
that, and the loss built on it (BCE, ``gamma = 0``, no ``alpha``) to float64 on a dense grid.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxloss
from jaxloss._sigmoid_terms import _log1p

_ULP_AT_1 = 2.0**-23  # float32


def _ulps(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    spacing = np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)
    return np.abs(got.astype(np.float64) - want) / spacing


def test_log1p_within_four_ulps_on_every_normal_exp():
    a = np.linspace(0.0, 87.0, 400_001, dtype=np.float32)
    e = np.exp(-a.astype(np.float64)).astype(np.float32)
    got = np.asarray(jax.jit(_log1p)(jnp.asarray(e)))
    ulps = _ulps(got, np.log1p(e.astype(np.float64)))
    assert ulps.max() <= 4.0, (ulps.max(), e[ulps.argmax()])
    assert ulps.mean() <= 0.25


def test_log1p_is_the_identity_for_tiny_arguments_and_log2_at_one():
    tiny = jnp.asarray([1e-30, 1e-20, 2.0**-60, 1.1754944e-38], jnp.float32)
    np.testing.assert_array_equal(np.asarray(jax.jit(_log1p)(tiny)), np.asarray(tiny))
    one = float(jax.jit(_log1p)(jnp.float32(1.0)))
    assert abs(one - np.log(2.0)) <= 2 * _ULP_AT_1 * np.log(2.0)


def test_log1p_float64_is_xla_s_own():
    with jax.enable_x64(True):
        e = jnp.asarray(np.linspace(0.0, 1.0, 1001), jnp.float64)
        np.testing.assert_array_equal(np.asarray(_log1p(e)), np.asarray(jnp.log1p(e)))


@pytest.mark.parametrize("target", [0.0, 1.0, 0.3])
def test_bce_form_of_the_loss_matches_float64_to_a_few_ulps(target):
    z = np.linspace(-88.0, 88.0, 200_001, dtype=np.float32)
    t = np.full_like(z, target)
    got = np.asarray(
        jaxloss.sigmoid_focal_loss(z, t, gamma=0.0, alpha=-1.0, reduction="none"), np.float64
    )
    z64, t64 = z.astype(np.float64), t.astype(np.float64)
    want = t64 * np.logaddexp(0.0, -z64) + (1 - t64) * np.logaddexp(0.0, z64)
    normal = want >= 1.1754944e-38  # XLA:CPU flushes subnormals to zero
    ulps = _ulps(got[normal], want[normal])
    assert ulps.max() <= 8.0, (ulps.max(), z[normal][ulps.argmax()])
