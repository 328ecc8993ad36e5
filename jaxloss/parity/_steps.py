"""`compare_steps`: two training loops step by step, and the state each side reports per step.

A training step is compared through what it leaves behind: the loss, every parameter, the
optimizer's moments and the running statistics. `torch_training_state` and `nnx_training_state`
name them alike (torch's names, torch's layouts), so the two dictionaries compare key by key:

- ``loss``;
- ``param/<name>``: parameters (``conv1.weight``, ...);
- ``buffer/<name>``: running statistics and counters (``bn1.running_var``,
  ``bn1.num_batches_tracked``);
- ``opt/<state>/<name>``: optimizer moments under torch's names: ``momentum_buffer`` (SGD; optax
  ``trace``), ``exp_avg`` and ``exp_avg_sq`` (Adam, AdamW; optax ``mu`` and ``nu``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from jaxloss.parity import layout
from jaxloss.parity._nnx_port import Rename, slots, torch_value, variable
from jaxloss.parity._report import Entry, Report
from jaxloss.parity._rules import Close, Reference, Rule, Verdict, judge

__all__ = ["compare_steps", "nnx_training_state", "torch_training_state"]

STEPS_RULE = Reference(max_k=10.0)
"""`compare_steps`' default: `Reference` with room for a kink spike in the maximum (``max_k``)."""

_OPTAX_TO_TORCH = {"trace": "momentum_buffer", "mu": "exp_avg", "nu": "exp_avg_sq"}
_PARAM_LEAVES = ("weight", "bias")


def torch_training_state(
    model: Any, optimizer: Any = None, *, loss: Any = None
) -> dict[str, np.ndarray]:
    """A torch model's parameters, buffers and optimizer moments, as NumPy, under shared names.

    ``loss`` is the step's loss tensor (or None); a Python float (``loss.item()``) is taken in the
    parameters' dtype.

    Examples:
      >>> import torch
      >>> m = torch.nn.BatchNorm1d(2)
      >>> opt = torch.optim.SGD(m.parameters(), lr=0.1)
      >>> sorted(torch_training_state(m, opt, loss=torch.tensor(1.0)))
      ['buffer/num_batches_tracked', 'buffer/running_mean', 'buffer/running_var', 'loss',
       'param/bias', 'param/weight']
    """
    out = {}
    if loss is not None:
        value = layout.to_numpy(loss)
        if isinstance(loss, float):  # loss.item(): back to the parameters' dtype, float32 say
            first = next(iter(model.parameters()), None)
            value = value.astype(layout.to_numpy(first).dtype if first is not None else value.dtype)
        out["loss"] = value
    names = {}
    for name, p in model.named_parameters():
        out[f"param/{name}"] = layout.to_numpy(p).copy()
        names[id(p)] = name
    for name, b in model.named_buffers():
        out[f"buffer/{name}"] = layout.to_numpy(b).copy()
    if optimizer is not None:
        for p, state in optimizer.state.items():
            for key, value in state.items():
                if key in _OPTAX_TO_TORCH.values() and id(p) in names:
                    out[f"opt/{key}/{names[id(p)]}"] = layout.to_numpy(value).copy()
    return out


def nnx_training_state(
    model: Any, opt_state: Any = None, *, loss: Any = None, rename: Rename = None
) -> dict[str, np.ndarray]:
    """An NNX model's variables and an optax state's moments under `torch_training_state`'s names.

    Args:
      model: the ``nnx.Module`` (e.g. ``nnx.merge(graphdef, params, batch_stats)``).
      opt_state: the optax state of its ``nnx.Param`` state, or None. Moments are found by name
        with ``optax.tree_utils.tree_get`` (``trace``, ``mu``, ``nu``) under any wrapper.
      loss: the step's loss, or None.
      rename: torch names where they differ from the NNX paths.

    Examples:
      >>> import optax
      >>> from flax import nnx
      >>> m = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
      >>> tx = optax.sgd(0.1, momentum=0.9)
      >>> s = nnx_training_state(m, tx.init(nnx.state(m, nnx.Param)))
      >>> sorted(s), s["opt/momentum_buffer/weight"].shape
      (['opt/momentum_buffer/bias', 'opt/momentum_buffer/weight', 'param/bias', 'param/weight'],
       (3, 2))
    """
    from flax import nnx

    table = slots(model, rename=rename)
    out = {} if loss is None else {"loss": layout.to_numpy(loss)}
    for s in table:
        kind = "param" if isinstance(variable(model, s.path), nnx.Param) else "buffer"
        out[f"{kind}/{s.torch_key}"] = torch_value(model, s)
    if opt_state is not None:
        import optax

        by_path = {s.path: s for s in table}
        for optax_name, torch_name in _OPTAX_TO_TORCH.items():
            found = optax.tree_utils.tree_get(opt_state, optax_name, default=None)
            if found is None:
                continue
            for path, leaf in nnx.to_flat_state(found):
                value = leaf.get_value() if isinstance(leaf, nnx.Variable) else leaf
                if path in by_path and hasattr(value, "shape"):
                    slot = by_path[path]
                    out[f"opt/{torch_name}/{slot.torch_key}"] = slot.to_torch(np.asarray(value))
    return out


