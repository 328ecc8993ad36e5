"""Fine-tuning from a PyTorch checkpoint (seed 000): load weights, new head, frozen backbone.

`python -m train --init-from resnet18.pth --model resnet18` loads a torchvision-layout state_dict
(`train.port`) into the freshly initialised model. When the checkpoint's classifier (`fc`) has
another class count than the data (ImageNet's 1000 vs 2 in seed 000), the head keeps its fresh
initialisation and every other weight is loaded. `--freeze-backbone` trains the head only: the
optimiser's updates of every other parameter are zeroed (as `requires_grad = False` on them in
torch); BatchNorm running statistics still update in train mode, exactly as in torch's
`model.train()`. The optimiser state keeps its structure, so `train.optim.set_learning_rate` works
unchanged.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

__all__ = ["freeze_backbone", "init_from_torch"]


def _top_name(path: tuple[Any, ...]) -> Any:
    first = path[0]
    return getattr(first, "key", getattr(first, "name", first))


@functools.lru_cache(maxsize=16)  # one wrapper per optimiser: the jitted step is not retraced
def freeze_backbone(
    tx: optax.GradientTransformation, *, head: str = "fc"
) -> optax.GradientTransformation:
    """Wraps `tx` so that only the parameters under `head` change.

    Gradients of the other parameters are zeroed before `tx` and their updates after it (weight
    decay would otherwise move them). The state is `tx`'s own state.

    Args:
      tx: the optimiser (e.g. from `train.optim.create_optimizer`).
      head: the top-level name of the trainable parameters.

    Returns:
      An `optax.GradientTransformation` with `tx`'s `init`.

    Examples:
      >>> tx = freeze_backbone(optax.sgd(0.1), head="fc")
      >>> params = {"fc": jnp.ones(2), "conv1": jnp.ones(2)}
      >>> updates, _ = tx.update({"fc": jnp.ones(2), "conv1": jnp.ones(2)}, tx.init(params), params)
      >>> updates["fc"].tolist(), updates["conv1"].tolist()
      ([-0.1, -0.1], [0.0, 0.0])
    """

    def mask(tree):
        return jax.tree_util.tree_map_with_path(
            lambda path, x: x if _top_name(path) == head else jnp.zeros_like(x), tree
        )

    def update(updates, state, params=None):
        new_updates, state = tx.update(mask(updates), state, params)
        return mask(new_updates), state

    return optax.GradientTransformation(tx.init, update)


def init_from_torch(
    state: Any,
    state_dict: Mapping[str, Any],
    *,
    model: str,
    num_classes: int,
    log: Callable[[str], None] = print,
) -> Any:
    """A `train.train_lib.TrainState` with the weights of a torch state_dict.

    Args:
      state: a freshly created train state of `model` (width and input channels must match the
        checkpoint's).
      state_dict: from `train.port.load_state_dict`.
      model: the `train.models` name (`resnet18`, `resnet34`, `*_cifar`).
      num_classes: the data's class count; a checkpoint head of another size is not loaded.
      log: where the one-line note about a replaced head goes.

    Returns:
      The state with loaded `params` and `batch_stats` and a fresh optimiser state.

    Raises:
      train.port.PortError: the checkpoint does not fit (listing the keys and shapes).

    Examples:
      >>> import numpy as np
      >>> from flax import nnx
      >>> from train import models, port, train_lib
      >>> model = nnx.eval_shape(lambda: models.create_model(
      ...     "resnet18", num_classes=3, image_shape=(32, 32, 3), width=2, rngs=nnx.Rngs(0)))
      >>> _, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
      >>> params, stats = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), (params, stats))
      >>> state = train_lib.TrainState(step=0, params=params, batch_stats=stats, opt_state=None,
      ...                              graphdef=None, tx=optax.sgd(0.1))
      >>> sd = port.to_torch(state.params, state.batch_stats, layout="torchvision")
      >>> sd["fc.weight"], sd["fc.bias"] = np.ones((1000, 16), np.float32), np.ones(1000, np.float32)
      >>> sd["conv1.weight"] = np.ones((2, 3, 7, 7), np.float32)
      >>> new = init_from_torch(state, sd, model="resnet18", num_classes=3)
      init-from: replacing the classifier head (1000 -> 3 classes); every other weight comes from the checkpoint
      >>> float(new.params["conv1"]["kernel"].get_value().sum()), new.params["fc"]["kernel"].get_value().shape
      (294.0, (16, 3))
    """
    from train import port

    layout = port.LAYOUTS[model]
    info = port.checkpoint_info(state_dict, layout=layout)
    keep: tuple[str, ...] = ()
    if info["num_classes"] != num_classes:
        keep = (f"{port.HEAD}.weight", f"{port.HEAD}.bias")
        log(
            f"init-from: replacing the classifier head ({info['num_classes']} -> {num_classes} "
            "classes); every other weight comes from the checkpoint"
        )
    params, batch_stats = port.from_torch(
        state_dict, state.params, state.batch_stats, layout=layout, keep=keep
    )
    return state.replace(params=params, batch_stats=batch_stats, opt_state=state.tx.init(params))
