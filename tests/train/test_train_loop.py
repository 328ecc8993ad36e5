"""train.step and train.loop: steps, retracing, early stopping, checkpoints and exact resume."""

import dataclasses
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from train import checkpoints, losses
from train import loop as loop_lib
from train import step as step_lib
from train import workdir as run_dir
from train.config import Config


@dataclasses.dataclass
class FakeInput:
    """A tiny in-memory stand-in for train.data.Input (same interface): 3 classes of 16x16 blobs."""

    seed: int = 0
    num_classes: int = 3
    image_shape: tuple = (16, 16, 1)
    batch_size: int = 8
    eval_batch_size: int = 8
    train_size: int = 32
    val_size: int = 13
    test_size: int = 0

    @property
    def class_names(self):
        return tuple(str(i) for i in range(self.num_classes))

    @property
    def steps_per_epoch(self):
        return self.train_size // self.batch_size

    def _examples(self, n, offset):
        rng = np.random.default_rng(1000 + offset)
        labels = (np.arange(n) % self.num_classes).astype(np.int32)
        images = rng.normal(size=(n, *self.image_shape)).astype(np.float32)
        images += labels[:, None, None, None] * 0.7
        return images, labels

    def train_batches(self, epoch):
        images, labels = self._examples(self.train_size, 0)
        order = np.random.default_rng([self.seed, epoch]).permutation(self.train_size)
        for b in range(self.steps_per_epoch):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield {"image": images[idx], "label": labels[idx], "mask": np.ones(len(idx), bool)}

    def eval_batches(self, split="val"):
        images, labels = self._examples(self.val_size, 1)
        n, size = self.val_size, self.eval_batch_size
        for start in range(0, n, size):
            pad = max(0, start + size - n)
            idx = np.concatenate([np.arange(start, min(start + size, n)), np.zeros(pad, int)])
            mask = np.arange(size) < size - pad
            yield {"image": images[idx], "label": labels[idx], "mask": mask}


def _config(**kw):
    base = dict(model="small_cnn", width=2, epochs=3, batch_size=8, plot=False, seed=3)
    base.update(kw)
    return Config(**base)


_FAKE_INPUT = FakeInput()  # _state's default (one instance, made when the module loads)


def _state(config, data=_FAKE_INPUT):
    return step_lib.create_train_state(
        config,
        num_classes=data.num_classes,
        image_shape=data.image_shape,
        key=jax.random.key(0, impl="rbg"),
    )


def _jitted_step(config, num_classes=3):
    loss_fn = losses.create_loss(config.loss, num_classes=num_classes)
    return jax.jit(
        functools.partial(
            step_lib.train_step,
            loss_fn=loss_fn,
            num_classes=num_classes,
            disturb_label=config.disturb_label,
        )
    )


def test_train_step_decreases_loss_and_does_not_retrace():
    config = _config(lr=3e-3)
    state = _state(config)
    step = _jitted_step(config)
    batch = next(FakeInput().train_batches(0))
    key = jax.random.key(1)
    first = None
    for i in range(15):
        if i == 5:  # a new learning rate must not retrace
            from train import optim

            state = state.replace(opt_state=optim.set_learning_rate(state.opt_state, 1e-3))
        state, m = step(state, batch, key)
        first = float(m.loss_sum / m.count) if first is None else first
    last = float(m.loss_sum / m.count)
    assert int(state.step) == 15
    assert last < 0.5 * first, (first, last)
    assert step._cache_size() == 1
    # BatchNorm running statistics moved
    assert float(jnp.abs(state.batch_stats["bn1"]["mean"][...]).sum()) > 0


def test_eval_step_ignores_masked_examples():
    config = _config()
    state = _state(config)
    loss_fn = losses.create_loss("ce", num_classes=3)
    batch = next(FakeInput().eval_batches())
    step = jax.jit(functools.partial(step_lib.eval_step, loss_fn=loss_fn))
    full = step(state, batch)
    masked = dict(batch, mask=np.arange(8) < 5)
    part = step(state, masked)
    only = step(state, {k: v[:5] for k, v in batch.items()})
    assert float(part.count) == 5.0 and float(full.count) == 8.0
    np.testing.assert_allclose(float(part.loss_sum), float(only.loss_sum), rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(part.confusion), np.asarray(only.confusion))


def test_disturb_label_changes_targets_not_metrics():
    batch = next(FakeInput().train_batches(0))
    key = jax.random.key(5)
    out = {}
    for alpha in (0.0, 100.0):
        config = _config(disturb_label=alpha, model="lenet")
        _, out[alpha] = _jitted_step(config)(_state(config), batch, key)
    # same predictions (same params), so the confusion matrix against the true labels is equal
    np.testing.assert_array_equal(np.asarray(out[0.0].confusion), np.asarray(out[100.0].confusion))
    assert abs(float(out[0.0].loss_sum) - float(out[100.0].loss_sum)) > 1e-3


