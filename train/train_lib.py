"""The training loop: TrainState, pure jitted train/eval steps, and `train_and_evaluate`.

Shaped like flax's imagenet example. The model lives in a `TrainState` pytree as NNX state
(`nnx.split(model, nnx.Param, nnx.BatchStat)`) with the graphdef and optimiser as static fields;
`train_step` merges the model inside the jitted function, so the step is a pure function of
`(state, batch, key)`. Per-step keys are `fold_in(key, state.step)`. Metrics are summed on device
over an epoch and fetched once per epoch. The learning rate lives in the optimiser state and is set
on the host once per epoch. Data parallelism only needs shardings on the batch and state (one loop,
batch-leading axes, no pmap).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx

import jaxloss
from train import checkpoints, losses, metrics, models, optim, schedules
from train.config import Config

__all__ = [
    "LoopState",
    "TrainState",
    "create_train_state",
    "evaluate",
    "eval_step",
    "make_schedule",
    "train_and_evaluate",
    "train_step",
]

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training, as one pytree.

    Attributes:
      step: int32 scalar, train steps (micro-batches) taken.
      params: `nnx.State` of the model's `nnx.Param`s (float32).
      batch_stats: `nnx.State` of the BatchNorm running statistics (empty for models without BN).
      opt_state: the optax state (holds the learning rate).
      graphdef: the model's static structure (not a pytree leaf).
      tx: the optax transformation (not a pytree leaf).
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    graphdef: Any = flax.struct.field(pytree_node=False)
    tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

    def model(self) -> nnx.Module:
        """The NNX module with this state's variables."""
        return nnx.merge(self.graphdef, self.params, self.batch_stats)


def create_train_state(
    config: Config, *, num_classes: int, image_shape: tuple[int, int, int], key: jax.Array
) -> TrainState:
    """Initialises the model (under `jit`, so it is fast) and the optimiser.

    Args:
      config: the run's configuration (model, width, dtype, optimiser settings).
      num_classes: number of classes.
      image_shape: `(H, W, C)`.
      key: parameter initialisation key (an RBG key, `jax.random.key(seed, impl="rbg")`, compiles
        much faster than a threefry one for deep models).

    Returns:
      A `TrainState` at step 0.

    Examples:
      >>> s = jax.eval_shape(lambda k: create_train_state(
      ...     Config(model="lenet", width=2), num_classes=3, image_shape=(8, 8, 1), key=k),
      ...     jax.random.key(0))
      >>> s.step.dtype, s.params["fc3"]["kernel"].shape
      (dtype('int32'), (84, 3))
    """
    tx = _optimizer(
        config.optimizer,
        learning_rate=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov,
        weight_decay=config.weight_decay,
        accum_steps=config.accum,
    )
    if config.freeze_backbone:
        from train import finetune

        tx = finetune.freeze_backbone(tx)  # only the classifier head trains
    graphdef, init = _initializer(
        config.model, num_classes, tuple(image_shape), config.dtype, config.width, tx
    )
    params, batch_stats, opt_state = init(key)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=opt_state,
        graphdef=graphdef,
        tx=tx,
    )


# Cached so that repeated runs in one process (tests, sweeps) reuse the same static objects and
# hence the compiled functions.
_optimizer = functools.lru_cache(maxsize=16)(optim.create_optimizer)
_loss = functools.lru_cache(maxsize=16)(losses.create_loss)


@functools.lru_cache(maxsize=16)
def _initializer(
    model: str,
    num_classes: int,
    image_shape: tuple[int, int, int],
    dtype: str,
    width: int | None,
    tx: optax.GradientTransformation,
):
    build = functools.partial(
        models.create_model,
        model,
        num_classes=num_classes,
        image_shape=image_shape,
        dtype=_DTYPES[dtype],
        width=width,
    )
    graphdef, _, _, rest = nnx.split(
        nnx.eval_shape(lambda: build(rngs=nnx.Rngs(0))), nnx.Param, nnx.BatchStat, ...
    )
    if jax.tree.leaves(rest):
        raise ValueError(f"model {model!r} holds state other than params and batch stats")

    @jax.jit
    def init(key):
        _, params, batch_stats, _ = nnx.split(
            build(rngs=nnx.Rngs(key)), nnx.Param, nnx.BatchStat, ...
        )
        return params, batch_stats, tx.init(params)

    return graphdef, init