def _rule_for(key: str, rules: Mapping[str, Rule], default: Rule) -> Rule:
    """The rule of the longest prefix in ``rules`` that ``key`` starts with, else ``default``."""
    matches = [p for p in rules if key.startswith(p)]
    return rules[max(matches, key=len)] if matches else default


def compare_steps(
    jax_step: Callable[[Any], Mapping[str, Any]],
    torch_step: Callable[[Any], Mapping[str, Any]],
    batches: Iterable[Any],
    *,
    reference_step: Callable[[Any], Mapping[str, Any]] | None = None,
    tolerance: Rule | Mapping[str, Rule] | None = None,
    exclude: Sequence[str] = (),
) -> Report:
    """Runs two training loops on the same batches and compares their state after every step.

    Each ``*_step(batch)`` takes one optimizer step on its own model and returns the state to
    compare, a mapping of names to arrays (`torch_training_state`, `nnx_training_state`); both
    should return the same keys (a key on one side only is a failed entry, unless excluded).
    ``reference_step`` is the torch loop in float64 from the same start: with it, the default
    rule is `STEPS_RULE` (JAX's drift from float64 no worse than twice torch's own in RMSE, ten
    times in the maximum: the only fair yardstick over many steps, where float32 rounding grows
    and a ReLU kink can route one element differently); without it, give a `Close` ``tolerance``.

    What a float32 comparison cannot see: a systematic difference below float32 rounding (flax's
    biased running variance differs from torch's by ``n/(n-1)``, 2e-7 relative at a momentum of
    0.1 and ``n = 5e5`` values per channel). Run the same loops in float64 with a `Close` rule as
    well: there any such difference stands out by orders of magnitude. And a tensor whose exact
    value is 0 or cancels (a bias before a BatchNorm, whose gradient is exactly zero; an Adam
    moment whose terms cancel) is rounding noise on both sides: give it its own rule by key
    prefix, or exclude it.

    Args:
      jax_step: ``batch -> state`` of the JAX loop.
      torch_step: ``batch -> state`` of the torch loop (float32).
      batches: the batches, each passed to every loop.
      reference_step: ``batch -> state`` of the torch loop in float64, or None.
      tolerance: a rule, or a mapping from key prefixes (``"opt/exp_avg/"``, ``"loss"``) to rules
        where the longest matching prefix wins and the key ``""`` sets the default.
      exclude: key prefixes not compared (e.g. ``"buffer/bn1.num_batches_tracked"`` for a port
        that keeps no counter).

    Returns:
      A `Report` with one entry per step and key (``step 1 loss``, ``step 1 param/fc.weight``);
      ``report.first_failure`` is the first step and tensor that diverged.

    Examples:
      >>> def jax_step(b): return {"loss": np.float32(b) / 3}
      >>> def torch_step(b): return {"loss": np.float32(b / 3)}
      >>> def ref_step(b): return {"loss": np.float64(b / 3)}
      >>> compare_steps(jax_step, torch_step, [1, 2], reference_step=ref_step).ok
      True
    """
    if tolerance is None and reference_step is None:
        raise ValueError("compare_steps needs reference_step= (a float64 torch loop) or tolerance=")
    rules = dict(tolerance) if isinstance(tolerance, Mapping) else {}
    default = rules.pop("", None) or (
        tolerance if isinstance(tolerance, (Close, Reference)) else STEPS_RULE
    )
    if reference_step is None:
        for rule in (default, *rules.values()):
            if isinstance(rule, Reference):
                raise ValueError(
                    "tolerance: the Reference rule needs reference_step= (float64 torch); give a "
                    "Close rule for every key (the prefix '' sets the default)"
                )
    skip = tuple(exclude)
    entries = []
    for i, batch in enumerate(batches, start=1):
        j, t = dict(jax_step(batch)), dict(torch_step(batch))
        r = dict(reference_step(batch)) if reference_step is not None else None
        keys = [k for k in set(j) | set(t) if not (skip and k.startswith(skip))]
        for key in sorted(keys, key=lambda k: (k != "loss", k)):
            rule = _rule_for(key, rules, default)
            if key not in j or key not in t:
                side = "jax" if key in j else "torch"
                verdict = Verdict(
                    math.inf, (), math.inf, (), None, None, False, f"only on the {side} side"
                )
                entries.append(Entry(f"step {i} {key}", "-", 0, (), rule.describe(), verdict))
                continue
            if r is not None and key not in r:
                raise ValueError(f"step {i}: the reference_step state has no {key!r}")
            jv, tv = np.asarray(j[key]), np.asarray(t[key])
            eps = float(np.finfo(jv.dtype if jv.dtype.kind == "f" else np.float32).eps)
            verdict = judge(jv, tv, None if r is None else np.asarray(r[key]), rule, eps=eps,
                            allow_nonfinite=False)  # fmt: skip
            dtype = str(jv.dtype)
            entries.append(Entry(f"step {i} {key}", dtype, 0, jv.shape, rule.describe(), verdict))
    return Report(tuple(entries), title="training steps")
