"""The scale-out's error paths and its environment promises, in this process (one device).

Each error must name what is wrong before anything runs: a per-device BatchNorm whose groups do not
divide the batch or leave one value per channel, augmentation rows that do not match the images,
and `initialize`'s reading of `--coordinator auto` and `JAX_COORDINATOR_ADDRESS`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from train import parallel
from train.batch_norm import BatchNorm
from train.data.augment import pad_crop_flip


def test_batch_norm_groups_must_divide_the_batch():
    bn = BatchNorm(2, groups=3, rngs=nnx.Rngs(0))
    with pytest.raises(
        ValueError, match=r"groups=3 must divide the batch, got input size \(4, 2\)"
    ):
        bn(jnp.ones((4, 2)), use_running_average=False)


def test_batch_norm_one_value_per_channel_per_group_raises_naming_the_groups():
    bn = BatchNorm(2, groups=4, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"more than 1 value per channel .*\(4, 2\) in 4 groups"):
        bn(jnp.ones((4, 2)), use_running_average=False)
    # two values per channel per group is enough, and eval mode never needs the batch statistics
    out = bn(jnp.arange(16.0).reshape(8, 2), use_running_average=False)
    assert np.all(np.isfinite(np.asarray(out)))
    assert bn(jnp.ones((1, 2)), use_running_average=True).shape == (1, 2)


@pytest.mark.parametrize(
    "rows, batch_size",
    [(slice(0, 2), 5), (slice(2, 5), None), (slice(4, 8), 6)],
)
def test_augmentation_rows_that_do_not_match_the_images_raise(rows, batch_size):
    images = np.zeros((3, 4, 4, 1), np.uint8)
    with pytest.raises(ValueError, match=r"rows=.* of batch_size=.* do not match 3 images"):
        pad_crop_flip(
            images, np.random.default_rng(0), pad=1, flip=True, rows=rows, batch_size=batch_size
        )


def test_augmentation_rows_equal_the_whole_batch_s_rows():
    images = np.arange(6 * 4 * 4, dtype=np.uint8).reshape(6, 4, 4, 1)
    whole = pad_crop_flip(images, np.random.default_rng(7), pad=1, flip=True)
    part = pad_crop_flip(
        images[2:5], np.random.default_rng(7), pad=1, flip=True, rows=slice(2, 5), batch_size=6
    )
    np.testing.assert_array_equal(part, whole[2:5])


@pytest.fixture
def calls(monkeypatch):
    """Records `jax.distributed.initialize`'s arguments instead of starting a service."""
    seen = []
    monkeypatch.setattr(
        jax.distributed, "initialize", lambda *args, **kwargs: seen.append((args, kwargs))
    )
    monkeypatch.delenv("JAX_COORDINATOR_ADDRESS", raising=False)
    return seen


def test_coordinator_auto_lets_jax_detect_the_cluster(calls):
    assert parallel.initialize("auto", None, None) is True
    assert calls == [((None,), {"num_processes": None, "process_id": None})]


def test_environment_address_starts_several_processes_without_flags(calls, monkeypatch):
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
    assert parallel.initialize(None, 2, 1) is True
    # the address itself is left to JAX, which reads the same variable
    assert calls == [((None,), {"num_processes": 2, "process_id": 1})]


def test_explicit_coordinator_is_passed_and_bad_flags_raise_first(calls):
    assert parallel.initialize("127.0.0.1:9999", 2, 0) is True
    assert calls == [(("127.0.0.1:9999",), {"num_processes": 2, "process_id": 0})]
    for args, match in [
        (("host-without-port", 2, 0), "HOST:PORT or 'auto'"),
        (("127.0.0.1:9999", 0, 0), "--num-processes must be >= 1"),
        (("127.0.0.1:9999", 2, 2), r"--process-id must be in \[0, --num-processes=2\)"),
        ((None, 2, 0), "need --coordinator"),
    ]:
        with pytest.raises(ValueError, match=match):
            parallel.initialize(*args)
    assert len(calls) == 1  # nothing started for a bad flag
