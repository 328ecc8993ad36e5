"""Shared machinery of the parity tests: random cases and the value+gradient comparison."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import numpy as np
import torch
from hypothesis import strategies as st

from jaxloss import parity

# Tolerances of every parity comparison, per dtype: |jax - torch| <= ATOL + RTOL * |torch|.
# float64: both sides are exact to ~1e-15; the formulas differ (softplus of the other-class
# log-sum-exp vs log_softmax), so allow a few hundred ulps. float32: XLA and ATen sum in different
# orders, and the references lose ~1e-7 relative in 1 - p; 1e-5 is ~100 ulps.
TOLERANCES = {np.float64: dict(rtol=1e-10, atol=1e-12), np.float32: dict(rtol=2e-5, atol=2e-6)}
DTYPES = (np.float32, np.float64)
REDUCTIONS = ("mean", "sum", "none")


@dataclasses.dataclass(frozen=True)
class Case:
    """A random classification batch: logits ``(*lead, C)`` (float64) and labels ``lead``."""

    logits: np.ndarray
    labels: np.ndarray
    rng: np.random.Generator

    @property
    def num_classes(self) -> int:
        return self.logits.shape[-1]


# Shapes come from a menu so that compiled programs are reused across examples (each new shape is
# an XLA compile of ~0.3 s on this machine); values, labels and hyper-parameters are fully random.
LEAD_SHAPES = ((1,), (6,), (16,), (3, 4), (2, 1, 3))
NUM_CLASSES = (2, 3, 7, 12)


@st.composite
def cases(draw, *, scale: float = 4.0) -> Case:
    """Batch shapes from one example upwards, 1-3 leading axes, 2..12 classes."""
    lead = draw(st.sampled_from(LEAD_SHAPES))
    num_classes = draw(st.sampled_from(NUM_CLASSES))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=lead + (num_classes,)) * draw(st.sampled_from([0.1, 1.0, scale]))
    labels = rng.integers(0, num_classes, size=lead)
    return Case(logits, labels, rng)


gammas = st.sampled_from([0.0, 0.5, 1.0, 2.0]) | st.floats(0.0, 5.0)


def to_torch(x: np.ndarray, dtype) -> torch.Tensor:
    return torch.tensor(
        np.asarray(x), dtype=torch.float64 if dtype == np.float64 else torch.float32
    )


def assert_parity(
    jax_fn: Callable[[jax.Array], jax.Array],
    torch_fn: Callable[[torch.Tensor], torch.Tensor],
    x: np.ndarray,
    dtype,
    *,
    tolerances: dict | None = None,
) -> None:
    """Asserts equal values and equal gradients w.r.t. ``x`` (a random cotangent for vector
    outputs), with `jaxloss.parity` (the public harness) under the `Close` rule of ``TOLERANCES``.

    ``jax_fn`` receives ``x`` with its own shape; ``torch_fn`` receives the same data as a tensor
    and must return the same shape as ``jax_fn``. No float64 reference is run: the torch
    closures hold tensors of the compared dtype.
    """
    name = np.dtype(dtype).name
    rule = parity.Close(**(tolerances or TOLERANCES[dtype]))
    parity.assert_parity(
        jax_fn, torch_fn, [parity.fixed(x)], dtypes=(name,), tolerance=rule, reference=None
    )


def flat(fn: Callable, num_classes: int, lead: tuple[int, ...], reduction: str) -> Callable:
    """Wraps a torch loss over ``(N, C)`` to take ``(*lead, C)`` and return jax's output shape."""

    def wrapped(t: torch.Tensor) -> torch.Tensor:
        out = fn(t.reshape(-1, num_classes))
        return out.reshape(lead) if reduction == "none" else out

    return wrapped
