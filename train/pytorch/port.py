r"""PyTorch state_dict <-> Flax NNX ResNet weights: torchvision and seed-004 CIFAR layouts.

`from_torch` loads a torch ResNet-18/34 state_dict into the `params` / `batch_stats` of a
`train.models` ResNet; `to_torch` writes them back as a state_dict with torch's key names and order
(`num_batches_tracked` included). `load_state_dict` / `save_state_dict` read and write files.

torch is imported lazily, inside `load_state_dict` and `save_state_dict` only: the trainer runs
without it, and a missing torch gives a `PortError` saying so. Files are read with
`torch.load(path, map_location="cpu", weights_only=True)` (tensors and containers only: no
arbitrary object is ever unpickled) or, for `*.safetensors`, with `safetensors.numpy` if installed.

Layouts (`LAYOUTS` maps a `train.models` name to one):

- `"torchvision"` (`resnet18`, `resnet34`): torchvision's names, identical on both sides: `conv1`,
  `bn1`, `layer{1..4}.{i}.{conv1,bn1,conv2,bn2}`, `layer{2..4}.0.downsample.{0,1}`, `fc`.
- `"cifar"` (`resnet18_cifar`, `resnet34_cifar`): seed 004's module tree
  (004_1e0f039da5020c04.txt): Flax `conv1`/`bn1` are `base.0`/`base.1`; in each block `conv1`,
  `bn1`, `conv2`, `bn2` are `conv_block.0`, `.1`, `.3`, `.4` (`.2` is the weightless ReLU);
  `downsample.{0,1}` and `fc` keep their names. The seed pools with `AvgPool2d(4)`, a global pool
  only at its 32x32 input size; the Flax model pools globally, so logits agree at 32x32.

Conversions, leaf by leaf (all exact: transposes and copies, no arithmetic):

.. math::
  W^{flax}_{h,w,i,o} = W^{torch}_{o,i,h,w}\ (\text{conv, OIHW}\to\text{HWIO}),\qquad
  K^{flax}_{i,o} = W^{torch}_{o,i}\ (\text{Linear})

- Conv `weight (O, I, kH, kW)` <-> `kernel (kH, kW, I, O)`; Linear `weight (out, in)` <->
  `kernel (in, out)`; Linear `bias` copied. Images are NCHW in torch and NHWC in Flax
  (`x.transpose(0, 2, 3, 1)`); flattening happens after a global pool, so no feature reordering.
- BatchNorm: `weight` <-> `scale`, `bias` <-> `bias`, `running_mean` <-> `batch_stats` `mean`,
  `running_var` <-> `batch_stats` `var`, copied 1:1, and `num_batches_tracked` (int64) <->
  `num_batches_tracked` (int32: JAX runs without 64-bit types). `train.batch_norm.BatchNorm` is
  torch's in both modes (eps 1e-5, momentum 0.1, the unbiased `n / (n - 1)` running variance, one
  count per train-mode forward), so statistics and counters stay equal through training. A file
  without `num_batches_tracked` (torch before 0.4.1) loads with the model's own counter (0 for a
  fresh model), as torch's `_BatchNorm._load_from_state_dict` fills it in for such files.
- Padding: the Flax models pad explicitly like torch, `((1, 1), (1, 1))` on 3x3 convolutions and
  `((3, 3), (3, 3))` on the 7x7 stem; `'SAME'` would pad `(0, 1)` on stride-2 layers of even inputs
  (same shapes, different values). The stem's `MaxPool2d(3, 2, padding=1)` pads with -inf, as
  `nnx.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))` does.
- Dtypes: values are cast to the Flax model's parameter dtype (float32); exported tensors keep it.

Examples:
  >>> import jax.numpy as jnp
  >>> params = nnx.State({"conv1": {"kernel": nnx.Param(jnp.ones((3, 3, 1, 2)))},
  ...                     "bn1": {"scale": nnx.Param(jnp.ones(2)), "bias": nnx.Param(jnp.zeros(2))},
  ...                     "fc": {"kernel": nnx.Param(jnp.ones((2, 5))),
  ...                            "bias": nnx.Param(jnp.zeros(5))}})
  >>> stats = nnx.State({"bn1": {"mean": nnx.BatchStat(jnp.zeros(2)),
  ...                            "var": nnx.BatchStat(jnp.ones(2))}})
  >>> sd = to_torch(params, stats, layout="cifar")
  >>> [(k, v.shape) for k, v in sd.items()][:2], sd["fc.weight"].shape
  ([('base.0.weight', (2, 1, 3, 3)), ('base.1.weight', (2,))], (5, 2))
  >>> sd["base.1.running_var"] = np.full(2, 4.0, np.float32)
  >>> p2, s2 = from_torch(sd, params, stats, layout="cifar")
  >>> s2["bn1"]["var"][...].tolist(), stats["bn1"]["var"][...].tolist()  # a copy: input unchanged
  ([4.0, 4.0], [1.0, 1.0])
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx

from train.names import PORT_LAYOUTS
from train.pytorch.files import PortError, load_state_dict, save_state_dict

__all__ = [
    "HEAD",
    "LAYOUTS",
    "PortError",
    "checkpoint_info",
    "from_torch",
    "load_state_dict",
    "save_state_dict",
    "to_torch",
    "torch_key",
]

LAYOUTS: dict[str, str] = PORT_LAYOUTS
"""`train.models` name -> state_dict layout (`train.names.PORT_LAYOUTS`)."""

HEAD = "fc"
"""Name of the classifier head in both layouts (`fc.weight`, `fc.bias`)."""

_LEAF = {
    "kernel": "weight",
    "scale": "weight",
    "bias": "bias",
    "mean": "running_mean",
    "var": "running_var",
    "num_batches_tracked": "num_batches_tracked",
}
_CIFAR_STEM = {"conv1": "base.0", "bn1": "base.1"}
_CIFAR_BLOCK = {
    "conv1": "conv_block.0",
    "bn1": "conv_block.1",
    "conv2": "conv_block.3",
    "bn2": "conv_block.4",
}
# torch's state_dict order (module registration order), as sort ranks per key component
_RANK = {
    "conv1": 0,
    "base": 0,
    "conv_block": 0,
    "bn1": 1,
    "conv2": 2,
    "bn2": 3,
    "downsample": 4,
    "layer1": 10,
    "layer2": 11,
    "layer3": 12,
    "layer4": 13,
    "fc": 20,
    "weight": 0,
    "bias": 1,
    "running_mean": 2,
    "running_var": 3,
    "num_batches_tracked": 4,
}
_MAX_LISTED = 12
_INT32_MAX = 2**31 - 1


def _check_layout(layout: str) -> None:
    if layout not in ("torchvision", "cifar"):
        raise ValueError(f"layout must be 'torchvision' or 'cifar', got {layout=}")


def torch_key(path: tuple[Any, ...], *, layout: str) -> str:
    """The torch state_dict key of a Flax variable path.

    Args:
      path: the path of an `nnx.Param` / `nnx.BatchStat`, e.g. `("layer1", 0, "conv1", "kernel")`.
      layout: `"torchvision"` or `"cifar"`.

    Examples:
      >>> torch_key(("layer1", 0, "bn2", "var"), layout="torchvision")
      'layer1.0.bn2.running_var'
      >>> torch_key(("layer1", 0, "bn2", "var"), layout="cifar")
      'layer1.0.conv_block.4.running_var'
      >>> torch_key(("conv1", "kernel"), layout="cifar")
      'base.0.weight'
    """
    _check_layout(layout)
    *mods, leaf = [str(p) for p in path]
    if leaf not in _LEAF:
        raise PortError(f"no torch counterpart for the Flax variable {'.'.join(map(str, path))}")
    if layout == "cifar":
        if len(mods) == 1 and mods[0] in _CIFAR_STEM:
            mods = [_CIFAR_STEM[mods[0]]]
        elif len(mods) == 3 and mods[2] in _CIFAR_BLOCK:
            mods = [*mods[:2], _CIFAR_BLOCK[mods[2]]]
    return ".".join([*mods, _LEAF[leaf]])


def _order(key: str) -> tuple[int, ...]:
    return tuple(int(p) if p.isdigit() else _RANK.get(p, 99) for p in key.split("."))


def _to_torch_layout(value: np.ndarray, leaf: str) -> np.ndarray:
    if leaf == "kernel" and value.ndim == 4:
        return value.transpose(3, 2, 0, 1)  # HWIO -> OIHW
    if leaf == "kernel" and value.ndim == 2:
        return value.T  # (in, out) -> (out, in)
    return value


def _to_flax_layout(value: np.ndarray, leaf: str) -> np.ndarray:
    if leaf == "kernel" and value.ndim == 4:
        return value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    if leaf == "kernel" and value.ndim == 2:
        return value.T
    return value


def _torch_shape(shape: tuple[int, ...], leaf: str) -> tuple[int, ...]:
    dummy = np.broadcast_to(np.zeros((), np.float32), shape)
    return tuple(_to_torch_layout(dummy, leaf).shape)


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f", ... ({len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else "")


def _is_count(value: np.ndarray) -> bool:
    return np.issubdtype(value.dtype, np.integer) and 0 <= int(value) <= _INT32_MAX


def _flat(state: nnx.State) -> list[tuple[tuple[Any, ...], Any]]:
    return list(nnx.to_flat_state(state))


def from_torch(
    state_dict: Mapping[str, Any],
    params: nnx.State,
    batch_stats: nnx.State,
    *,
    layout: str,
    keep: Collection[str] = (),
) -> tuple[nnx.State, nnx.State]:
    """Loads a torch state_dict into copies of a Flax ResNet's `params` and `batch_stats`.

    Args:
      state_dict: torch key -> array (numpy arrays or anything `np.asarray` takes; torch tensors
        via `load_state_dict`). A missing `*.num_batches_tracked` is no error: that counter keeps
        its value from `batch_stats` (0 for a fresh or an abstract model), as torch's
        `load_state_dict` keeps the module's own counter for files written before the buffer
        existed (torch < 0.4.1). Counters are ignored when `batch_stats` has none.
      params: the model's `nnx.Param` state (`nnx.split(model, nnx.Param, nnx.BatchStat)[1]`);
        gives the structure, shapes and dtypes.
      batch_stats: the model's `nnx.BatchStat` state.
      layout: `"torchvision"` or `"cifar"` (see `LAYOUTS`).
      keep: torch keys not to load: those variables keep their values from `params` /
        `batch_stats` (e.g. `("fc.weight", "fc.bias")` to replace the classifier head).

    Returns:
      `(params, batch_stats)`: new states with the same structure, values from `state_dict`.

    Raises:
      PortError: listing every missing key, unexpected key, shape mismatch (shapes in torch's
        layout) and counter that is not an integer in [0, 2**31 - 1].

    Examples:
      >>> from train import models
      >>> m = nnx.eval_shape(lambda: models.create_model(
      ...     "resnet18", num_classes=2, image_shape=(32, 32, 3), width=2, rngs=nnx.Rngs(0)))
      >>> _, p, s = nnx.split(m, nnx.Param, nnx.BatchStat)
      >>> p, s = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), (p, s))
      >>> sd = to_torch(p, s, layout="torchvision")
      >>> sd["fc.weight"] = np.zeros((5, 16), np.float32); del sd["layer4.1.bn2.bias"]
      >>> from_torch(sd, p, s, layout="torchvision")
      Traceback (most recent call last):
      ...
      train.pytorch.PortError: the state_dict does not fit the model (torchvision layout): ...
    """
    _check_layout(layout)
    keep = set(keep)
    used: set[str] = set()
    missing, mismatched, bad = [], [], []
    loaded: list[dict[tuple[Any, ...], np.ndarray]] = []
    for state in (params, batch_stats):
        values = {}
        for path, var in _flat(state):
            leaf = str(path[-1])
            key = torch_key(path, layout=layout)
            target = var.get_value()
            if key in keep:
                used.add(key)
                continue
            if key not in state_dict:
                if leaf != "num_batches_tracked":
                    missing.append(key)
                elif isinstance(target, jax.ShapeDtypeStruct):  # an abstract model: a fresh 0
                    values[path] = np.zeros(target.shape, target.dtype)
                continue  # torch's rule for a missing counter: the module keeps its own
            used.add(key)
            if leaf == "num_batches_tracked":
                count = np.asarray(state_dict[key])
                if count.shape != () or not _is_count(count):
                    bad.append(f"{key} ({count.dtype} {count.tolist()!r})")
                    continue
            value = _to_flax_layout(np.asarray(state_dict[key]), leaf)
            if value.shape != tuple(target.shape):
                mismatched.append(
                    f"{key} (file {tuple(np.asarray(state_dict[key]).shape)}, "
                    f"model {_torch_shape(tuple(target.shape), leaf)})"
                )
                continue
            values[path] = np.array(value, dtype=target.dtype, order="C")  # 0-d stays 0-d
        loaded.append(values)
    unexpected = [k for k in state_dict if k not in used and not k.endswith("num_batches_tracked")]
    if missing or unexpected or mismatched or bad:
        missing.sort(key=_order)
        parts = [
            f"{name}: {_listed(items)}"
            for name, items in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("shape mismatches", mismatched),
                ("counters not an int32 count", bad),
            )
            if items
        ]
        raise PortError(
            f"the state_dict does not fit the model ({layout} layout): " + "; ".join(parts)
        )
    out = []
    for state, values in zip((params, batch_stats), loaded, strict=True):
        new = jax.tree.map(lambda x: x, state)  # a copy of the structure
        for path, var in _flat(new):
            if path in values:
                var.set_value(jax.numpy.asarray(values[path]))
        out.append(new)
    return out[0], out[1]


def to_torch(
    params: nnx.State,
    batch_stats: nnx.State,
    *,
    layout: str,
    num_batches_tracked: int | Mapping[str, int] | None = None,
) -> dict[str, np.ndarray]:
    """Exports a Flax ResNet's `params` and `batch_stats` as a torch-named state_dict (numpy).

    Args:
      params: the model's `nnx.Param` state.
      batch_stats: its `nnx.BatchStat` state; each BatchNorm's `num_batches_tracked` is exported
        as torch's (a state without counters exports 0).
      layout: `"torchvision"` or `"cifar"`.
      num_batches_tracked: deprecated (the counters are in `batch_stats` now): `None` exports the
        stored counters; an int overrides every counter, a mapping from torch keys to values the
        counters it names.

    Returns:
      An ordered dict, torch's key order: float arrays in torch's layout (OIHW, `(out, in)`) and
      int64 0-d arrays for `num_batches_tracked`. `save_state_dict` writes it as torch tensors.

    Examples:
      >>> from train import models
      >>> m = nnx.eval_shape(lambda: models.create_model(
      ...     "resnet34", num_classes=4, image_shape=(32, 32, 3), width=2, rngs=nnx.Rngs(0)))
      >>> _, p, s = nnx.split(m, nnx.Param, nnx.BatchStat)
      >>> p, s = jax.tree.map(lambda x: np.full(x.shape, 7, x.dtype), (p, s))
      >>> sd = to_torch(p, s, layout="torchvision")
      >>> list(sd)[:6]
      ['conv1.weight', 'bn1.weight', 'bn1.bias', 'bn1.running_mean', 'bn1.running_var',
       'bn1.num_batches_tracked']
      >>> sd["conv1.weight"].shape, sd["bn1.num_batches_tracked"], len(sd)
      ((2, 3, 7, 7), array(7), 218)
      >>> to_torch(p, s, layout="torchvision", num_batches_tracked=0)["bn1.num_batches_tracked"]
      array(0)
    """
    _check_layout(layout)
    out: dict[str, np.ndarray] = {}
    for state in (params, batch_stats):
        for path, var in _flat(state):
            leaf = str(path[-1])
            key = torch_key(path, layout=layout)
            value = np.asarray(var.get_value())
            if leaf == "num_batches_tracked":
                out[key] = np.asarray(int(value), np.int64)
                continue
            out[key] = np.ascontiguousarray(_to_torch_layout(value, leaf))
            counter = key.removesuffix("running_mean") + "num_batches_tracked"
            if leaf == "mean" and counter not in out:  # a state without counters: 0
                out[counter] = np.asarray(0, np.int64)
    if num_batches_tracked is not None:
        for key in [k for k in out if k.endswith("num_batches_tracked")]:
            n = (
                num_batches_tracked.get(key, out[key])
                if isinstance(num_batches_tracked, Mapping)
                else num_batches_tracked
            )
            out[key] = np.asarray(int(n), np.int64)
    return {k: out[k] for k in sorted(out, key=_order)}


def checkpoint_info(state_dict: Mapping[str, Any], *, layout: str) -> dict[str, int]:
    """Width, input channels and class count of a ResNet state_dict.

    Examples:
      >>> sd = {"base.0.weight": np.zeros((16, 3, 3, 3)), "fc.weight": np.zeros((10, 128))}
      >>> checkpoint_info(sd, layout="cifar")
      {'width': 16, 'in_channels': 3, 'num_classes': 10}
    """
    _check_layout(layout)
    stem = "conv1.weight" if layout == "torchvision" else "base.0.weight"
    absent = [k for k in (stem, f"{HEAD}.weight") if k not in state_dict]
    if absent:
        raise PortError(
            f"not a {layout}-layout ResNet state_dict: missing keys: {_listed(absent)}"
            f" (it has {_listed(sorted(state_dict))})"
        )
    out_c, in_c = np.shape(state_dict[stem])[:2]
    return {
        "width": int(out_c),
        "in_channels": int(in_c),
        "num_classes": int(np.shape(state_dict[f"{HEAD}.weight"])[0]),
    }