@functools.lru_cache(maxsize=16)
def _compiled_steps(loss_fn: losses.LossFn, num_classes: int, disturb_label: float):
    # The state's buffers are donated: the step updates them in place (CPU included).
    train_fn = jax.jit(
        functools.partial(
            train_step, loss_fn=loss_fn, num_classes=num_classes, disturb_label=disturb_label
        ),
        donate_argnums=0,
    )
    eval_fn = jax.jit(functools.partial(eval_step, loss_fn=loss_fn))
    return train_fn, eval_fn


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    key: jax.Array,
    *,
    loss_fn: losses.LossFn,
    num_classes: int,
    disturb_label: float = 0.0,
) -> tuple[TrainState, metrics.Metrics]:
    """One optimiser (or accumulation micro-) step; pure, meant for `jax.jit`.

    Args:
      state: the train state.
      batch: `{"image": float32 (B, H, W, C), "label": int32 (B,), "mask": bool (B,)}`.
      key: the run's base key; this step uses `fold_in(key, state.step)`.
      loss_fn: from `train.losses.create_loss`.
      num_classes: number of classes (for DisturbLabel and the confusion matrix).
      disturb_label: DisturbLabel alpha in percent (0 disables it).

    Returns:
      `(new_state, batch_metrics)`; metrics are computed against the true (undisturbed) labels,
      with the loss on the labels actually trained on.

    Examples:
      >>> cfg = Config(model="lenet", width=2)
      >>> key = jax.random.key(0)
      >>> state = jax.eval_shape(lambda k: create_train_state(
      ...     cfg, num_classes=3, image_shape=(8, 8, 1), key=k), key)
      >>> batch = {"image": jnp.zeros((4, 8, 8, 1)), "label": jnp.zeros(4, jnp.int32),
      ...          "mask": jnp.ones(4, bool)}
      >>> step = functools.partial(train_step, loss_fn=losses.create_loss("ce", num_classes=3),
      ...                          num_classes=3, disturb_label=10.0)
      >>> new_state, m = jax.eval_shape(step, state, batch, key)
      >>> m.confusion.shape, new_state.params["fc3"]["kernel"].shape
      ((3, 3), (84, 3))
    """
    step_key = jax.random.fold_in(key, state.step)
    dropout_key, disturb_key = jax.random.split(step_key)
    labels = batch["label"]
    mask = batch.get("mask")
    targets = labels
    if disturb_label > 0:
        targets = jaxloss.disturb_labels(
            disturb_key, labels, alpha=disturb_label, num_classes=num_classes
        )

    def compute_loss(params, batch_stats):
        # copy=True: fresh Variables at this trace level, so BatchNorm may update them under grad
        model = nnx.merge(state.graphdef, params, batch_stats, copy=True)
        logits = model(batch["image"], train=True, dropout_key=dropout_key)
        loss = loss_fn(logits, targets, mask)
        return loss, (logits, nnx.state(model, nnx.BatchStat))

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(compute_loss, has_aux=True)(
        state.params, state.batch_stats
    )
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(
        step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
    )
    return new_state, metrics.batch_metrics(logits, labels, loss, mask)


def eval_step(
    state: TrainState, batch: dict[str, jax.Array], *, loss_fn: losses.LossFn
) -> metrics.Metrics:
    """Metrics of one evaluation batch (running BatchNorm statistics, no dropout); pure.

    Masked (padding) examples count neither in the loss nor in the confusion matrix.

    Examples:
      >>> state = jax.eval_shape(lambda k: create_train_state(
      ...     Config(model="lenet", width=2), num_classes=3, image_shape=(8, 8, 1), key=k),
      ...     jax.random.key(0))
      >>> batch = {"image": jnp.zeros((4, 8, 8, 1)), "label": jnp.zeros(4, jnp.int32)}
      >>> jax.eval_shape(functools.partial(
      ...     eval_step, loss_fn=losses.create_loss("ce", num_classes=3)), state, batch).count.dtype
      dtype('float32')
    """
    logits = state.model()(batch["image"], train=False)
    mask = batch.get("mask")
    return metrics.batch_metrics(
        logits, batch["label"], loss_fn(logits, batch["label"], mask), mask
    )


def evaluate(
    eval_fn: Callable[..., metrics.Metrics],
    state: TrainState,
    batches: Iterable[dict[str, Any]],
    num_classes: int,
) -> metrics.Metrics:
    """Sums `eval_fn(state, batch)` over `batches` on device (no host sync).

    Examples:
      >>> one = metrics.Metrics(jnp.float32(0.5), jnp.float32(2.0), jnp.eye(2, dtype=jnp.int32))
      >>> total = evaluate(lambda state, batch: one, None, [{}] * 3, 2)
      >>> float(total.count), total.confusion.tolist()
      (6.0, [[3, 0], [0, 3]])
    """
    total = metrics.empty_metrics(num_classes)
    for batch in batches:
        total = total + eval_fn(state, batch)
    return total


