"""The epoch loop: how a run starts (resume, init-from or fresh), trains, saves and finishes.

`train_and_evaluate(config, workdir)` is the whole run, one screen: it holds the workdir's lock,
decides how training starts (`_initialize`, in big_vision's order: resume from the workdir, else
initialise from a torch checkpoint, else fresh, each loading once), runs epochs until
`config.epochs` or early stopping, and at the end evaluates the best-by-val-loss state on the
test split, exports it to torch if asked and plots the curves.

Checkpoint policy, per epoch: the best-by-loss and best-by-F1 states when they improve, then the
latest state with the loop state (`LoopState`, metrics history included), then `metrics.jsonl`,
which is rewritten from that history. The latest checkpoint is the commit point: a kill at any
moment resumes from the last committed epoch, and the resume rewrites `metrics.jsonl` from the
history it restored, so the two never disagree.

Devices (`train.parallel`): the run uses every device of every process unless `config.devices`
says fewer. Each batch is split over the mesh, the state is replicated, and the numbers are those of
the global batch. With several processes each one loads its rows of every batch, all of them save
and restore the checkpoints (orbax), and process 0 alone holds the workdir's lock and writes
`config.json`, `metrics.jsonl`, the plot, the torch export and the log lines.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import jax

from train import checkpoints, losses, metrics, optim, parallel, schedules, step
from train import workdir as run_dir
from train.config import Config

__all__ = ["LoopState", "train_and_evaluate"]


@dataclasses.dataclass
class LoopState:
    """Host-side loop state, saved as JSON in the latest checkpoint.

    Attributes:
      epoch: epochs completed.
      plateau: the schedule's state (`train.schedules.EpochSchedule`; None but for plateau).
      best_val_loss, best_val_f1: best values so far.
      bad_epochs: epochs since the validation loss last improved (early stopping).
      stopped: whether early stopping ended the run.
      history: one metrics record per completed epoch.

    Examples:
      >>> LoopState.from_dict(LoopState(epoch=2).to_dict()) == LoopState(epoch=2)
      True
    """

    epoch: int = 0
    plateau: list[Any] | None = None
    best_val_loss: float = math.inf
    best_val_f1: float = -math.inf
    bad_epochs: int = 0
    stopped: bool = False
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (infinities as None)."""
        d = dataclasses.asdict(self)
        for k in ("best_val_loss", "best_val_f1"):  # JSON has no infinity
            d[k] = None if math.isinf(d[k]) else d[k]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LoopState:
        """Inverse of `to_dict`."""
        d = dict(d)
        d["best_val_loss"] = math.inf if d["best_val_loss"] is None else d["best_val_loss"]
        d["best_val_f1"] = -math.inf if d["best_val_f1"] is None else d["best_val_f1"]
        return cls(**d)

    def after_epoch(self, record: dict[str, Any], early_stopping: int) -> tuple[bool, bool]:
        """Books a finished epoch; returns whether val loss and val F1 improved."""
        self.epoch = record["epoch"]
        improved_loss = record["val_loss"] < self.best_val_loss
        improved_f1 = record["val_f1"] > self.best_val_f1
        if improved_loss:
            self.best_val_loss, self.bad_epochs = record["val_loss"], 0
        else:
            self.bad_epochs += 1
        if improved_f1:
            self.best_val_f1 = record["val_f1"]
        self.stopped = 0 < early_stopping <= self.bad_epochs
        self.history.append(record)
        return improved_loss, improved_f1


