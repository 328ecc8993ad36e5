"""Data parallelism (train.parallel): one device exactly as before, 4 devices as 1, the rows a
process loads, per-device BatchNorm, and the errors. Runs of several devices are in a subprocess
with forced CPU devices, so the rest of the suite keeps one."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from train import losses, parallel
from train import step as step_lib
from train.batch_norm import BatchNorm, set_groups
from train.config import Config
from train.data.pipeline import BatchOptions, from_arrays, from_folder

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _batch(n=8, size=16, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "image": rng.normal(size=(n, size, size, 1)).astype(np.float32),
        "label": (np.arange(n) % 3).astype(np.int32),
        "mask": np.ones(n, bool),
    }


def test_one_device_mesh_is_bit_identical_to_the_unsharded_step():
    """`--devices 1` (a 1-device mesh with shardings) gives exactly today's unsharded step: same
    parameters, BatchNorm statistics and metrics, bit for bit, over steps with dropout,
    DisturbLabel, BatchNorm and Adam."""
    config = Config(model="small_cnn", width=2, optimizer="adam", lr=1e-2)
    loss_fn = losses.create_loss("focal", num_classes=3)
    devices = parallel.create_devices(1)

    def run(mesh):
        state = step_lib.create_train_state(
            config, num_classes=3, image_shape=(16, 16, 1), key=jax.random.key(0, impl="rbg")
        )
        train_fn, eval_fn = step_lib.compiled_steps(loss_fn, 3, 10.0, mesh)
        if mesh is not None:
            state = mesh.replicate(state)
        key = jax.random.key(7)
        ms = []
        for i in range(3):
            batch = _batch(seed=i)
            state, m = train_fn(state, mesh.put_batch(batch) if mesh else batch, key)
            ms.append(m)
        ms.append(eval_fn(state, mesh.put_batch(_batch(seed=9)) if mesh else _batch(seed=9)))
        return jax.device_get((state.params, state.batch_stats, state.opt_state, ms))

    plain, sharded = run(None), run(devices)
    leaves_a, leaves_b = jax.tree.leaves(plain), jax.tree.leaves(sharded)
    assert len(leaves_a) == len(leaves_b) > 10
    for a, b in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert float(plain[3][0].loss_sum) > 0  # the steps computed something


def test_rows_of_a_batch_equal_the_whole_batch_augmentation_included(tmp_path):
    """A process that loads rows [a, b) of each global batch gets exactly those rows of the batch
    one process would load: the same examples, crops, flips and padding mask."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(40, 8, 8, 3), dtype=np.uint8)
    from train.data.catalog import ArrayDataset

    ds = ArrayDataset(
        name="toy",
        splits={"train": (images, (np.arange(40) % 4).astype(np.int32))},
        class_names=tuple("abcd"),
    )
    data = from_arrays(
        ds, image_size=None, options=BatchOptions(batch_size=8, eval_batch_size=6, seed=3)
    )
    halves = (slice(0, 4), slice(4, 8))
    train = [data.train_batches(1), *(data.train_batches(1, r) for r in halves)]
    for whole, *parts in zip(*train, strict=True):
        for k in whole:
            np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), whole[k])
    thirds = (slice(0, 2), slice(2, 4), slice(4, 6))
    evals = [data.eval_batches("val"), *(data.eval_batches("val", r) for r in thirds)]
    evals = list(zip(*evals, strict=True))
    assert len(evals) == 2 and not evals[-1][0]["mask"].all()  # 8 val examples: one padded
    for whole, *parts in evals:
        for k in whole:
            np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), whole[k])

    from PIL import Image

    from train.data.imagefolder import scan_imagefolder

    for cls in ("a", "b"):
        os.makedirs(tmp_path / "train" / cls)
        for i in range(6):
            pixels = rng.integers(0, 255, size=(10 + i, 12, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "train" / cls / f"{i}.png")
    folder = from_folder(
        scan_imagefolder(tmp_path), image_size=6, options=BatchOptions(batch_size=4, seed=1)
    )
    pair = (slice(0, 2), slice(2, 4))
    whole = next(folder.train_batches(0))
    parts = [next(folder.train_batches(0, r)) for r in pair]
    np.testing.assert_array_equal(np.concatenate([p["image"] for p in parts]), whole["image"])
    assert not np.array_equal(whole["image"][0], whole["image"][1])


def test_batch_norm_groups_are_separate_batch_norms_with_group_0_running_statistics():
    """groups=2: each half normalised by its own statistics; the running statistics are those a
    BatchNorm fed only the first half would keep (DDP's broadcast_buffers from rank 0)."""
    x = jnp.asarray(np.random.default_rng(0).normal(size=(6, 3, 3, 4)) * 3 + 1, jnp.float32)
    grouped = BatchNorm(4, groups=2, rngs=nnx.Rngs(0))
    first, second = BatchNorm(4, rngs=nnx.Rngs(0)), BatchNorm(4, rngs=nnx.Rngs(0))
    y = grouped(x, use_running_average=False)
    np.testing.assert_allclose(y[:3], first(x[:3], use_running_average=False), atol=1e-6)
    np.testing.assert_allclose(y[3:], second(x[3:], use_running_average=False), atol=1e-6)
    for name in ("mean", "var"):
        np.testing.assert_allclose(
            getattr(grouped, name)[...], getattr(first, name)[...], rtol=1e-6
        )
    assert int(grouped.num_batches_tracked[...]) == 1
    whole = BatchNorm(4, rngs=nnx.Rngs(0))
    assert not np.allclose(whole(x, use_running_average=False), y, atol=1e-3)  # groups matter
    with pytest.raises(ValueError, match="groups=4 must divide the batch"):
        BatchNorm(4, groups=4, rngs=nnx.Rngs(0))(x, use_running_average=False)
    with pytest.raises(ValueError, match=r"groups must be an int >= 1, got groups=0"):
        set_groups(whole, 0)


def test_device_and_process_flags_fail_in_one_named_line():
    with pytest.raises(ValueError, match=r"--devices=3 but this run sees 1 device \(cpu\)"):
        parallel.create_devices(3)
    with pytest.raises(ValueError, match="devices must be an integer >= 1, got devices=0"):
        Config(devices=0)
    with pytest.raises(ValueError, match=r"--coordinator must be HOST:PORT or 'auto', got 'x'"):
        parallel.initialize("x", 2, 0)
    with pytest.raises(ValueError, match=r"--process-id must be in \[0, --num-processes=2\)"):
        parallel.initialize("127.0.0.1:1", 2, 2)
    with pytest.raises(ValueError, match="need --coordinator"):
        parallel.initialize(None, None, 1)
    with pytest.raises(ValueError, match=r"batch_size=10 is not divisible by the 4 devices"):
        parallel.check_divisible("batch_size", 10, 4)
    with pytest.raises(ValueError, match="batch_norm must be one of"):
        Config(batch_norm="ddp")


_FOUR_DEVICES = r"""
import contextlib, functools, io, json, sys, tempfile
import jax, jax.numpy as jnp, numpy as np
assert jax.device_count() == 4, jax.devices()
import jaxloss
from train import cli, losses, parallel, step as step_lib
from train.config import Config
from train.loop import train_and_evaluate

cache = sys.argv[1]
out = {}
def run(**kw):
    cfg = Config(epochs=2, plot=False, cache_dir=cache, **kw)
    s = train_and_evaluate(cfg, tempfile.mkdtemp(), log=lambda m: None)
    return {k: s[k] for k in ("train_loss", "val_loss", "val_accuracy", "val_f1", "val_recall",
                              "val_count", "train_accuracy")}

# no BatchNorm (lenet), DisturbLabel and augmentation; SyncBN (small_cnn), F1 loss, accumulation
sgd = dict(optimizer="sgd", lr=0.05)
runs = {"lenet": dict(model="lenet", width=6, disturb_label=10.0, batch_size=64,
                      eval_batch_size=40, **sgd),
        "small_cnn_sync": dict(model="small_cnn", width=4, image_size=16, loss="f1", accum=2,
                               batch_size=32, **sgd)}
for name, kw in runs.items():
    out[name] = {n: run(devices=n, **kw) for n in (1, 4)}

# per-device BatchNorm: defined by the groups, not by where the groups run
cfg = Config(model="small_cnn", width=2, optimizer="sgd", lr=0.1)
loss_fn = losses.create_loss("ce", num_classes=3)
rng = np.random.default_rng(0)
batch = {"image": rng.normal(size=(8, 16, 16, 1)).astype(np.float32),
         "label": (np.arange(8) % 3).astype(np.int32), "mask": np.ones(8, bool)}
def local_step(devices, groups):
    state = step_lib.create_train_state(cfg, num_classes=3, image_shape=(16, 16, 1),
                                        key=jax.random.key(0, impl="rbg"), batch_norm_groups=groups)
    train_fn, _ = step_lib.compiled_steps(loss_fn, 3, 0.0, devices)
    if devices is not None:
        state, b = devices.replicate(state), devices.put_batch(batch)
    else:
        b = batch
    new, m = train_fn(state, b, jax.random.key(1))
    return new
four = parallel.create_devices(4)
local4, local1, sync4 = local_step(four, 4), local_step(None, 4), local_step(four, 1)
diff = lambda a, b: max(float(jnp.max(jnp.abs(x - y))) for x, y in
                        zip(jax.tree.leaves(a), jax.tree.leaves(b)))
out["local_vs_unsharded"] = diff((local4.params, local4.batch_stats),
                                 (local1.params, local1.batch_stats))
out["local_vs_sync"] = diff(local4.batch_stats, sync4.batch_stats)
shards = [np.asarray(s.data) for s in local4.batch_stats["bn1"]["mean"][...].addressable_shards]
out["replicas_equal"] = len(shards) == 4 and all(np.array_equal(s, shards[0]) for s in shards)

# losses of the global batch: weighted mean, F1 counts, DisturbLabel per example
x = jnp.asarray(rng.normal(size=(64, 5)), jnp.float32)
y = jnp.asarray(rng.integers(0, 5, 64), jnp.int32)
w = jnp.asarray([0.5, 1.0, 2.0, 3.0, 0.25])
split = four.batch_sharding
for name, fn in {"ce_weight": lambda x, y: jaxloss.cross_entropy(x, y, weight=w),
                 "f1": lambda x, y: jaxloss.f1_loss(x, y, num_classes=5),
                 "focal": lambda x, y: jaxloss.focal_loss(x, y, gamma=2.0, alpha=0.25)}.items():
    one = jax.jit(jax.value_and_grad(fn))(x, y)
    sharded = jax.jit(jax.value_and_grad(fn), in_shardings=(split, split))(x, y)
    out[name] = diff(one, sharded)
disturb = lambda k, y: jaxloss.disturb_labels(k, y, alpha=50.0, num_classes=5)
a = jax.jit(disturb)(jax.random.key(3), y)
b = jax.jit(disturb, in_shardings=(four.replicated, split), out_shardings=split)(
    jax.random.key(3), y)
out["disturb_equal"] = bool(jnp.array_equal(a, b))
out["disturb_changed"] = int(jnp.sum(a != y))

# per-device BatchNorm resumed on another device count: said, not silent
w = tempfile.mkdtemp()
small = dict(model="small_cnn", width=2, image_size=16, batch_norm="local", plot=False,
             cache_dir=cache, limit_train_batches=2, batch_size=32)
train_and_evaluate(Config(epochs=1, devices=4, **small), w, log=lambda m: None)
lines = []
train_and_evaluate(Config(epochs=2, devices=2, resume=True, **small), w, log=lines.append)
out["local_resume"] = [line for line in lines if line.startswith("warning:")]

# a global batch the devices do not divide: one line naming both numbers
err = io.StringIO()
with contextlib.redirect_stderr(err):
    rc = cli.main(["--batch-size", "30", "--epochs", "1", "--cache-dir", cache,
                   "--workdir", tempfile.mkdtemp() + "/w", "--no-plot"])
out["cli"] = [rc, err.getvalue()]
print("RESULT" + json.dumps(out))
"""


@pytest.fixture(scope="module")
def four_devices(tmp_path_factory):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    env.pop("JAX_NUM_CPU_DEVICES", None)
    cache = str(tmp_path_factory.mktemp("digits"))
    proc = subprocess.run(
        [sys.executable, "-c", _FOUR_DEVICES, cache],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT") :])


@pytest.mark.parametrize("name", ["lenet", "small_cnn_sync"])
def test_four_devices_equal_one_device_after_two_epochs(four_devices, name):
    """2 epochs on 4 devices equal 1 device: losses to 1e-5 relative, accuracy, macro-F1 and
    per-class recall to 0.01 (one validation example is 0.0028). SGD: Adam would amplify the
    all-reduce's rounding (see test_multiprocess.py)."""
    one, four = four_devices[name]["1"], four_devices[name]["4"]
    assert one["val_count"] == four["val_count"] == 359  # the padded last batch counted once
    for key in ("train_loss", "val_loss"):
        assert four[key] == pytest.approx(one[key], rel=1e-5), key
    for key in ("val_accuracy", "val_f1", "train_accuracy"):
        assert abs(four[key] - one[key]) <= 0.01, key
    np.testing.assert_allclose(four["val_recall"], one["val_recall"], atol=0.01)
    assert one["val_accuracy"] > 0.15  # it trained (10 classes: chance is 0.1)
    print(name, {k: abs(four[k] - one[k]) for k in ("train_loss", "val_loss", "val_f1")})


def test_per_device_batch_norm_and_global_losses_on_four_devices(four_devices):
    """Per-device BatchNorm on 4 devices equals the same 4 groups on one device and differs from
    SyncBN; its running statistics are the same on every device. The weighted CE mean, focal
    loss and F1 loss of a sharded batch equal the unsharded ones (values and gradients), and
    DisturbLabel draws the same labels on 4 devices as on 1."""
    r = four_devices
    assert r["local_vs_unsharded"] < 1e-6
    assert r["local_vs_sync"] > 1e-4
    assert r["replicas_equal"]
    for name in ("ce_weight", "f1", "focal"):
        assert r[name] < 1e-6, name
    assert r["disturb_equal"] and r["disturb_changed"] > 5


def test_per_device_batch_norm_resumed_on_other_devices_says_so(four_devices):
    assert four_devices["local_resume"] == [
        "warning: --batch-norm local: the run trained on 4 devices and goes on on 2, so "
        "BatchNorm now normalises groups of 16 examples, not 8"
    ]


def test_a_batch_the_devices_do_not_divide_is_one_error_line(four_devices):
    rc, stderr = four_devices["cli"]
    assert rc == 1
    assert stderr.strip().splitlines() == [
        "error: batch_size=30 is not divisible by the 4 devices: use a multiple of 4 (e.g. 32) "
        "or --devices"
    ]


def test_compiled_steps_are_cached_per_mesh():
    loss_fn = losses.create_loss("ce", num_classes=3)
    devices = parallel.create_devices(1)
    first = step_lib.compiled_steps(loss_fn, 3, 0.0, devices)
    assert step_lib.compiled_steps(loss_fn, 3, 0.0, parallel.create_devices(1)) is first
    assert step_lib.compiled_steps(loss_fn, 3, 0.0) is not first
    assert functools.reduce(lambda a, b: a and callable(b), first, True)


def test_several_processes_need_one_workdir(capsys):
    from train import cli

    rc = cli.main(["--coordinator", "127.0.0.1:1", "--num-processes", "2", "--process-id", "0"])
    assert rc == 1
    assert capsys.readouterr().err.splitlines() == [
        "error: a run of several processes needs --workdir (one, seen by all)"
    ]
