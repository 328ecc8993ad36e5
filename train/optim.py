"""Optimisers with PyTorch semantics, an injectable learning rate and gradient accumulation.

``create_optimizer("sgd" | "adam" | "adamw", ...)`` returns an optax transformation that takes the
same steps as ``torch.optim.SGD`` / ``Adam`` / ``AdamW`` on the same parameters and gradients
(``parity_tests/test_optimizers_parity.py``: float64 to 1e-12, float32 to 2e-5). All three are
assembled from optax building blocks; the PyTorch conventions they reproduce:

* **SGD** (``dampening=0``): ``d = g + wd * p``; ``buf = momentum * buf + d`` with the first
  buffer equal to ``d`` (``optax.trace`` starts from zeros, which gives the same first buffer);
  ``nesterov`` steps along ``d + momentum * buf``. ``p -= lr * step``. So
  ``chain(add_decayed_weights(wd), trace(momentum, nesterov), scale_by_learning_rate(lr))``.
* **Adam**: ``weight_decay`` is PyTorch's L2 term added to the gradient *before* the moments
  (seed 004's ``Adam(weight_decay=1e-3)``): ``chain(add_decayed_weights(wd), adam(...))``, where
  ``adam`` is optax's ``chain(scale_by_adam, scale_by_learning_rate)`` with ``scale_by_adam``
  replaced by ``train.adam.scale_by_torch_adam``: optax computes the bias correction
  ``1 - b2**t`` in float32 from a rounded ``b2`` (6.4e-6 relative too small an update in the first
  steps at ``b2 = 0.999``), torch in double. ``eps`` is outside the square root in both.
* **AdamW**: decoupled decay ``p -= lr * (adam_step + wd * p)``, ``optax.adamw``'s chain with the
  same replacement. PyTorch's
  default ``weight_decay`` for AdamW is 0.01; here the ``weight_decay`` argument is used as given
  (default 0.0, which makes AdamW equal to Adam).

The learning rate lives in the optimiser *state* (``optax.inject_hyperparams``), so host code sets
it once per epoch with :func:`set_learning_rate` (e.g. from ``train.schedules``) and the jitted
train step sees it without recompiling. ``accum_steps > 1`` wraps the optimiser in
``optax.MultiSteps``: updates are zero for ``accum_steps - 1`` calls, then the inner optimiser
steps once with the *mean* of the accumulated gradients (PyTorch's accumulation loop with the loss
divided by ``accum_steps``), accumulated in the parameters' dtype (optax's default would be
float32 even for float64 parameters). The inner optimiser's step counter (Adam's bias correction)
advances once per real step.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from optax import tree_utils as otu

from jaxloss._validate import check_int, check_real
from train import adam

__all__ = [
    "OPTIMIZERS",
    "create_optimizer",
    "freeze_backbone",
    "get_learning_rate",
    "optimizer_from_config",
    "set_learning_rate",
]


def _torch_sgd(
    learning_rate: Any,
    *,
    momentum: float,
    nesterov: bool,
    weight_decay: float,
    b1: float,
    b2: float,
    eps: float,
) -> optax.GradientTransformation:
    """torch.optim.SGD(lr, momentum, dampening=0, weight_decay, nesterov)."""
    del b1, b2, eps
    parts = []
    if weight_decay:
        parts.append(optax.add_decayed_weights(weight_decay))  # d = g + wd * p
    # momentum 0: PyTorch keeps no buffer; optax.sgd(momentum=None) keeps none either.
    parts.append(optax.sgd(learning_rate, momentum=momentum or None, nesterov=nesterov))
    return optax.chain(*parts)


def _torch_adam(
    learning_rate: Any,
    *,
    momentum: float,
    nesterov: bool,
    weight_decay: float,
    b1: float,
    b2: float,
    eps: float,
) -> optax.GradientTransformation:
    """torch.optim.Adam(lr, betas=(b1, b2), eps, weight_decay) with L2 added to the gradient."""
    del momentum, nesterov
    parts = []
    if weight_decay:
        parts.append(optax.add_decayed_weights(weight_decay))  # g + wd * p, before the moments
    # optax.adam's own structure, chain(scale, lr), with torch's bias corrections (train/adam.py)
    scale = adam.scale_by_torch_adam(b1, b2, eps)
    parts.append(optax.chain(scale, optax.scale_by_learning_rate(learning_rate)))
    return optax.chain(*parts)


def _torch_adamw(
    learning_rate: Any,
    *,
    momentum: float,
    nesterov: bool,
    weight_decay: float,
    b1: float,
    b2: float,
    eps: float,
) -> optax.GradientTransformation:
    """torch.optim.AdamW(lr, betas=(b1, b2), eps, weight_decay): decoupled decay."""
    del momentum, nesterov
    return optax.chain(  # optax.adamw's structure, with torch's bias corrections
        adam.scale_by_torch_adam(b1, b2, eps),
        optax.add_decayed_weights(weight_decay),
        optax.scale_by_learning_rate(learning_rate),
    )


OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "sgd": _torch_sgd,
    "adam": _torch_adam,
    "adamw": _torch_adamw,
}
"""Registry: optimiser name -> factory ``(learning_rate, *, momentum, nesterov, weight_decay, b1,
b2, eps) -> optax.GradientTransformation`` (the LR not yet injected)."""


def create_optimizer(
    name: str,
    *,
    learning_rate: float,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    accum_steps: int = 1,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
) -> optax.GradientTransformation:
    r"""Builds a PyTorch-equivalent optimiser whose learning rate can change without recompiling.

    .. math::
      \text{SGD: } d_t = g_t + \lambda p_{t-1},\quad b_t = \mu b_{t-1} + d_t,\quad
      p_t = p_{t-1} - \eta\,(b_t \text{ or, nesterov, } d_t + \mu b_t)

    Args:
      name: ``"sgd"``, ``"adam"`` or ``"adamw"`` (keys of :data:`OPTIMIZERS`).
      learning_rate: initial learning rate, a finite float >= 0; stored in the optimiser state
        (``optax.inject_hyperparams``) in the parameters' dtype, changed with
        :func:`set_learning_rate`.
      momentum: SGD momentum >= 0 (0 disables it, as in PyTorch); ignored by Adam/AdamW.
      nesterov: Nesterov momentum, SGD only (requires ``momentum > 0``, as PyTorch).
      weight_decay: >= 0. SGD and Adam: L2 term ``weight_decay * p`` added to the gradient (PyTorch
        ``SGD`` / ``Adam``); AdamW: decoupled decay ``p -= lr * weight_decay * p``.
      accum_steps: number of micro-batches per optimiser step, an int >= 1; > 1 wraps the optimiser
        in ``optax.MultiSteps`` (mean of the micro-gradients).
      b1: Adam's first-moment decay, in [0, 1).
      b2: Adam's second-moment decay, in [0, 1).
      eps: Adam's denominator term, added outside the square root (PyTorch's), >= 0.

    Returns:
      An ``optax.GradientTransformation``. Its ``update`` needs ``params`` for weight decay (pass
      them always: the injected LR takes the parameters' dtype).

    Raises:
      ValueError: for an unknown ``name`` or an invalid argument (naming the argument and value).

    Examples:
      >>> import jax.numpy as jnp
      >>> tx = create_optimizer("sgd", learning_rate=0.1, momentum=0.9)
      >>> params = jnp.array([1.0, 2.0])
      >>> state = tx.init(params)
      >>> updates, state = tx.update(jnp.array([1.0, -1.0]), state, params)
      >>> updates
      Array([-0.1,  0.1], dtype=float32)
      >>> float(get_learning_rate(state))
      0.1
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer: got {name=}; expected one of {sorted(OPTIMIZERS)}")
    learning_rate = check_real("learning_rate", learning_rate, low=0.0)
    momentum = check_real("momentum", momentum, low=0.0)
    weight_decay = check_real("weight_decay", weight_decay, low=0.0)
    b1 = check_real("b1", b1, low=0.0, high=1.0, high_open=True)
    b2 = check_real("b2", b2, low=0.0, high=1.0, high_open=True)
    eps = check_real("eps", eps, low=0.0)
    if not isinstance(nesterov, bool):
        raise ValueError(f"nesterov must be a bool, got {nesterov=}")
    if nesterov and name != "sgd":
        raise ValueError(f"nesterov is an SGD option, got {nesterov=} with {name=}")
    if nesterov and momentum == 0.0:
        raise ValueError(f"nesterov momentum requires momentum > 0, got {momentum=}")
    accum_steps = check_int("accum_steps", accum_steps, minimum=1)

    factory = OPTIMIZERS[name]

    # inject_hyperparams injects every numeric argument of the factory it wraps; wrapping a
    # one-argument closure keeps the LR as the only state hyper-parameter (the others are
    # compile-time constants, exactly as PyTorch's param_group values that never change).
    def with_learning_rate(learning_rate):
        return factory(
            learning_rate,
            momentum=momentum,
            nesterov=nesterov,
            weight_decay=weight_decay,
            b1=b1,
            b2=b2,
            eps=eps,
        )

    tx = optax.inject_hyperparams(with_learning_rate)(learning_rate=learning_rate)
    if accum_steps > 1:
        # MultiSteps accumulates in float32 by default whatever the parameters' dtype; accumulate
        # in the parameters' dtype instead (float32 in training, float64 in the parity tests).
        tx = optax.MultiSteps(
            tx, every_k_schedule=accum_steps, accumulator_dtype=None
        ).gradient_transformation()
    return tx


def _learning_rate_leaf(opt_state: Any) -> Any:
    """The injected ``learning_rate`` anywhere in ``opt_state`` (``optax.tree_utils.tree_get``)."""
    lr = otu.tree_get(opt_state, "learning_rate")
    if lr is None:
        raise ValueError(
            "opt_state holds no injected learning_rate (build the optimiser with "
            f"create_optimizer), got {type(opt_state).__name__}"
        )
    return lr


def _is_variable(x: Any) -> bool:
    # flax.nnx.Optimizer wraps every state leaf in an nnx Variable (OptArray); duck-typed so that
    # this module does not import flax.
    return hasattr(x, "get_value") and hasattr(x, "set_value")


def get_learning_rate(opt_state: Any) -> jax.Array:
    """The learning rate stored in an optimiser state from :func:`create_optimizer`.

    Args:
      opt_state: the state (plain, ``optax.MultiSteps``-wrapped, or with ``flax.nnx.Optimizer``'s
        Variable leaves).

    Returns:
      A scalar ``jax.Array`` of shape ``()`` in the parameters' dtype.

    Raises:
      ValueError: if the state holds no injected learning rate.

    Examples:
      >>> import jax.numpy as jnp
      >>> tx = create_optimizer("adam", learning_rate=1e-3, accum_steps=2)
      >>> state = tx.init({"w": jnp.zeros(3)})
      >>> float(get_learning_rate(state))  # doctest: +ELLIPSIS
      0.0010000000474...
    """
    lr = _learning_rate_leaf(opt_state)
    return lr.get_value() if _is_variable(lr) else lr


def set_learning_rate(opt_state: Any, lr: float | jax.typing.ArrayLike) -> Any:
    """Returns ``opt_state`` with its learning rate replaced by ``lr`` (no recompilation).

    The new value keeps the old one's dtype and shape ``()``, so a jitted step taking the state is
    not retraced. Call it on the host between steps (e.g. once per epoch with a value from
    ``train.schedules``). Plain optax states are not mutated (a new state is returned); for
    ``flax.nnx.Optimizer`` states, whose leaves are mutable Variables, the Variable is set in place
    and the same state returned.

    Args:
      opt_state: the state (plain or ``optax.MultiSteps``-wrapped) of an optimiser from
        :func:`create_optimizer`.
      lr: the new learning rate, a scalar.

    Returns:
      The updated state, of the same structure.

    Raises:
      ValueError: if the state holds no injected learning rate.

    Examples:
      >>> import jax.numpy as jnp
      >>> tx = create_optimizer("sgd", learning_rate=0.1, momentum=0.0)
      >>> state = set_learning_rate(tx.init(jnp.zeros(2)), 0.5)
      >>> tx.update(jnp.ones(2), state, jnp.zeros(2))[0]
      Array([-0.5, -0.5], dtype=float32)
    """
    old = _learning_rate_leaf(opt_state)
    if _is_variable(old):
        value = old.get_value()
        old.set_value(jnp.asarray(lr, dtype=value.dtype).reshape(jnp.shape(value)))
        return opt_state
    new = jnp.asarray(lr, dtype=jnp.asarray(old).dtype).reshape(jnp.shape(old))
    return otu.tree_set(opt_state, learning_rate=new)


def _top_name(path: tuple[Any, ...]) -> Any:
    first = path[0]
    return getattr(first, "key", getattr(first, "name", first))


@functools.lru_cache(maxsize=16)  # one wrapper per optimiser: the jitted step is not retraced
def freeze_backbone(
    tx: optax.GradientTransformation, *, head: str = "fc"
) -> optax.GradientTransformation:
    """Wraps ``tx`` so that only the parameters under ``head`` change (fine-tuning, seed 000).

    ``optax.multi_transform``: ``tx`` updates the top-level ``head`` subtree and
    ``optax.set_to_zero`` every other parameter, as ``requires_grad = False`` on them does in torch
    (weight decay included: frozen parameters never move). ``tx``'s state is kept for the head only,
    and its learning rate stays reachable by :func:`get_learning_rate` / :func:`set_learning_rate`.
    BatchNorm running statistics are not parameters: they still update in train mode, as in torch.

    Args:
      tx: the optimiser (e.g. from :func:`create_optimizer`).
      head: the top-level name of the trainable parameters.

    Returns:
      An ``optax.GradientTransformation``.

    Examples:
      >>> tx = freeze_backbone(optax.sgd(0.1), head="fc")
      >>> params = {"fc": jnp.ones(2), "conv1": jnp.ones(2)}
      >>> updates, _ = tx.update({"fc": jnp.ones(2), "conv1": jnp.ones(2)}, tx.init(params), params)
      >>> updates["fc"].tolist(), updates["conv1"].tolist()
      ([-0.1, -0.1], [0.0, 0.0])
    """

    def labels(params: Any) -> Any:
        return jax.tree_util.tree_map_with_path(
            lambda path, _: "head" if _top_name(path) == head else "frozen", params
        )

    return optax.multi_transform({"head": tx, "frozen": optax.set_to_zero()}, labels)


@functools.lru_cache(maxsize=16)
def _optimizer(name, learning_rate, momentum, nesterov, weight_decay, accum_steps, frozen):
    tx = create_optimizer(
        name,
        learning_rate=learning_rate,
        momentum=momentum,
        nesterov=nesterov,
        weight_decay=weight_decay,
        accum_steps=accum_steps,
    )
    return freeze_backbone(tx) if frozen else tx


def optimizer_from_config(config: Any) -> optax.GradientTransformation:
    """The run's optimiser: :func:`create_optimizer` from a ``train.config.Config``'s fields.

    ``optimizer``, ``lr``, ``momentum``, ``nesterov``, ``weight_decay``, ``accum`` and, with
    ``freeze_backbone``, :func:`freeze_backbone` around it. Equal settings give the same object
    (cached), so a jitted step that closes over it is compiled once per process.

    Examples:
      >>> from train.config import Config
      >>> optimizer_from_config(Config(lr=0.1)) is optimizer_from_config(Config(lr=0.1))
      True
    """
    return _optimizer(
        config.optimizer,
        config.lr,
        config.momentum,
        config.nesterov,
        config.weight_decay,
        config.accum,
        config.freeze_backbone,
    )