class _Scheduler:
    """Host-side LR per epoch: a `epoch -> lr` schedule or a ReduceLROnPlateau state machine."""

    def __init__(self, config: Config):
        self.plateau = None
        self.fn = None
        if config.schedule == "plateau":
            self.plateau = schedules.reduce_lr_on_plateau(
                config.lr,
                mode=config.plateau_mode,
                factor=config.plateau_factor,
                patience=config.plateau_patience,
                threshold=config.plateau_threshold,
                cooldown=config.plateau_cooldown,
                min_lr=config.plateau_min_lr,
            )
        else:
            self.fn = make_schedule(config)

    def init(self) -> list[Any] | None:
        return None if self.plateau is None else list(self.plateau.init())

    def lr(self, epoch: int, plateau_state: list[Any] | None) -> float:
        if self.plateau is None:
            return float(self.fn(epoch))
        return float(self._state(plateau_state).lr)

    def update(self, plateau_state, val_loss: float, val_f1: float, mode_metric: str):
        if self.plateau is None:
            return None
        metric = val_loss if mode_metric == "min" else val_f1
        return list(self.plateau.update(self._state(plateau_state), metric))

    def _state(self, plateau_state):
        return type(self.plateau.init())(*plateau_state)


def make_schedule(config: Config) -> Callable[[int], float]:
    """The `epoch -> lr` function of a "constant", "step" or "cosine" schedule.

    Examples:
      >>> f = make_schedule(Config(lr=0.1, schedule="step", step_size=2, gamma=0.5))
      >>> [f(e) for e in range(5)]
      [0.1, 0.1, 0.05, 0.05, 0.025]
    """
    if config.schedule == "step":
        return schedules.step_lr(config.lr, config.step_size, config.gamma)
    if config.schedule == "cosine":
        return schedules.cosine_annealing_lr(config.lr, config.t_max_or_epochs, config.eta_min)
    if config.schedule == "constant":
        return schedules.constant_lr(config.lr)
    raise ValueError(f"{config.schedule=} is not an epoch -> lr schedule")


@dataclasses.dataclass
class LoopState:
    """Host-side loop state, saved as JSON in the latest checkpoint.

    Examples:
      >>> LoopState.from_dict(LoopState(epoch=2).to_dict()) == LoopState(epoch=2)
      True

    Attributes:
      epoch: epochs completed.
      plateau: ReduceLROnPlateau state as a list (None for other schedules).
      best_val_loss, best_val_f1: best values so far.
      bad_epochs: epochs since the validation loss last improved (early stopping).
      stopped: whether early stopping ended the run.
      history: one metrics record per completed epoch.
    """

    epoch: int = 0
    plateau: list[Any] | None = None
    best_val_loss: float = math.inf
    best_val_f1: float = -math.inf
    bad_epochs: int = 0
    stopped: bool = False
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("best_val_loss", "best_val_f1"):  # JSON has no infinity
            d[k] = None if math.isinf(d[k]) else d[k]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LoopState:
        d = dict(d)
        d["best_val_loss"] = math.inf if d["best_val_loss"] is None else d["best_val_loss"]
        d["best_val_f1"] = -math.inf if d["best_val_f1"] is None else d["best_val_f1"]
        return cls(**d)


# Fields that may change when a run is resumed; any other difference is a different run.
_RESUMABLE = (
    "resume",
    "export_torch",
    "epochs",
    "early_stopping",
    "limit_train_batches",
    "plot",
    "cache_dir",
    "data_dir",
)


def _check_same_run(config: Config, workdir: str) -> None:
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return
    with open(path) as f:
        old = Config.from_json(f.read())
    differ = [
        f.name
        for f in dataclasses.fields(Config)
        if f.name not in _RESUMABLE and getattr(old, f.name) != getattr(config, f.name)
    ]
    if differ:
        raise ValueError(
            f"--resume with settings that differ from {path}: "
            + ", ".join(
                f"{name}={getattr(config, name)!r} (was {getattr(old, name)!r})" for name in differ
            )
        )


def _write_jsonl(path: str, records: list[dict[str, Any]]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, path)


