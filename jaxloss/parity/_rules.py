"""When a JAX array equals its torch counterpart: the two tolerance rules and their verdicts.

`Close` is numpy's ``assert_allclose`` rule, for a user who knows the number they want.
`Reference` needs no number: both float32 results are measured against a float64 reference, and
JAX passes when its error is no worse than ``k`` times torch's own (torch dynamo's accuracy rule,
``torch._dynamo.utils.same``, with its maximum error checked as well as its RMSE).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

__all__ = ["Close", "Reference", "Rule", "Verdict", "judge"]


@dataclasses.dataclass(frozen=True)
class Close:
    """Elementwise ``|jax - torch| <= atol + rtol * |torch|`` (``numpy.testing.assert_allclose``).

    Args:
      rtol: relative tolerance, >= 0.
      atol: absolute tolerance, >= 0.

    Examples:
      >>> Close(rtol=1e-6, atol=0.0).describe()
      '|jax - torch| <= 0 + 1e-06 |torch|'
    """

    rtol: float = 1e-6
    atol: float = 0.0

    def __post_init__(self) -> None:
        for name in ("rtol", "atol"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"Close.{name} must be a finite number >= 0, got {name}={value!r}")

    def describe(self) -> str:
        """The rule as one line of the report."""
        return f"|jax - torch| <= {self.atol:g} + {self.rtol:g} |torch|"


@dataclasses.dataclass(frozen=True)
class Reference:
    r"""JAX's error against a float64 reference is at most ``k`` times torch's own, plus a floor.

    With ``e_jax = |jax - ref|`` and ``e_torch = |torch - ref|`` (``ref``: the same computation in
    float64), a comparison passes when both

    .. math::
      \mathrm{rms}(e_{jax}) \le k\, \mathrm{rms}(e_{torch}) + f, \qquad
      \max(e_{jax}) \le k_{max} \max(e_{torch}) + f, \qquad f = u\, \epsilon \max|ref|

    hold, ``epsilon`` being the compared dtype's machine epsilon (1.19e-7 in float32). The RMSE
    test is torch dynamo's (``torch._dynamo.utils.same``, ``multiplier`` 2); the maximum catches
    one bad element among many, which an RMSE dilutes. The floor ``f`` (``ulps`` units in the
    last place of the largest reference value, 3.8e-6 relative in float32 by default) keeps a
    result that torch happens to get almost exactly right, a scalar loss say, from demanding
    as much luck of JAX; dynamo's own floor is ``tol / 10`` = 1e-5 absolute, about 84 ulps at
    magnitude 1. A port error of 1e-4 relative fails either way.

    Training trajectories need a larger ``max_k``: one activation within rounding of a ReLU or
    max-pool kink on one side only routes one gradient element differently, a spike in the maximum
    that the RMSE does not see (measured: 3.5x and 6x torch's maximum, RMSE within 1.3x and 2.1x,
    on a correct ResNet-18 port at 224 px); `compare_steps` uses ``max_k=10`` (dynamo's multiplier
    for the smallest tensors).

    Args:
      k: how many times torch's RMSE JAX's may be, >= 1. 2 is dynamo's value for float32.
      ulps: the floor in units of ``epsilon * max|ref|``, >= 0.
      max_k: the same for the maximum error (>= 1), or None for no maximum test.

    Examples:
      >>> Reference().describe()
      'error vs float64 <= 2 x torch float32 error + 32 ulp (rms 2 x, max 2 x)'
    """

    k: float = 2.0
    ulps: float = 32.0
    max_k: float | None = 2.0

    def __post_init__(self) -> None:
        if not (isinstance(self.k, (int, float)) and math.isfinite(self.k) and self.k >= 1):
            raise ValueError(f"Reference.k must be a finite number >= 1, got k={self.k!r}")
        mk = self.max_k
        if mk is not None and not (isinstance(mk, (int, float)) and math.isfinite(mk) and mk >= 1):
            raise ValueError(f"Reference.max_k must be None or a number >= 1, got max_k={mk!r}")
        ulps = self.ulps
        if not (isinstance(ulps, (int, float)) and math.isfinite(ulps) and ulps >= 0):
            raise ValueError(f"Reference.ulps must be a finite number >= 0, got ulps={ulps!r}")

    def describe(self) -> str:
        """The rule as one line of the report."""
        most = "" if self.max_k is None else f", max {self.max_k:g} x"
        return (
            f"error vs float64 <= {self.k:g} x torch float32 error + {self.ulps:g} ulp"
            f" (rms {self.k:g} x{most})"
        )


Rule = Close | Reference


@dataclasses.dataclass(frozen=True)
class Verdict:
    """One comparison's figures: what the report prints for an output or a gradient."""

    max_abs: float
    abs_at: tuple[int, ...]
    max_rel: float
    rel_at: tuple[int, ...]
    err_jax: float | None  # RMSE against the float64 reference, when there is one
    err_torch: float | None
    passed: bool
    reason: str  # empty when passed

    @property
    def closer(self) -> str:
        """``"jax"``, ``"torch"``, ``"tie"``: nearer the float64 reference; ``"-"``: none."""
        if self.err_jax is None or self.err_torch is None:
            return "-"
        if self.err_jax == self.err_torch:
            return "tie"
        return "jax" if self.err_jax < self.err_torch else "torch"


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x)))) if x.size else 0.0


def _argmax(x: np.ndarray, shape: tuple[int, ...]) -> tuple[int, ...]:
    if not x.size:
        return ()
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(x)), shape))