def train_and_evaluate(
    config: Config, workdir: str, *, data: Any | None = None, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Trains and evaluates a model; writes config.json, metrics.jsonl, checkpoints/, curves.png.

    Args:
      config: the run's configuration; `config.resume` continues the run in `workdir` (its saved
        config must agree but for `train.workdir.RESUMABLE` fields).
      workdir: output directory (created, and locked for the duration of the run).
      data: an already built `train.data.Input` (default: `train.data.input_from_config`).
      log: where one-line messages go.

    Returns:
      The last epoch's metrics record, plus `"test_*"` metrics of the best-by-val-loss state
      when the dataset has a test split, and `"workdir"`.

    Raises:
      ValueError: bad configuration or data, an existing run in `workdir` without
        `config.resume`, no run with it, or another process using `workdir`
        (`train.workdir.WorkdirError`); a damaged checkpoint with no intact one to fall back to
        (`train.checkpoints.CheckpointError`).

    Examples:
      >>> import tempfile
      >>> summary = train_and_evaluate(Config(epochs=1), tempfile.mkdtemp())  # doctest: +SKIP
      >>> summary["val_accuracy"] > 0.4  # doctest: +SKIP
      True
    """
    workdir = os.path.abspath(workdir)
    devices = parallel.create_devices(config.devices)
    devices.check_same("configuration", config.to_json())
    if not devices.is_primary:
        log = _quiet
    if data is None:
        from train import data as data_lib

        data = data_lib.input_from_config(config)
    _check_data(config, data, devices)
    with _lock(workdir, devices):
        ckpt = checkpoints.Checkpoints(os.path.join(workdir, "checkpoints"), log=log)
        try:
            config, state, loop = _initialize(config, workdir, data, ckpt, devices, log)
            devices.barrier("jaxloss: every process has read the workdir")
            if devices.is_primary:
                run_dir.write_config(workdir, config)
                run_dir.write_metrics(workdir, loop.history)
            log(devices.describe(config.batch_size))
            state = _train(config, workdir, data, ckpt, state, loop, devices, log)
            summary = _finish(config, workdir, data, ckpt, state, loop, devices, log)
        finally:
            ckpt.close()
    return summary


def _quiet(message: str) -> None:
    """The log of processes other than 0: they would repeat process 0's lines."""


@contextlib.contextmanager
def _lock(workdir: str, devices: parallel.Devices):
    """The workdir's lock, held by process 0 (the others write only their checkpoint shards).

    With several processes all of them learn whether process 0 got it, so that none goes on
    alone into a collective that the others never reach.
    """
    with contextlib.ExitStack() as stack:
        error = None
        if devices.is_primary:
            try:
                stack.enter_context(run_dir.lock(workdir))
            except run_dir.WorkdirError as e:
                error = e
        else:
            os.makedirs(workdir, exist_ok=True)
        if not devices.all_ok(error is None):
            raise error or run_dir.WorkdirError(
                f"{workdir} is in use by another run (process 0 could not lock it)"
            )
        yield


def _check_data(config: Config, data: Any, devices: parallel.Devices) -> None:
    if data.val_size == 0:
        raise ValueError(
            "the run needs a validation split: set val_fraction > 0, "
            f"got val_fraction={config.val_fraction}"
        )
    if data.steps_per_epoch == 0:
        raise ValueError(
            f"batch_size={config.batch_size} is larger than the training set "
            f"({data.train_size} examples)"
        )
    parallel.check_divisible("batch_size", data.batch_size, devices.num_devices)
    parallel.check_divisible("eval_batch_size", data.eval_batch_size, devices.num_devices)