def _progress(iterable, total: int, desc: str):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency of the trainer
        return iterable
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        leave=False,
        file=sys.stderr,
        dynamic_ncols=True,
        disable=None,
    )


def _limit(batches, n: int | None):
    for i, b in enumerate(batches):
        if n is not None and i >= n:
            return
        yield b


def _export_torch(
    config: Config, ckpt: checkpoints.Checkpoints, state: TrainState, log: Callable[[str], None]
) -> None:
    """Writes the best-by-val-loss state (else the last) as a torch state_dict."""
    from train import port

    best_step = ckpt.best_step("best_loss")
    if best_step is not None:
        state = ckpt.restore_best("best_loss", state)
    # torch's num_batches_tracked counts train-mode forward passes: this run's micro-steps
    state_dict = port.to_torch(
        state.params,
        state.batch_stats,
        layout=port.LAYOUTS[config.model],
        num_batches_tracked=int(state.step),
    )
    port.save_state_dict(state_dict, config.export_torch)
    which = f"best val loss, epoch {best_step}" if best_step is not None else "last epoch"
    log(f"exported the model ({which}) as a torch state_dict to {config.export_torch}")


def train_and_evaluate(
    config: Config, workdir: str, *, data: Any | None = None, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Trains and evaluates a model; writes config.json, metrics.jsonl, checkpoints/, curves.png.

    Args:
      config: the run's configuration.
      workdir: output directory (created).
      data: an already built `train.data.Input` (default: built from `config`).
      log: where one-line messages go.

    Returns:
      The last epoch's metrics record, plus `"test_*"` metrics of the best-by-val-loss state
      when the dataset has a test split and `"workdir"`.

    Raises:
      ValueError: bad configuration, no validation split, or an existing run in `workdir`
        without `config.resume` (train.data.DataError, a ValueError, for unreadable data).

    Examples:
      >>> import tempfile
      >>> summary = train_and_evaluate(Config(epochs=1), tempfile.mkdtemp())  # doctest: +SKIP
      >>> summary["val_accuracy"] > 0.4  # doctest: +SKIP
      True
    """
    workdir = os.path.abspath(workdir)
    if data is None:
        from train import data as data_lib

        data = data_lib.build_input(
            dataset=config.dataset,
            data_dir=config.data_dir,
            batch_size=config.batch_size,
            eval_batch_size=config.eval_batch_size,
            val_fraction=config.val_fraction,
            imbalance=config.imbalance,
            augment=config.augment,
            image_size=config.image_size,
            seed=config.seed,
            cache_dir=config.cache_dir,
        )
    if data.val_size == 0:
        raise ValueError(
            "the run needs a validation split: set val_fraction > 0, "
            f"got val_fraction={config.val_fraction}"
        )
    num_classes = data.num_classes
    loss_fn = _loss(
        config.loss,
        num_classes=num_classes,
        focal_gamma=config.focal_gamma,
        focal_alpha=config.focal_alpha,
        label_smoothing=config.label_smoothing,
        smoothing_spread=config.smoothing_spread,
        f1_epsilon=config.f1_epsilon,
    )
    scheduler = _Scheduler(config)
    torch_weights = None
    if config.init_from:  # fine-tuning (seed 000): the width comes from the checkpoint
        from train import port

        torch_weights = port.load_state_dict(config.init_from)
        width = port.checkpoint_info(torch_weights, layout=port.LAYOUTS[config.model])["width"]
        if width != config.width:
            log(f"init-from: width {width} from the checkpoint (not {config.width})")
            config = dataclasses.replace(config, width=width)

    # Parameters come from an RBG key (XLA's RngBitGenerator): a ResNet's threefry initialisers
    # take ~4x longer to compile on CPU (14 s vs 3 s here). Values are reproducible on a given
    # platform. Dropout and DisturbLabel use threefry keys folded with the step.
    init_key = jax.random.key(config.seed, impl="rbg")
    step_key = jax.random.fold_in(jax.random.key(config.seed), 1)
    state = create_train_state(
        config, num_classes=num_classes, image_shape=data.image_shape, key=init_key
    )
    if torch_weights is not None:
        from train import finetune

        state = finetune.init_from_torch(
            state, torch_weights, model=config.model, num_classes=num_classes, log=log
        )
    os.makedirs(workdir, exist_ok=True)  # only once data and model are known to be good
    ckpt = checkpoints.Checkpoints(os.path.join(workdir, "checkpoints"))
    loop = LoopState(plateau=scheduler.init())
    if ckpt.latest_step() is not None:
        try:
            if not config.resume:
                raise ValueError(
                    f"{workdir} already holds checkpoints: pass --resume to continue "
                    "the run or choose another --workdir"
                )
            _check_same_run(config, workdir)
        except ValueError:
            ckpt.close()
            raise
        state, loop_dict = ckpt.restore_latest(state)
        loop = LoopState.from_dict(loop_dict)
        log(f"resumed from {ckpt.latest.directory} after epoch {loop.epoch}")
    config.write(workdir)

    train_fn, eval_fn = _compiled_steps(loss_fn, num_classes, config.disturb_label)
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    steps = data.steps_per_epoch
    if config.limit_train_batches is not None:
        steps = min(steps, config.limit_train_batches)
    if steps == 0:
        raise ValueError(
            f"batch_size={config.batch_size} is larger than the training set "
            f"({data.train_size} examples)"
        )

    while loop.epoch < config.epochs and not loop.stopped:
        epoch = loop.epoch
        start = time.perf_counter()
        lr = scheduler.lr(epoch, loop.plateau)
        state = state.replace(opt_state=optim.set_learning_rate(state.opt_state, lr))
        train_sums = metrics.empty_metrics(num_classes)
        batches = _limit(data.train_batches(epoch), steps)
        for batch in _progress(batches, steps, f"epoch {epoch + 1}/{config.epochs}"):
            state, m = train_fn(state, batch, step_key)
            train_sums = train_sums + m
        val_sums = evaluate(eval_fn, state, data.eval_batches("val"), num_classes)
        train_m, val_m = jax.device_get((train_sums, val_sums))  # the epoch's one host sync
        record = {
            "epoch": epoch + 1,
            "lr": lr,
            **metrics.summarize(train_m, "train_"),
            **metrics.summarize(val_m, "val_", confusion=num_classes <= 100),
        }
        record["time_s"] = round(time.perf_counter() - start, 3)

        loop.epoch = epoch + 1
        loop.plateau = scheduler.update(
            loop.plateau, record["val_loss"], record["val_f1"], config.plateau_mode
        )
        improved_loss = record["val_loss"] < loop.best_val_loss
        improved_f1 = record["val_f1"] > loop.best_val_f1
        if improved_loss:
            loop.best_val_loss, loop.bad_epochs = record["val_loss"], 0
        else:
            loop.bad_epochs += 1
        if improved_f1:
            loop.best_val_f1 = record["val_f1"]
        loop.stopped = 0 < config.early_stopping <= loop.bad_epochs
        loop.history.append(record)

        # Best checkpoints first: a kill between the saves then repeats this epoch on resume.
        if improved_loss:
            ckpt.save_best("best_loss", loop.epoch, state, record)
        if improved_f1:
            ckpt.save_best("best_f1", loop.epoch, state, record)
        ckpt.save_latest(loop.epoch, state, loop.to_dict())
        _write_jsonl(metrics_path, loop.history)
        log(
            f"epoch {loop.epoch}/{config.epochs}  lr {lr:.3g}  "
            f"train loss {record['train_loss']:.4f} acc {record['train_accuracy']:.4f}  "
            f"val loss {record['val_loss']:.4f} acc {record['val_accuracy']:.4f} "
            f"f1 {record['val_f1']:.4f}  ({record['time_s']:.1f}s)"
        )
        if loop.stopped:
            log(f"early stopping: val loss has not improved for {loop.bad_epochs} epochs")

    summary: dict[str, Any] = dict(loop.history[-1]) if loop.history else {}
    if data.test_size > 0 and ckpt.best_step("best_loss") is not None:
        best = ckpt.restore_best("best_loss", state)
        test_m = jax.device_get(evaluate(eval_fn, best, data.eval_batches("test"), num_classes))
        summary.update(metrics.summarize(test_m, "test_"))
        log(
            f"test (best val loss, epoch {ckpt.best_step('best_loss')}): "
            f"loss {summary['test_loss']:.4f} acc {summary['test_accuracy']:.4f} "
            f"f1 {summary['test_f1']:.4f}"
        )
    if config.export_torch:
        _export_torch(config, ckpt, state, log)
        summary["export_torch"] = os.path.abspath(config.export_torch)
    ckpt.close()
    if config.plot and loop.history:
        from train import plots

        plots.plot_curves(loop.history, os.path.join(workdir, "curves.png"))
    summary["workdir"] = workdir
    return summary
