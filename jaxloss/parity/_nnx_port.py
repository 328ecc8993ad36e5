"""torch state_dicts to and from Flax NNX models, by layer type: the weight mapping of a port.

An NNX module's path is its torch name: ``model.layer1[0].conv1`` is ``layer1.0.conv1``, as a
torch module tree with the same attribute names gives it. Each layer type knows its variables:

========================  ==============================================================
NNX layer                 torch keys (layout change)
========================  ==============================================================
``nnx.Conv``              ``weight`` (OIHW -> HWIO), ``bias``
``nnx.Linear``            ``weight`` (``(out, in)`` -> ``(in, out)``), ``bias``
BatchNorm (``scale``,     ``weight``, ``bias``, ``running_mean``, ``running_var``
``mean``, ``var``)        (and ``num_batches_tracked`` where the module keeps one)
``nnx.LayerNorm``,        ``weight``, ``bias``
``nnx.GroupNorm``
``nnx.Embed``             ``weight`` (``embedding``)
any other module          its own variables under their own names, unchanged
========================  ==============================================================

``rename`` maps the names this gives to the torch model's where they differ (a callable on full
keys, or a mapping of whole keys). flax is imported only when these functions run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from jaxloss.parity import layout

__all__ = ["Slot", "nnx_to_torch", "slots", "torch_to_nnx"]

Rename = Callable[[str], str] | Mapping[str, str] | None


@dataclasses.dataclass(frozen=True)
class Slot:
    """One variable of an NNX model and its torch counterpart."""

    torch_key: str
    path: tuple[Any, ...]  # the variable's NNX path, e.g. ("layer1", 0, "conv1", "kernel")
    to_flax: Callable[[np.ndarray], np.ndarray]
    to_torch: Callable[[np.ndarray], np.ndarray]


def _same(x: np.ndarray) -> np.ndarray:
    return x


def _renamer(rename: Rename) -> Callable[[str], str]:
    if rename is None:
        return _same  # type: ignore[return-value]
    if callable(rename):
        return rename
    table = dict(rename)
    return lambda key: table.get(key, key)


_Move = Callable[[np.ndarray], np.ndarray]


def _layer_vars(module: Any) -> list[tuple[str, str, _Move, _Move]] | None:
    """``(nnx attribute, torch leaf, to_flax, to_torch)`` of a known layer type, else None."""
    from flax import nnx

    if isinstance(module, nnx.Conv):
        conv = [("kernel", "weight", layout.conv_kernel_to_flax, layout.conv_kernel_to_torch)]
        return conv + [("bias", "bias", _same, _same)]
    if isinstance(module, nnx.Linear):
        lin = [("kernel", "weight", layout.linear_kernel_to_flax, layout.linear_kernel_to_torch)]
        return lin + [("bias", "bias", _same, _same)]
    if isinstance(module, nnx.Embed):
        return [("embedding", "weight", _same, _same)]
    if all(hasattr(module, a) for a in ("scale", "bias", "mean", "var")):  # any BatchNorm
        names = [("scale", "weight"), ("bias", "bias"), ("mean", "running_mean")]
        names += [("var", "running_var"), ("num_batches_tracked", "num_batches_tracked")]
        return [(a, t, _same, _same) for a, t in names]
    if isinstance(module, (nnx.LayerNorm, nnx.GroupNorm)):
        return [("scale", "weight", _same, _same), ("bias", "bias", _same, _same)]
    return None


def slots(model: Any, *, rename: Rename = None) -> list[Slot]:
    """Every variable of an NNX ``model`` with its torch key and layout changes.

    Args:
      model: an ``nnx.Module``.
      rename: torch names where they differ from the NNX paths (see the module docstring).

    Returns:
      The slots in the model's order.

    Examples:
      >>> from flax import nnx
      >>> class Net(nnx.Module):
      ...     def __init__(self, rngs):
      ...         self.conv = nnx.Conv(3, 4, (3, 3), rngs=rngs)
      ...         self.fc = nnx.Linear(4, 2, rngs=rngs)
      >>> [s.torch_key for s in slots(Net(nnx.Rngs(0)))]
      ['conv.bias', 'conv.weight', 'fc.bias', 'fc.weight']
    """
    from flax import nnx

    name = _renamer(rename)
    out = []
    for path, module in nnx.iter_modules(model):
        prefix = ".".join(str(p) for p in path)
        known = _layer_vars(module)
        if known is None:  # the module's own variables (not its children's), unchanged
            own = [(k, k, _same, _same) for k, v in vars(module).items()]
            known = [o for o in own if isinstance(getattr(module, o[0]), nnx.Variable)]
        for attr, leaf, to_flax, to_torch in known:
            if isinstance(getattr(module, attr, None), nnx.Variable):
                key = f"{prefix}.{leaf}" if prefix else leaf
                out.append(Slot(name(key), (*path, attr), to_flax, to_torch))
    return sorted(out, key=lambda s: s.torch_key)


def variable(model: Any, path: tuple[Any, ...]) -> Any:
    """The NNX variable at ``path`` (a `Slot.path`) of ``model``."""
    obj = model
    for p in path:
        obj = obj[p] if isinstance(p, int) else getattr(obj, p)
    return obj


def torch_value(model: Any, slot: Slot) -> np.ndarray:
    """The slot's variable in torch's layout, as a writable NumPy copy."""
    return np.array(slot.to_torch(np.asarray(variable(model, slot.path)[...])))


def torch_to_nnx(
    state_dict: Mapping[str, Any], model: Any, *, rename: Rename = None, strict: bool = True
) -> list[str]:
    """Loads a torch ``state_dict`` into an NNX ``model`` in place (weights, running statistics).

    Args:
      state_dict: torch names to tensors or arrays (``module.state_dict()``).
      model: the NNX port, built with the same shapes.
      rename: torch names where they differ from the NNX paths.
      strict: if True, a key on one side only is a ``ValueError`` listing them all (torch's
        ``num_batches_tracked`` is skipped where the NNX BatchNorm keeps no counter).

    Returns:
      The torch keys loaded.

    Raises:
      ValueError: missing or unexpected keys (strict), or a shape that differs after the layout
        change (always), naming each.

    Examples:
      >>> from flax import nnx
      >>> lin = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
      >>> torch_to_nnx({"weight": np.ones((2, 3)), "bias": np.zeros(2)}, lin)
      ['bias', 'weight']
      >>> lin.kernel.shape
      (3, 2)
    """
    import jax.numpy as jnp

    table = slots(model, rename=rename)
    have = {s.torch_key for s in table}
    missing = sorted(have - set(state_dict))
    unexpected = sorted(
        k for k in state_dict if k not in have and not k.endswith("num_batches_tracked")
    )
    if strict and (missing or unexpected):
        raise ValueError(f"state_dict keys differ: missing {missing}, unexpected {unexpected}")
    loaded, wrong = [], []
    for slot in table:
        if slot.torch_key not in state_dict:
            continue
        var = variable(model, slot.path)
        value = slot.to_flax(layout.to_numpy(state_dict[slot.torch_key]))
        if value.shape != tuple(var.shape):
            wrong.append(f"{slot.torch_key} {value.shape} vs {tuple(var.shape)}")
            continue
        var.set_value(jnp.asarray(value, var.dtype))
        loaded.append(slot.torch_key)
    if wrong:
        raise ValueError(
            "shapes differ (torch, after the layout change, vs NNX): " + "; ".join(wrong)
        )
    return loaded


def nnx_to_torch(model: Any, *, rename: Rename = None) -> dict[str, np.ndarray]:
    """An NNX ``model``'s variables as a torch-named state_dict of NumPy arrays (writable copies).

    Examples:
      >>> from flax import nnx
      >>> sd = nnx_to_torch(nnx.Conv(3, 8, (5, 5), rngs=nnx.Rngs(0)))
      >>> sd["weight"].shape, sd["bias"].shape
      ((8, 3, 5, 5), (8,))
    """
    return {s.torch_key: torch_value(model, s) for s in slots(model, rename=rename)}
