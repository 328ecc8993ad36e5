"""The jitted step: `TrainState`, `create_train_state`, `train_step`, `eval_step`, `evaluate`.

Shaped like flax's imagenet example. The model lives in a `TrainState` pytree as NNX state
(`nnx.split(model, nnx.Param, nnx.BatchStat)`) with the graphdef and optimiser as static fields;
`train_step` merges the model inside the jitted function, so the step is a pure function of
`(state, batch, key)`. Per-step keys are `fold_in(key, state.step)`. Metrics are summed on device
and fetched by the caller (`train.loop`, once per epoch). The learning rate lives in the optimiser
state and is set on the host (`train.optim.set_learning_rate`). Data parallelism only needs
shardings on the batch and state (batch-leading axes, no pmap).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx

import jaxloss
from train import batch_norm, losses, metrics, models, optim
from train.config import Config

if TYPE_CHECKING:
    from train.parallel import Devices

__all__ = [
    "TrainState",
    "compiled_steps",
    "create_train_state",
    "eval_step",
    "evaluate",
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
    config: Config,
    *,
    num_classes: int,
    image_shape: tuple[int, int, int],
    key: jax.Array,
    batch_norm_groups: int = 1,
) -> TrainState:
    """Initialises the model (under `jit`, so it is fast) and the optimiser.

    Args:
      config: the run's configuration (model, width, dtype, optimiser settings).
      num_classes: number of classes.
      image_shape: `(H, W, C)`.
      key: parameter initialisation key (an RBG key, `jax.random.key(seed, impl="rbg")`, compiles
        much faster than a threefry one for deep models).
      batch_norm_groups: train-mode BatchNorm statistics per this many groups of the batch (the
        devices, for per-device BatchNorm: `train.batch_norm.BatchNorm`'s `groups`); 1 is global.

    Returns:
      A `TrainState` at step 0.

    Examples:
      >>> s = jax.eval_shape(lambda k: create_train_state(
      ...     Config(model="lenet", width=2), num_classes=3, image_shape=(8, 8, 1), key=k),
      ...     jax.random.key(0))
      >>> s.step.dtype, s.params["fc3"]["kernel"].shape
      (dtype('int32'), (84, 3))
    """
    tx = optim.optimizer_from_config(config)
    graphdef, init = _initializer(
        config.model,
        num_classes,
        tuple(image_shape),
        config.dtype,
        config.width,
        tx,
        batch_norm_groups,
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


@functools.lru_cache(maxsize=16)
def _initializer(
    model_name: str,
    num_classes: int,
    image_shape: tuple[int, int, int],
    dtype: str,
    width: int | None,
    tx: optax.GradientTransformation,
    batch_norm_groups: int,
):
    def build(rngs: nnx.Rngs) -> nnx.Module:
        model = models.create_model(
            model_name,
            num_classes=num_classes,
            image_shape=image_shape,
            dtype=_DTYPES[dtype],
            width=width,
            rngs=rngs,
        )
        return batch_norm.set_groups(model, batch_norm_groups)

    graphdef, _, _, rest = nnx.split(
        nnx.eval_shape(lambda: build(rngs=nnx.Rngs(0))), nnx.Param, nnx.BatchStat, ...
    )
    if jax.tree.leaves(rest):
        raise ValueError(f"model {model_name!r} holds state other than params and batch stats")

    @jax.jit
    def init(key):
        _, params, batch_stats, _ = nnx.split(
            build(rngs=nnx.Rngs(key)), nnx.Param, nnx.BatchStat, ...
        )
        return params, batch_stats, tx.init(params)

    return graphdef, init


@functools.lru_cache(maxsize=16)
def compiled_steps(
    loss_fn: losses.LossFn,
    num_classes: int,
    disturb_label: float,
    devices: Devices | None = None,
) -> tuple[Callable[..., tuple[TrainState, metrics.Metrics]], Callable[..., metrics.Metrics]]:
    """`(train_fn, eval_fn)`: `train_step` and `eval_step` under `jax.jit`, cached per loss.

    `train_fn(state, batch, key)` donates `state`'s buffers (the step updates them in place, CPU
    included): do not use `state` after the call. `eval_fn(state, batch)` returns the batch's
    `train.metrics.Metrics`. The same arguments give the same compiled functions, so repeated runs
    in one process (tests, sweeps) do not recompile.

    With `devices` (a `train.parallel.Devices`), both are jitted for its mesh: the batch split
    along its first axis, the state, key and metrics replicated. The functions are the same; XLA
    partitions them, so the results are those of the global batch on any number of devices.

    Examples:
      >>> loss_fn = losses.create_loss("ce", num_classes=3)
      >>> compiled_steps(loss_fn, 3, 0.0) is compiled_steps(loss_fn, 3, 0.0)
      True
    """
    train = functools.partial(
        train_step, loss_fn=loss_fn, num_classes=num_classes, disturb_label=disturb_label
    )
    evaluate_batch = functools.partial(eval_step, loss_fn=loss_fn)
    if devices is None:
        return jax.jit(train, donate_argnums=0), jax.jit(evaluate_batch)
    rep, split = devices.replicated, devices.batch_sharding
    train_fn = jax.jit(
        train, in_shardings=(rep, split, rep), out_shardings=(rep, rep), donate_argnums=0
    )
    eval_fn = jax.jit(evaluate_batch, in_shardings=(rep, split), out_shardings=rep)
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