def _nonfinite_mismatch(arrays: dict[str, np.ndarray]) -> str:
    """Empty if every array has the same NaN / +inf / -inf at the same places."""
    names = list(arrays)
    first = arrays[names[0]]
    for name in names[1:]:
        other = arrays[name]
        same = (np.isnan(first) == np.isnan(other)) & (
            np.where(np.isinf(first), first, 0) == np.where(np.isinf(other), other, 0)
        )
        if not np.all(same):
            at = _argmax(~same, first.shape)
            return f"non-finite values differ: {names[0]} {first[at]} vs {name} {other[at]} at {at}"
    return ""


def judge(
    jax_value: np.ndarray,
    torch_value: np.ndarray,
    reference: np.ndarray | None,
    rule: Rule,
    *,
    eps: float,
    allow_nonfinite: bool,
) -> Verdict:
    """Compares one array (an output or a gradient) under ``rule``.

    Args:
      jax_value: the JAX result (any float or integer dtype; two float results must have the
        same dtype, so that a float64 leak or a half-precision result fails).
      torch_value: the torch result, of the same shape.
      reference: the float64 result of the same computation, or None (then no ``closer``, and
        ``Reference`` cannot be used).
      rule: `Close` or `Reference`.
      eps: machine epsilon of the compared dtype (the `Reference` floor).
      allow_nonfinite: if False, any NaN or inf on either side (or in the reference) fails, so
        that NaN == NaN can never pass as parity; if True, the non-finite values must be the
        same, at the same places, on every side, and the finite rest is compared.

    Returns:
      The `Verdict`. The relative error is ``|jax - torch| / |torch|`` over the elements where
      torch is not 0 (the absolute error shows the others).

    Examples:
      >>> v = judge(np.array([1.0, 2.0]), np.array([1.0, 2.5]), None, Close(rtol=0.1),
      ...           eps=1e-7, allow_nonfinite=False)
      >>> v.passed, v.max_abs, v.abs_at, v.max_rel
      (False, 0.5, (1,), 0.2)
      >>> judge(np.array([np.nan]), np.array([np.nan]), None, Close(), eps=1e-7,
      ...       allow_nonfinite=False).reason
      'not finite: jax nan, torch nan at (0,) (allow_nonfinite=False)'
    """
    kinds = np.asarray(jax_value).dtype, np.asarray(torch_value).dtype
    if kinds[0].kind == kinds[1].kind == "f" and kinds[0] != kinds[1]:  # e.g. a float64 leak
        return Verdict(math.inf, (), math.inf, (), None, None, False,
                       f"dtypes differ: jax {kinds[0]}, torch {kinds[1]}")  # fmt: skip
    j = np.asarray(jax_value, np.float64)
    t = np.asarray(torch_value, np.float64)
    r = None if reference is None else np.asarray(reference, np.float64)
    if j.shape != t.shape or (r is not None and r.shape != j.shape):
        ref_shape = "" if r is None else f", reference {r.shape}"
        return Verdict(math.inf, (), math.inf, (), None, None, False,
                       f"shapes differ: jax {j.shape}, torch {t.shape}{ref_shape}")  # fmt: skip
    sides = {"jax": j, "torch": t} if r is None else {"jax": j, "torch": t, "reference": r}
    finite = np.ones(j.shape, bool)
    for side in sides.values():
        finite &= np.isfinite(side)
    reason = ""
    if not np.all(finite):
        if not allow_nonfinite:
            at = _argmax(~finite, j.shape)
            shown = ", ".join(f"{k} {v[at]}" for k, v in sides.items())
            reason = f"not finite: {shown} at {at} (allow_nonfinite=False)"
        else:
            reason = _nonfinite_mismatch(sides)
    diff = np.where(finite, np.abs(j - t), 0.0)
    nonzero = finite & (t != 0)
    rel = np.where(nonzero, diff / np.where(nonzero, np.abs(t), 1.0), 0.0)
    err_jax = err_torch = None
    if r is not None:
        e_jax = np.abs(j - r)[finite]
        e_torch = np.abs(t - r)[finite]
        err_jax, err_torch = _rms(e_jax), _rms(e_torch)
    if not reason:
        if isinstance(rule, Close):
            bad = finite & (diff > rule.atol + rule.rtol * np.abs(t))
            if np.any(bad):
                at = _argmax(np.where(bad, diff, -1.0), j.shape)
                n = int(bad.sum())
                reason = f"{n} element(s) outside {rule.describe()}; worst at {at}"
        elif r is None:
            reason = "Reference needs a float64 reference (compare in float32 with reference=...)"
        else:
            scale = float(np.max(np.abs(r[finite]))) if np.any(finite) else 0.0
            floor = rule.ulps * eps * scale
            max_jax = float(e_jax.max()) if e_jax.size else 0.0
            max_torch = float(e_torch.max()) if e_torch.size else 0.0
            assert err_jax is not None and err_torch is not None
            if err_jax > rule.k * err_torch + floor:
                reason = (
                    f"rms error {err_jax:.3g} > {rule.k:g} x torch's {err_torch:.3g} + {floor:.3g}"
                )
            elif rule.max_k is not None and max_jax > rule.max_k * max_torch + floor:
                reason = (
                    f"max error {max_jax:.3g} > {rule.max_k:g} x torch's {max_torch:.3g}"
                    f" + {floor:.3g}"
                )
    return Verdict(
        max_abs=float(diff.max()) if diff.size else 0.0,
        abs_at=_argmax(diff, j.shape),
        max_rel=float(rel.max()) if rel.size else 0.0,
        rel_at=_argmax(rel, j.shape),
        err_jax=err_jax,
        err_torch=err_torch,
        passed=not reason,
        reason=reason,
    )