def _initialize(
    config, workdir, data, ckpt, devices, log
) -> tuple[Config, step.TrainState, LoopState]:
    """Decides how training starts. The order is important: resume, else init-from, else fresh."""
    # Parameters come from an RBG key (XLA's RngBitGenerator): a ResNet's threefry initialisers
    # take ~4x longer to compile on CPU (14 s vs 3 s here). Values are reproducible per platform.
    init_key = jax.random.key(config.seed, impl="rbg")
    schedule = schedules.create_schedule(config)

    def create(cfg: Config) -> step.TrainState:
        groups = devices.num_devices if cfg.batch_norm == "local" else 1
        return step.create_train_state(
            cfg,
            num_classes=data.num_classes,
            image_shape=data.image_shape,
            key=init_key,
            batch_norm_groups=groups,
        )

    saved = os.path.join(workdir, "config.json")
    if ckpt.latest_step() is not None or os.path.exists(saved):  # the workdir holds a run
        if not config.resume:
            raise run_dir.WorkdirError(
                f"{workdir} already holds a run: pass --resume to continue it or choose another "
                "--workdir"
            )
        notes: list[str] = []  # said after the line that says where the run resumes
        config = run_dir.resume_config(run_dir.read_config(workdir), config, log=notes.append)
        if ckpt.latest_step() is None:  # the run finished no epoch: nothing to restore
            _check_nothing_lost(workdir)
            log(f"{workdir} has no finished epoch: starting its run from epoch 1")
            return config, devices.replicate(create(config)), LoopState(plateau=schedule.init())
        abstract = jax.eval_shape(lambda: create(config))
        target = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=devices.replicated), abstract
        )
        state, loop_dict = ckpt.restore_latest(target)
        loop = LoopState.from_dict(loop_dict)
        loop.stopped = 0 < config.early_stopping <= loop.bad_epochs  # patience may have changed
        ckpt.discard_after(loop.epoch)  # best states of epochs that will run again
        log(f"resumed from {ckpt.latest.directory} after epoch {loop.epoch}")
        for note in notes:
            log(note)
        before = loop.history[-1].get("devices") if loop.history else None
        if config.batch_norm == "local" and before not in (None, devices.num_devices):
            log(
                f"warning: --batch-norm local: the run trained on {before} devices and goes on "
                f"on {devices.num_devices}, so BatchNorm now normalises groups of "
                f"{data.batch_size // devices.num_devices} examples, not "
                f"{data.batch_size // before}"
            )
        return config, state, loop
    if config.resume:
        raise run_dir.WorkdirError(f"--resume: {workdir} holds no run (no config.json)")
    if config.init_from:  # fine-tuning (seed 000): the width comes from the checkpoint
        from train.pytorch import init_from

        config, weights = init_from.load_init_weights(config, log)
        state = init_from.init_from_torch(
            create(config), weights, model=config.model, num_classes=data.num_classes, log=log
        )
        return config, devices.replicate(state), LoopState(plateau=schedule.init())
    return config, devices.replicate(create(config)), LoopState(plateau=schedule.init())


def _check_nothing_lost(workdir: str) -> None:
    path = os.path.join(workdir, "metrics.jsonl")
    if os.path.exists(path) and os.path.getsize(path) > 0:
        raise checkpoints.CheckpointError(
            f"{path} records finished epochs but {workdir}/checkpoints/latest holds no "
            "checkpoint: the run's state is lost (start a new --workdir)"
        )


def _train(config, workdir, data, ckpt, state, loop, devices, log) -> step.TrainState:
    """Runs epochs until `config.epochs` or early stopping; saves after each one."""
    num_classes = data.num_classes
    loss_fn = losses.loss_from_config(config, num_classes)
    train_fn, eval_fn = step.compiled_steps(loss_fn, num_classes, config.disturb_label, devices)
    train_rows = devices.rows(data.batch_size)
    schedule = schedules.create_schedule(config)
    step_key = jax.random.fold_in(jax.random.key(config.seed), 1)  # dropout, DisturbLabel
    steps = data.steps_per_epoch
    if config.limit_train_batches is not None:
        steps = min(steps, config.limit_train_batches)
    while loop.epoch < config.epochs and not loop.stopped:
        start = time.perf_counter()
        lr = schedule.lr(loop.plateau, loop.epoch)
        state = state.replace(opt_state=optim.set_learning_rate(state.opt_state, lr))
        train_sums = metrics.empty_metrics(num_classes)
        batches = _limit(_batches(data.train_batches, train_rows, loop.epoch), steps)
        desc = f"epoch {loop.epoch + 1}/{config.epochs}"
        for batch in _progress(batches, steps, desc, devices.is_primary):
            state, m = train_fn(state, devices.put_batch(batch), step_key)
            train_sums = train_sums + m
        val_sums = _evaluate(eval_fn, state, data, "val", devices)
        train_m, val_m = devices.fetch((train_sums, val_sums))  # the epoch's one host sync
        record = {
            "epoch": loop.epoch + 1,
            "lr": lr,
            **metrics.summarize(train_m, "train_"),
            **metrics.summarize(val_m, "val_", confusion=num_classes <= 100),
            "devices": devices.num_devices,
            "time_s": round(time.perf_counter() - start, 3),
        }
        loop.plateau = schedule.update(loop.plateau, record)
        improved_loss, improved_f1 = loop.after_epoch(record, config.early_stopping)
        # Best checkpoints first, then the latest (the commit point), then metrics.jsonl.
        if improved_loss:
            ckpt.save_best("best_loss", loop.epoch, state, record)
        if improved_f1:
            ckpt.save_best("best_f1", loop.epoch, state, record)
        ckpt.save_latest(loop.epoch, state, loop.to_dict())
        if devices.is_primary:
            run_dir.write_metrics(workdir, loop.history)
        log(_epoch_line(record, config.epochs))
        if loop.stopped:
            log(f"early stopping: val loss has not improved for {loop.bad_epochs} epochs")
    return state


