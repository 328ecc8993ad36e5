"""`compare_layers`: a torch model and its NNX port, layer by layer, the first divergence named."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np

from jaxloss.parity import layout
from jaxloss.parity._compare import import_torch
from jaxloss.parity._nnx_port import Rename, _renamer, nnx_to_torch
from jaxloss.parity._report import Entry, Report
from jaxloss.parity._rules import Reference, Rule, judge

__all__ = ["compare_layers"]

_EPS32 = float(np.finfo(np.float32).eps)


def _torch_activations(model: Any, x: Any, *, train: bool) -> tuple[list[tuple[str, Any]], Any]:
    """Every named submodule's output, in call order (``name#2`` for a second call)."""
    torch = import_torch()
    seen: dict[str, int] = {}
    out: list[tuple[str, Any]] = []

    def hook(name):
        def record(module, args, output):
            if isinstance(output, torch.Tensor):
                seen[name] = seen.get(name, 0) + 1
                # clone: a later in-place op (ReLU(inplace=True)) would rewrite it
                key = name if seen[name] == 1 else f"{name}#{seen[name]}"
                out.append((key, output.detach().clone()))

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    try:
        model.train(train)
        with torch.no_grad():
            result = model(x)
    finally:
        for h in handles:
            h.remove()
    return out, result


def _nnx_activations(
    model: Any, x: Any, call: Callable[[Any, Any], Any]
) -> tuple[dict[str, Any], Any]:
    """Every submodule's ``__call__`` outputs by dotted path (``nnx.capture``)."""
    from flax import nnx

    result, captured = nnx.capture(call, nnx.Intermediate, method_outputs=nnx.Intermediate)(
        model, x
    )
    out = {}
    for path, var in nnx.to_flat_state(captured):
        if path and path[-1] == "__call__" and len(path) > 1:
            name = ".".join(str(p) for p in path[:-1])
            for k, value in enumerate(var.get_value()):
                out[name if k == 0 else f"{name}#{k + 1}"] = value
    return out, result


def compare_layers(
    torch_model: Any,
    nnx_model: Any,
    x: Any,
    *,
    train: bool = False,
    jax_call: Callable[[Any, Any], Any] | None = None,
    rename: Rename = None,
    channels_last: bool = True,
    tolerance: Rule | None = None,
) -> Report:
    """Per-layer activations of a torch model and its NNX port on one batch, in float32.

    Both run on copies (the models are not changed). Every torch submodule's output is recorded
    with a forward hook, in the order torch calls them, and every NNX submodule's with
    ``nnx.capture``; the ones with the same name (the NNX path, through ``rename``) are compared,
    then the final output, then, in train mode, every running statistic the forward updated.
    ``report.first_failure`` is the first layer, in torch's order, that diverges. The reference is
    the torch model in float64 (a ``copy.deepcopy(...).double()``).

    Args:
      torch_model: an ``nn.Module`` in float32.
      nnx_model: its NNX port with the same weights (`torch_to_nnx`).
      x: one input batch in torch's layout (NCHW for images), an array or a tensor.
      train: torch's mode; the NNX side's mode is ``jax_call``'s business.
      jax_call: ``(model, x) -> output`` (default ``model(x)``), e.g.
        ``lambda m, x: m(x, train=True)`` or a call on ``nnx.view(m, use_running_average=False)``.
        Compare train mode on a model without dropout (or with ``p = 0``): random masks differ.
      rename: torch names where they differ from the NNX paths.
      channels_last: the NNX model takes and returns channels-last activations (NHWC): inputs and
        every activation of rank >= 3 are transposed accordingly.
      tolerance: default `Reference` (k = 2).

    Returns:
      A `Report` with one entry per compared layer (``layer <name>``), ``output``, and in train
      mode ``after <torch buffer name>``; layers present on one side only are not compared.

    Examples:
      >>> import jax.numpy as jnp
      >>> import torch
      >>> from flax import nnx
      >>> from jaxloss import parity
      >>> tm = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
      >>> class Port(nnx.Module):
      ...     def __init__(self, rngs):
      ...         self.layers = nnx.List([nnx.Linear(3, 4, rngs=rngs), nnx.Linear(4, 2, rngs=rngs)])
      ...     def __call__(self, x):
      ...         return self.layers[1](jnp.tanh(self.layers[0](x)))
      >>> port = Port(nnx.Rngs(0))
      >>> names = {"layers.0.weight": "0.weight", "layers.0.bias": "0.bias",
      ...          "layers.1.weight": "2.weight", "layers.1.bias": "2.bias"}
      >>> _ = parity.torch_to_nnx(tm.state_dict(), port, rename=names)
      >>> r = parity.compare_layers(tm, port, np.ones((5, 3), np.float32),
      ...                           rename=lambda n: {"layers.0": "0", "layers.1": "2"}.get(n, n))
      >>> [e.name for e in r.entries], r.ok
      (['layer 0', 'layer 2', 'output'], True)
    """
    from flax import nnx

    torch = import_torch()
    rule = tolerance or Reference()
    name = _renamer(rename)
    call = jax_call or (lambda m, v: m(v))
    xt = torch.as_tensor(layout.to_numpy(x), dtype=torch.float32)
    t32, t64 = copy.deepcopy(torch_model).float(), copy.deepcopy(torch_model).double()
    acts32, out32 = _torch_activations(t32, xt, train=train)
    acts64, out64 = _torch_activations(t64, xt.double(), train=train)
    ref = dict(acts64)
    port = nnx.clone(nnx_model)
    xj = layout.nchw_to_nhwc(xt.numpy()) if channels_last and xt.ndim >= 3 else xt.numpy()
    jax_acts, jax_out = _nnx_activations(port, xj, call)
    renamed = {}
    for key, value in jax_acts.items():
        base, sep, count = key.partition("#")
        renamed[name(base) + sep + count] = value

    def to_torch_layout(v: Any) -> np.ndarray:
        v = np.asarray(v)
        return layout.nhwc_to_nchw(v) if channels_last and v.ndim >= 3 else v

    entries = []

    def add(label: str, j: Any, t: Any, r: Any) -> None:
        j, t, r = to_torch_layout(j), layout.to_numpy(t), layout.to_numpy(r)
        verdict = judge(j, t, r, rule, eps=_EPS32, allow_nonfinite=False)
        dtype = str(np.asarray(j).dtype)
        entries.append(Entry(label, dtype, 0, tuple(t.shape), rule.describe(), verdict))

    for key, value in acts32:
        if key in renamed:
            add(f"layer {key}", renamed[key], value, ref[key])
    add("output", jax_out, out32, out64)
    if train:
        after = nnx_to_torch(port, rename=rename)
        buffers64 = dict(t64.named_buffers())
        for key, buf in t32.named_buffers():
            if key in after:
                add(f"after {key}", after[key], buf, buffers64[key])
    return Report(tuple(entries), title=f"layers ({'train' if train else 'eval'} mode)")
