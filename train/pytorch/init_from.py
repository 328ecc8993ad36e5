"""Fine-tuning from, and exporting to, PyTorch checkpoints (seed 000).

`jaxloss-train --init-from resnet18.pth --model resnet18` loads a torchvision-layout state_dict
(`train.pytorch.port`) into the freshly initialised model; the width comes from the checkpoint.
When the checkpoint's classifier (`fc`) has another class count than the data (ImageNet's 1000 vs
2 in seed 000), the head keeps its fresh initialisation and every other weight is loaded.
`--freeze-backbone` (`train.optim.freeze_backbone`) then trains the head only. `--export-torch`
writes the best-by-val-loss state back as a torch state_dict (`export_torch`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from train.pytorch import port

__all__ = ["export_torch", "init_from_torch", "load_init_weights"]


def load_init_weights(config: Any, log: Callable[[str], None] = print) -> tuple[Any, dict]:
    """Reads `config.init_from`; returns the config with the checkpoint's width, and the weights.

    Args:
      config: a `train.config.Config` with `init_from` set and a ResNet `model`.
      log: where a one-line note about a changed width goes.

    Returns:
      `(config, state_dict)`; `config.width` is the checkpoint's (first-stage channels).

    Raises:
      train.pytorch.port.PortError: the file is unreadable or not a state_dict of that layout.
    """
    state_dict = port.load_state_dict(config.init_from)
    width = port.checkpoint_info(state_dict, layout=port.LAYOUTS[config.model])["width"]
    if width != config.width:
        log(f"init-from: width {width} from the checkpoint (not {config.width})")
        config = dataclasses.replace(config, width=width)
    return config, state_dict


def init_from_torch(
    state: Any,
    state_dict: Mapping[str, Any],
    *,
    model: str,
    num_classes: int,
    log: Callable[[str], None] = print,
) -> Any:
    """A `train.step.TrainState` with the weights of a torch state_dict.

    Args:
      state: a freshly created train state of `model` (width and input channels must match the
        checkpoint's).
      state_dict: from `train.pytorch.port.load_state_dict`.
      model: the `train.models` name (`resnet18`, `resnet34`, `*_cifar`).
      num_classes: the data's class count; a checkpoint head of another size is not loaded.
      log: where the one-line note about a replaced head goes.

    Returns:
      The state with loaded `params` and `batch_stats` (BatchNorm counters included: training
      continues torch's `num_batches_tracked`) and a fresh optimiser state.

    Raises:
      train.pytorch.port.PortError: the checkpoint does not fit (listing the keys and shapes).

    Examples:
      >>> import jax, numpy as np, optax
      >>> from flax import nnx
      >>> from train import models, step
      >>> model = nnx.eval_shape(lambda: models.create_model(
      ...     "resnet18", num_classes=3, image_shape=(32, 32, 3), width=2, rngs=nnx.Rngs(0)))
      >>> _, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
      >>> params, stats = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), (params, stats))
      >>> state = step.TrainState(step=0, params=params, batch_stats=stats, opt_state=None,
      ...                         graphdef=None, tx=optax.sgd(0.1))
      >>> sd = port.to_torch(state.params, state.batch_stats, layout="torchvision")
      >>> sd["fc.weight"] = np.ones((1000, 16), np.float32)
      >>> sd["fc.bias"] = np.ones(1000, np.float32)
      >>> sd["conv1.weight"] = np.ones((2, 3, 7, 7), np.float32)
      >>> new = init_from_torch(state, sd, model="resnet18", num_classes=3, log=print)
      init-from: replacing the classifier head (1000 -> 3 classes); ...
      >>> float(new.params["conv1"]["kernel"].get_value().sum())
      294.0
      >>> new.params["fc"]["kernel"].get_value().shape
      (16, 3)
    """
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


def export_torch(state: Any, path: str, *, model: str) -> None:
    """Writes `state`'s params and BatchNorm statistics to `path` as a torch state_dict.

    Keys and order are torchvision's (or seed 004's for `*_cifar`). Each BatchNorm's
    `num_batches_tracked` is its own counter, as torch keeps it: one per train-mode forward pass
    (every micro-batch under gradient accumulation, and under `--freeze-backbone` too, whose
    BatchNorms still run in train mode), continuing from the `--init-from` checkpoint's count.

    Args:
      state: a `train.step.TrainState` of a ResNet `model`.
      path: the output `.pth` file (written atomically).
      model: the `train.models` name.
    """
    state_dict = port.to_torch(state.params, state.batch_stats, layout=port.LAYOUTS[model])
    port.save_state_dict(state_dict, path)