def _evaluate(eval_fn, state, data, split: str, devices: parallel.Devices) -> metrics.Metrics:
    rows = devices.rows(data.eval_batch_size)
    batches = (devices.put_batch(b) for b in _batches(data.eval_batches, rows, split))
    return step.evaluate(eval_fn, state, batches, data.num_classes)


def _batches(method, rows: slice, arg):
    """`method(arg)`, or `method(arg, rows)` for a process that loads only some rows.

    An `Input`-like object of the caller's (`data=`) needs no `rows` argument in one process.
    """
    return method(arg) if rows.start == 0 and rows.stop is None else method(arg, rows)


def _finish(config, workdir, data, ckpt, state, loop, devices, log) -> dict[str, Any]:
    """Test metrics of the best-by-val-loss state, the torch export and the curves."""
    summary: dict[str, Any] = dict(loop.history[-1]) if loop.history else {}
    best_epoch = ckpt.best_step("best_loss")
    best = state
    if best_epoch is not None and (data.test_size > 0 or config.export_torch):
        best = ckpt.restore_best("best_loss", state)
    if data.test_size > 0 and best_epoch is not None:
        loss_fn = losses.loss_from_config(config, data.num_classes)
        _, eval_fn = step.compiled_steps(loss_fn, data.num_classes, config.disturb_label, devices)
        test_m = devices.fetch(_evaluate(eval_fn, best, data, "test", devices))
        summary.update(metrics.summarize(test_m, "test_"))
        log(
            f"test (best val loss, epoch {best_epoch}): loss {summary['test_loss']:.4f} "
            f"acc {summary['test_accuracy']:.4f} f1 {summary['test_f1']:.4f}"
        )
    if config.export_torch and devices.is_primary:
        from train.pytorch import init_from

        init_from.export_torch(best, config.export_torch, model=config.model)
        which = f"best val loss, epoch {best_epoch}" if best_epoch is not None else "last epoch"
        log(f"exported the model ({which}) as a torch state_dict to {config.export_torch}")
    if config.export_torch:
        summary["export_torch"] = os.path.abspath(config.export_torch)
    if config.plot and loop.history and devices.is_primary:
        from train import plots

        plots.plot_curves(loop.history, os.path.join(workdir, "curves.png"))
    summary["workdir"] = workdir
    return summary


def _epoch_line(r: dict[str, Any], epochs: int) -> str:
    return (
        f"epoch {r['epoch']}/{epochs}  lr {r['lr']:.3g}  "
        f"train loss {r['train_loss']:.4f} acc {r['train_accuracy']:.4f}  "
        f"val loss {r['val_loss']:.4f} acc {r['val_accuracy']:.4f} "
        f"f1 {r['val_f1']:.4f}  ({r['time_s']:.1f}s)"
    )


def _progress(iterable, total: int, desc: str, show: bool):
    from tqdm.auto import tqdm

    return tqdm(
        iterable,
        total=total,
        desc=desc,
        leave=False,
        file=sys.stderr,
        dynamic_ncols=True,
        disable=None if show else True,
    )


def _limit(batches, n: int):
    for i, b in enumerate(batches):
        if i >= n:
            return
        yield b