def _final(workdir, config):
    ckpt = checkpoints.Checkpoints(os.path.join(workdir, "checkpoints"))
    state, loop = ckpt.restore_latest(_state(config))
    ckpt.close()
    return state, loop


@pytest.mark.parametrize(
    "extra",
    [
        dict(
            schedule="plateau", plateau_patience=0, plateau_factor=0.5, accum=2, disturb_label=30.0
        ),
    ],
)
def test_resume_matches_uninterrupted_run(tmp_path, extra):
    data = FakeInput()
    straight = _config(**extra)
    loop_lib.train_and_evaluate(straight, str(tmp_path / "a"), data=data, log=lambda s: None)

    loop_lib.train_and_evaluate(
        _config(**extra, epochs=2), str(tmp_path / "b"), data=data, log=lambda s: None
    )
    # A run killed while saving epoch 3 leaves a temporary directory: it must be ignored.
    partial = tmp_path / "b" / "checkpoints" / "latest" / "3.orbax-checkpoint-tmp-1700000000"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "junk").write_text("half-written")
    logs = []
    loop_lib.train_and_evaluate(
        dataclasses.replace(straight, resume=True), str(tmp_path / "b"), data=data, log=logs.append
    )
    assert logs[0].startswith("resumed from") and "after epoch 2" in logs[0]
    assert not partial.exists()

    state_a, loop_a = _final(tmp_path / "a", straight)
    state_b, loop_b = _final(tmp_path / "b", straight)
    assert loop_a["epoch"] == loop_b["epoch"] == 3
    assert int(state_a.step) == int(state_b.step) == 3 * data.steps_per_epoch
    for a, b in zip(
        jax.tree.leaves((state_a.params, state_a.batch_stats, state_a.opt_state)),
        jax.tree.leaves((state_b.params, state_b.batch_stats, state_b.opt_state)),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # bit-identical

    def hist(d):
        return [
            {k: v for k, v in r.items() if k != "time_s"}
            for r in map(json.loads, open(d / "metrics.jsonl"))
        ]

    assert hist(tmp_path / "a") == hist(tmp_path / "b")
    assert loop_a["plateau"] == loop_b["plateau"]
    lrs = [r["lr"] for r in hist(tmp_path / "a")]
    assert lrs[0] == 1e-3 and all(lr in (1e-3, 5e-4, 2.5e-4) for lr in lrs)


def test_outputs_best_checkpoints_and_early_stopping(tmp_path):
    data = FakeInput(test_size=13)
    # lenet has no BatchNorm: with lr 0 the validation loss never changes, so after the first
    # epoch every epoch is "bad" and patience 2 stops the run after epoch 3.
    config = _config(model="lenet", lr=0.0, epochs=10, early_stopping=2, plot=True)
    logs = []
    summary = loop_lib.train_and_evaluate(config, str(tmp_path), data=data, log=logs.append)
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert any("early stopping" in line for line in logs)
    for key in (
        "epoch",
        "lr",
        "train_loss",
        "train_accuracy",
        "val_loss",
        "val_accuracy",
        "val_f1",
        "val_recall",
        "train_f1",
    ):
        assert key in records[0], key
    assert records[0]["val_count"] == data.val_size and len(records[0]["val_recall"]) == 3
    assert summary["epoch"] == 3
    # the test split is evaluated once, with the best-by-val-loss state (epoch 1 = every epoch here)
    assert summary["test_count"] == 13
    assert summary["test_accuracy"] == pytest.approx(records[0]["val_accuracy"])
    assert any(line.startswith("test (best val loss, epoch 1)") for line in logs)
    assert json.loads((tmp_path / "config.json").read_text())["early_stopping"] == 2
    assert (tmp_path / "curves.png").stat().st_size > 1000
    ckpt = checkpoints.Checkpoints(tmp_path / "checkpoints")
    assert ckpt.best_step("best_loss") == 1 and ckpt.best_step("best_f1") == 1
    assert ckpt.latest_step() == 3
    ckpt.close()
    assert np.sum(records[0]["val_confusion"]) == data.val_size
    np.testing.assert_allclose(
        np.trace(records[0]["val_confusion"]) / data.val_size, records[0]["val_accuracy"], rtol=1e-6
    )
    # an existing run is not overwritten without --resume, nor resumed with other settings
    with pytest.raises(ValueError, match="--resume"):
        loop_lib.train_and_evaluate(config, str(tmp_path), data=data, log=lambda s: None)
    with pytest.raises(ValueError, match=r"differ .* lr=0.1 \(was 0.0\)"):
        loop_lib.train_and_evaluate(
            dataclasses.replace(config, resume=True, lr=0.1),
            str(tmp_path),
            data=data,
            log=lambda s: None,
        )
    assert json.loads((tmp_path / "config.json").read_text())["lr"] == 0.0


def test_accumulation_updates_every_n_steps_and_bfloat16_compute():
    config = _config(model="lenet", accum=2, dtype="bfloat16", lr=1e-2)
    state = _state(config)
    step = _jitted_step(config)
    batches = FakeInput().train_batches(0)
    kernels = [np.asarray(state.params["fc3"]["kernel"][...])]
    for _ in range(4):
        state, m = step(state, next(batches), jax.random.key(0))
        kernels.append(np.asarray(state.params["fc3"]["kernel"][...]))
        assert np.isfinite(float(m.loss_sum))
    # MultiSteps: the parameters move on the 2nd and 4th micro-batch only
    moved = [not np.array_equal(a, b) for a, b in zip(kernels, kernels[1:], strict=False)]
    assert moved == [False, True, False, True]
    assert {x.dtype for x in jax.tree.leaves(state.params)} == {np.dtype("float32")}


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_accumulated_micro_batches_equal_one_big_batch_without_batchnorm(optimizer):
    """--accum N over N micro-batches == one step on their concatenation (LeNet has no BatchNorm,
    so the only difference is the order of the float32 sums)."""
    batch = next(FakeInput().train_batches(0))
    micro = [{k: v[i::2] for k, v in batch.items()} for i in range(2)]  # two halves of 4
    big = {k: np.concatenate([m[k] for m in micro]) for k in batch}
    accum = _config(model="lenet", accum=2, optimizer=optimizer, lr=0.05)
    plain = _config(model="lenet", accum=1, optimizer=optimizer, lr=0.05)
    s_accum, s_plain = _state(accum), _state(plain)
    np.testing.assert_array_equal(
        s_accum.params["fc3"]["kernel"][...], s_plain.params["fc3"]["kernel"][...]
    )
    step_accum, step_plain = _jitted_step(accum), _jitted_step(plain)
    for _ in range(2):  # two real optimiser steps
        for m in micro:
            s_accum, _ = step_accum(s_accum, m, jax.random.key(0))
        s_plain, _ = step_plain(s_plain, big, jax.random.key(0))
    for a, b in zip(jax.tree.leaves(s_accum.params), jax.tree.leaves(s_plain.params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    moved = max(
        float(jnp.max(jnp.abs(a - b)))
        for a, b in zip(
            jax.tree.leaves(s_plain.params), jax.tree.leaves(_state(plain).params), strict=True
        )
    )
    assert moved > 1e-3  # the steps did something


def test_resume_edges_of_the_contract(tmp_path):
    """README's resume contract at its edges: a longer patience restarts a run that stopped early;
    a run that saved no epoch resumes from epoch 1; epochs recorded without a checkpoint are lost,
    which is an error, not a fresh start."""
    data = FakeInput()
    quiet = lambda s: None  # noqa: E731
    stopped = _config(model="lenet", lr=0.0, epochs=6, early_stopping=1)
    loop_lib.train_and_evaluate(stopped, str(tmp_path / "a"), data=data, log=quiet)
    assert len(open(tmp_path / "a" / "metrics.jsonl").readlines()) == 2  # stopped after epoch 2
    again = dataclasses.replace(stopped, early_stopping=3, resume=True)
    loop_lib.train_and_evaluate(again, str(tmp_path / "a"), data=data, log=quiet)
    assert len(open(tmp_path / "a" / "metrics.jsonl").readlines()) == 4  # 2 more, then stopped

    config = _config(epochs=1)
    (tmp_path / "b").mkdir()
    run_dir.write_config(str(tmp_path / "b"), config)  # what a run killed in epoch 1 leaves
    with pytest.raises(ValueError, match="already holds a run"):
        loop_lib.train_and_evaluate(config, str(tmp_path / "b"), data=data, log=quiet)
    logs = []
    resumed = dataclasses.replace(config, resume=True)
    loop_lib.train_and_evaluate(resumed, str(tmp_path / "b"), data=data, log=logs.append)
    assert any("no finished epoch: starting its run from epoch 1" in line for line in logs)
    assert len(open(tmp_path / "b" / "metrics.jsonl").readlines()) == 1

    import shutil

    shutil.rmtree(tmp_path / "b" / "checkpoints")
    with pytest.raises(ValueError, match="records finished epochs but .* holds no checkpoint"):
        loop_lib.train_and_evaluate(resumed, str(tmp_path / "b"), data=data, log=quiet)
    assert len(open(tmp_path / "b" / "metrics.jsonl").readlines()) == 1  # nothing overwritten
