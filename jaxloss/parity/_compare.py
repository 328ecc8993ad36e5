"""`compare`: a JAX function and a torch function on the same inputs, values and gradients."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxloss.parity._inputs import Input, as_input
from jaxloss.parity._report import Entry, Report
from jaxloss.parity._rules import Close, Reference, Rule, judge

__all__ = ["assert_parity", "compare", "default_rule", "import_torch"]

_DTYPES = ("float32", "float64")


def import_torch() -> Any:
    """``torch``, or an ImportError that says which extra installs it."""
    try:
        import torch
    except ImportError as e:  # pragma: no cover - the test environment has torch
        raise ImportError(
            "jaxloss.parity compares against PyTorch: pip install 'jaxloss[parity]' (or torch)"
        ) from e
    return torch


def default_rule(dtype: str) -> Rule:
    """`Reference` (k = 2) in float32; in float64, where nothing wider is at hand, `Close`.

    float64's default, ``rtol=1e-10, atol=1e-12``, is what this project's own parity suite holds
    its losses to: both sides are exact to about 1e-15 and may differ by a few hundred ulps when
    their formulas differ.

    Examples:
      >>> default_rule("float32"), default_rule("float64")
      (Reference(k=2.0, ulps=32.0, max_k=2.0), Close(rtol=1e-10, atol=1e-12))
    """
    return Reference() if dtype == "float32" else Close(rtol=1e-10, atol=1e-12)


def _x64(dtype: str) -> contextlib.AbstractContextManager[Any]:
    return jax.enable_x64(True) if dtype == "float64" else contextlib.nullcontext()


def _torch_dtype(torch: Any, dtype: str) -> Any:
    return {"float32": torch.float32, "float64": torch.float64}[dtype]


def _leaves_with_names(tree: Any) -> tuple[list[Any], list[str], Any]:
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    names = ["value" + jax.tree_util.keystr(path) for path, _ in flat]
    return [leaf for _, leaf in flat], names, treedef


def _is_float(x: Any) -> bool:
    return np.dtype(x.dtype).kind == "f"


_UNTRACEABLE = (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError,
                jax.errors.TracerIntegerConversionError)  # fmt: skip


def _run_jax(fn, arrays, specs, diff, dtype, cotangents):
    """Values and vjp of ``fn`` in ``dtype``; ``cotangents(outs)`` draws them once per trial.

    ``fn`` and its vjp run as one ``jax.jit`` program (one compile per shape, not one per
    primitive and pass), the inputs not differentiated closed over as constants (so a loss's
    check of concrete labels still runs); a function that cannot be traced (Python control flow
    on values) runs eagerly instead.
    """
    with _x64(dtype):
        args = [
            jnp.asarray(a, dtype) if s.is_float else jnp.asarray(a)
            for a, s in zip(arrays, specs, strict=True)
        ]

        def f(*d):
            full = list(args)
            for i, x in zip(diff, d, strict=True):
                full[i] = x
            return fn(*full)

        primals = [args[i] for i in diff]
        try:  # values and vjp in one compiled program, as training code runs them
            shapes = jax.eval_shape(f, *primals)
        except _UNTRACEABLE:
            shapes = None  # Python control flow on values: run it eagerly
        leaves, names, treedef = _leaves_with_names(shapes if shapes is not None else f(*primals))
        cts = cotangents([tuple(np.shape(x)) for x in leaves], [_is_float(x) for x in leaves])
        floats = [jnp.asarray(c, x.dtype) for c, x in zip(cts, leaves, strict=True) if _is_float(x)]

        def both(primals: list[Any], floats: list[Any]) -> tuple[Any, Any]:
            if not diff:
                return f(), ()
            out, vjp = jax.vjp(f, *primals)
            given = iter(floats)  # float0 zeros for integer outputs (no jit argument can be one)
            ct = [next(given) if _is_float(x) else np.zeros(np.shape(x), jax.dtypes.float0)
                  for x in leaves]  # fmt: skip
            return out, vjp(jax.tree.unflatten(treedef, ct))

        out, grads = (jax.jit(both) if shapes is not None else both)(primals, floats)
        leaves, names, treedef = _leaves_with_names(out)
        values = [np.asarray(x) for x in leaves]
        return values, names, treedef, [np.asarray(g) for g in grads]


def _run_torch(fn, arrays, specs, diff, dtype, cotangents):
    torch = import_torch()
    tdtype = _torch_dtype(torch, dtype)
    args = []
    for i, (a, s) in enumerate(zip(arrays, specs, strict=True)):
        if s.is_float:
            t = torch.tensor(np.asarray(a, np.float64), dtype=tdtype)
            args.append(t.requires_grad_(i in diff))
        else:
            a = np.asarray(a)
            args.append(torch.from_numpy(a.astype(np.int64) if a.dtype.kind in "iu" else a))
    out = fn(*args)
    leaves, names, treedef = _leaves_with_names(out)
    cts = cotangents([tuple(x.shape) for x in leaves], [x.is_floating_point() for x in leaves])
    outs, grad_outs = [], []
    for x, c in zip(leaves, cts, strict=True):
        if x.is_floating_point() and x.requires_grad and tuple(x.shape) == np.shape(c):
            outs.append(x)  # (a shape that differs from JAX's fails as a value: no gradient)
            grad_outs.append(torch.tensor(c, dtype=x.dtype))
    grads = []
    if diff:
        inputs = [args[i] for i in diff]
        got = torch.autograd.grad(outs, inputs, grad_outs, allow_unused=True) if outs else ()
        got = got or (None,) * len(inputs)
        grads = [
            torch.zeros_like(x).numpy() if g is None else g.detach().cpu().numpy()
            for g, x in zip(got, inputs, strict=True)
        ]
    values = [x.detach().cpu().numpy() for x in leaves]
    return values, names, treedef, grads


def compare(
    jax_fn: Callable[..., Any],
    torch_fn: Callable[..., Any],
    inputs: Sequence[Input | Any],
    *,
    dtypes: Sequence[str] = _DTYPES,
    tolerance: Rule | Mapping[str, Rule] | None = None,
    trials: int = 1,
    seed: int = 0,
    reference: str | None = "torch",
    allow_nonfinite: bool = False,
    names: Sequence[str] | None = None,
    title: str = "parity",
) -> Report:
    """Compares ``jax_fn(*inputs)`` with ``torch_fn(*inputs)``: values and every input's gradient.

    Each trial draws the inputs (`normal`, `uniform`, `integers`, `probabilities`, or the arrays
    given), casts the float ones to each dtype in ``dtypes`` for both sides (integers: the spec's
    dtype for JAX, int64 for torch), runs both functions and their vector-Jacobian products with
    the same random normal cotangent for every float output, with respect to every float input
    whose ``grad`` is True. Outputs may be an array or any nesting of tuples, lists and dicts (the
    same on both sides). In float32 it also runs the ``reference`` side (``"torch"`` or ``"jax"``)
    in float64, the yardstick of the `Reference` rule and of the report's ``closer`` column.

    Args:
      jax_fn: takes JAX arrays positionally.
      torch_fn: takes torch tensors positionally, the same order.
      inputs: one `Input` (or array) per positional argument.
      dtypes: the float dtypes to compare in, from ``"float32"`` and ``"float64"``.
      tolerance: a rule for every dtype, or a mapping from dtype to rule; default `default_rule`
        (`Reference` in float32, `Close(1e-10, 1e-12)` in float64).
      trials: how many random draws.
      seed: seed of the first draw (trial ``i`` uses ``seed + i``).
      reference: the side whose float64 run is the reference, or None for none (then `Close`
        only; a torch function that closes over float32 tensors cannot run in float64).
      allow_nonfinite: whether NaN / inf may appear (then identically on both sides).
      names: input names for the report (default ``x0``, ``x1``, ...).
      title: the report's first word (e.g. the function's name).

    Returns:
      A `Report`; ``report.assert_ok()`` raises `ParityError` with the table.

    Examples:
      >>> import torch
      >>> from jaxloss import parity
      >>> report = parity.compare(
      ...     lambda x: jax.nn.log_softmax(x, axis=-1),
      ...     lambda x: torch.log_softmax(x, dim=-1),
      ...     [parity.normal((4, 5), scale=3.0)], trials=2)
      >>> report.ok, len(report.entries)  # value and gradient, 2 trials, float32 and float64
      (True, 8)
    """
    specs = [as_input(x) for x in inputs]
    bad = [d for d in dtypes if d not in _DTYPES]
    if bad or not dtypes:
        raise ValueError(f"dtypes must be a non-empty subset of {_DTYPES}, got {dtypes=}")
    if reference not in ("torch", "jax", None):
        raise ValueError(f"reference must be 'torch', 'jax' or None, got {reference=}")
    if not isinstance(trials, int) or trials < 1:
        raise ValueError(f"trials must be an int >= 1, got {trials=}")
    if names is not None and len(names) != len(specs):
        raise ValueError(f"names: {len(names)} names for {len(specs)} inputs")
    labels = list(names) if names is not None else [f"x{i}" for i in range(len(specs))]
    diff = [i for i, s in enumerate(specs) if s.is_float and s.grad]
    rules = {d: _rule(tolerance, d) for d in dtypes}
    if reference is None and any(isinstance(r, Reference) for r in rules.values()):
        raise ValueError("tolerance: the Reference rule needs reference='torch' or 'jax'")
    entries: list[Entry] = []
    for trial in range(trials):
        rng = np.random.default_rng(seed + trial)
        arrays = [s.sample(rng) for s in specs]
        drawn: list[list[np.ndarray]] = []

        def cotangents(shapes, is_float, rng=rng, drawn=drawn):
            if not drawn:  # once per trial: the same for every side and dtype
                drawn.append(
                    [
                        rng.normal(size=s) if f else np.zeros(s)
                        for s, f in zip(shapes, is_float, strict=True)
                    ]
                )
            return drawn[0]

        runs: dict[tuple[str, str], Any] = {}

        def run(side, dtype, arrays=arrays, cotangents=cotangents, runs=runs):
            if (side, dtype) not in runs:
                fn, runner = (jax_fn, _run_jax) if side == "jax" else (torch_fn, _run_torch)
                runs[side, dtype] = runner(fn, arrays, specs, diff, dtype, cotangents)
            return runs[side, dtype]

        for dtype in dtypes:
            jv, jnames, jdef, jg = run("jax", dtype)
            tv, _, tdef, tg = run("torch", dtype)
            if jdef != tdef:
                raise ValueError(f"the outputs differ in structure: jax {jdef}, torch {tdef}")
            rv: list[Any] = [None] * len(jv)
            rg: list[Any] = [None] * len(jg)
            if dtype != "float64" and reference is not None:
                rv, _, _, rg = run(reference, "float64")
            checks = list(zip(jnames, jv, tv, rv, strict=True))
            checks += [
                (f"grad {labels[i]}", j, t, r) for i, j, t, r in zip(diff, jg, tg, rg, strict=True)
            ]
            rule, eps = rules[dtype], float(np.finfo(dtype).eps)
            for name, j, t, r in checks:
                verdict = judge(j, t, r, rule, eps=eps, allow_nonfinite=allow_nonfinite)
                entries.append(
                    Entry(name, dtype, trial, tuple(np.shape(j)), rule.describe(), verdict)
                )
    return Report(tuple(entries), title)


def _rule(tolerance: Rule | Mapping[str, Rule] | None, dtype: str) -> Rule:
    if tolerance is None:
        return default_rule(dtype)
    if isinstance(tolerance, (Close, Reference)):
        rule = tolerance
    elif isinstance(tolerance, Mapping) and dtype in tolerance:
        rule = tolerance[dtype]
    elif isinstance(tolerance, Mapping):
        rule = default_rule(dtype)
    else:
        raise ValueError(
            f"tolerance must be Close, Reference or a dtype -> rule mapping, got {tolerance!r}"
        )
    if isinstance(rule, Reference) and dtype == "float64":
        raise ValueError(
            "tolerance: the Reference rule needs a wider reference than float64; use Close"
        )
    return rule


def assert_parity(
    jax_fn: Callable[..., Any],
    torch_fn: Callable[..., Any],
    inputs: Sequence[Input | Any],
    **kwargs: Any,
) -> Report:
    """`compare`, then raises `ParityError` (an AssertionError: pytest shows the table) on failure.

    Examples:
      >>> import torch
      >>> from jaxloss import parity
      >>> _ = parity.assert_parity(jnp.tanh, torch.tanh, [parity.normal(3)])
    """
    return compare(jax_fn, torch_fn, inputs, **kwargs).assert_ok()
