"""The fused classifier head (`jaxloss.linear_*`) against torch's ``loss(F.linear(x, W, b), y)``.

Values and the gradients of features, kernel and bias, in float32 (the float64-reference rule of
`jaxloss.parity`: JAX's error against torch float64 at most twice torch float32's own) and
float64 (``Close(rtol=1e-10, atol=1e-12)``), with hypothesis over batch sizes (one example up),
feature widths, class counts, chunk sizes that do and do not divide the class count (1 included:
every class its own chunk), bias or none, every reduction, class weights, ``ignore_index`` and
smoothing.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torch_reference as ref
from hypothesis import given, settings
from hypothesis import strategies as st
from parity_helpers import REDUCTIONS, gammas

import jaxloss
from jaxloss import parity

# Each example compiles the chunked head's forward and backward in two dtypes (about 1 s on this
# machine): these tests draw half the profile's examples (JAXLOSS_HYPOTHESIS_EXAMPLES, default 20),
# the seed modules' test a quarter.
HALF = settings(max_examples=max(5, settings().max_examples // 2))
QUARTER = settings(max_examples=max(3, settings().max_examples // 4))

# A menu of shapes (each new one is an XLA compile); values and hyper-parameters are free.
BATCH = (1, 5, 16)
WIDTH = (1, 3, 8)
CLASSES = (2, 3, 7, 12, 33)
CHUNKS = (1, 2, 5, 8, 64)


class Head:
    """A random head: features ``(N, D)``, kernel ``(D, C)``, bias ``(C,)`` or None, labels."""

    def __init__(self, draw):
        n, d, c = (draw(st.sampled_from(m)) for m in (BATCH, WIDTH, CLASSES))
        self.chunk = draw(st.sampled_from(CHUNKS))
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        scale = draw(st.sampled_from([0.1, 1.0, 4.0]))
        self.x = rng.normal(size=(n, d))
        self.w = rng.normal(size=(d, c)) * scale
        self.b = rng.normal(size=c) if draw(st.booleans()) else None
        self.labels = rng.integers(0, c, size=n)
        self.rng = rng

    @property
    def num_classes(self) -> int:
        return self.w.shape[1]

    def inputs(self):
        arrays = [self.x, self.w] + ([] if self.b is None else [self.b])
        return [parity.fixed(a) for a in arrays]

    def jax(self, fn, **kwargs):
        """``fn(x, w, labels, bias=b, chunk_size=...)`` taking ``(x, w[, b])`` positionally."""

        def run(x, w, b=None):
            return fn(x, w, self.labels, bias=b, chunk_size=self.chunk, **kwargs)

        return run

    def torch(self, loss):
        """``loss(F.linear(x, w.T, b), labels)`` taking ``(x, w[, b])`` positionally."""
        y = torch.from_numpy(self.labels)

        def run(x, w, b=None):
            return loss(F.linear(x, w.T, b), y)

        return run


heads = st.composite(lambda draw: Head(draw))()


def _check(head, jax_fn, torch_fn, *, tolerance=None):
    parity.assert_parity(
        head.jax(jax_fn[0], **jax_fn[1]),
        head.torch(torch_fn),
        head.inputs(),
        tolerance=tolerance,
    )


def _weights(head, weighted):
    return head.rng.uniform(0.1, 3.0, head.num_classes) if weighted else None


def _t(array, like):
    return None if array is None else torch.tensor(array, dtype=like.dtype)


@HALF
@given(
    head=heads,
    gamma=gammas,
    alpha=st.sampled_from(["none", "scalar", "per-class"]),
    weighted=st.booleans(),
    ignore=st.booleans(),
    reduction=st.sampled_from(REDUCTIONS),
)
def test_linear_focal_loss(head, gamma, alpha, weighted, ignore, reduction):
    weight = _weights(head, weighted)
    alphas = {"none": None, "scalar": 0.25, "per-class": head.rng.uniform(0.1, 1, head.num_classes)}
    a = alphas[alpha]
    ignore_index = int(head.labels[0]) if ignore and len(head.labels) > 1 else None

    def loss(z, y):
        return ref.focal_reference(
            z, y, gamma=gamma, alpha=None if a is None else torch.tensor(a, dtype=z.dtype),
            weight=_t(weight, z), ignore_index=ignore_index, reduction=reduction,
        )  # fmt: skip

    options = dict(gamma=gamma, alpha=a, weight=weight, ignore_index=ignore_index)
    _check(head, (jaxloss.linear_focal_loss, dict(options, reduction=reduction)), loss)


@QUARTER
@given(head=heads, gamma=st.sampled_from([0.0, 2.0]))
def test_linear_focal_loss_seed000_and_seed001(head, gamma):
    """The seed modules as written: 000 (scalar alpha, plain mean), 001 (NLL class weights)."""
    _check(
        head,
        (jaxloss.linear_focal_loss, dict(gamma=gamma, alpha=0.5)),
        ref.FocalLossSeed000(alpha=0.5, gamma=gamma),
    )
    weight = _weights(head, True)

    def seed001(z, y):
        return ref.FocalLossSeed001(weight=_t(weight, z), gamma=gamma)(z, y)

    _check(head, (jaxloss.linear_focal_loss, dict(gamma=gamma, weight=weight)), seed001)


@HALF
@given(
    head=heads,
    weighted=st.booleans(),
    ignore=st.booleans(),
    smoothing=st.sampled_from([0.0, 0.1]) | st.floats(0.0, 0.9),
    reduction=st.sampled_from(REDUCTIONS),
)
def test_linear_cross_entropy(head, weighted, ignore, smoothing, reduction):
    weight = _weights(head, weighted)
    ignore_index = int(head.labels[0]) if ignore and len(head.labels) > 1 else -100

    def loss(z, y):
        return F.cross_entropy(
            z, y, weight=_t(weight, z), ignore_index=ignore_index, label_smoothing=smoothing,
            reduction=reduction,
        )  # fmt: skip

    options = dict(weight=weight, ignore_index=ignore_index, label_smoothing=smoothing)
    _check(head, (jaxloss.linear_cross_entropy, dict(options, reduction=reduction)), loss)


@HALF
@given(
    head=heads,
    weighted=st.booleans(),
    smoothing=st.floats(0.0, 0.9),
    reduction=st.sampled_from(REDUCTIONS),
)
def test_linear_label_smoothing_loss(head, weighted, smoothing, reduction):
    weight = _weights(head, weighted)

    def loss(z, y):
        return ref.label_smoothing_others_reference(
            z, y, smoothing=smoothing, weight=_t(weight, z), reduction=reduction
        )

    options = dict(smoothing=smoothing, weight=weight, reduction=reduction)
    _check(head, (jaxloss.linear_label_smoothing_loss, options), loss)
    if weight is None and reduction == "mean":  # the seeds' module itself
        module = ref.LabelSmoothingLoss(head.num_classes, smoothing=smoothing)
        _check(head, (jaxloss.linear_label_smoothing_loss, dict(smoothing=smoothing)), module)


@pytest.mark.parametrize("chunk", [3, 64])
@pytest.mark.parametrize("scale", [30.0, 300.0])
def test_saturated_heads(chunk, scale):
    """Logits in the hundreds to thousands: p_t rounds to 1 or 0 even in float64. gamma = 2: equal
    to torch float64 (values and gradients); gamma = 0.5, where torch's gradient of
    ``(1 - p)**0.5`` at ``p = 1`` is NaN: equal to the logits form `jaxloss.focal_loss` of ``x @ W``
    in float64, finite. Float32: off float64 by no more than twice the logits form's float32."""
    rng = np.random.default_rng(int(scale) + chunk)
    x, w = rng.normal(size=(6, 4)), rng.normal(size=(4, 10)) * scale
    labels = np.argmax(x @ w, axis=1)
    labels[:2] = np.argmin(x[:2] @ w, axis=1)  # two rows saturated the wrong way
    for gamma in (0.5, 2.0):

        def fused(x_, w_, gamma=gamma):
            return jaxloss.linear_focal_loss(x_, w_, labels, gamma=gamma, chunk_size=chunk)

        def logits_form(x_, w_, gamma=gamma):
            return jaxloss.focal_loss(x_ @ w_, labels, gamma=gamma)

        def torch_fn(x_, w_, gamma=gamma):
            return ref.focal_reference(F.linear(x_, w_.T), torch.from_numpy(labels), gamma=gamma)

        if gamma == 2.0:
            parity.assert_parity(
                fused, torch_fn, [parity.fixed(x), parity.fixed(w)], dtypes=("float64",)
            )
        with jax.enable_x64(True):
            want = jax.value_and_grad(logits_form, argnums=(0, 1))(x, w)
            got64 = jax.value_and_grad(fused, argnums=(0, 1))(x, w)
        x32, w32 = (a.astype(np.float32) for a in (x, w))
        got32 = jax.value_and_grad(fused, argnums=(0, 1))(x32, w32)
        logits32 = jax.value_and_grad(logits_form, argnums=(0, 1))(x32, w32)
        leaves = (jax.tree.leaves(t) for t in (got64, got32, logits32, want))
        for g64, g32, l32, ref64 in zip(*leaves, strict=True):
            ref64 = np.asarray(ref64)
            assert np.isfinite(ref64).all() and np.isfinite(np.asarray(g32)).all()
            np.testing.assert_allclose(np.asarray(g64), ref64, rtol=1e-10, atol=1e-12)
            # float32: no worse than the materialised logits' own float32 rounding (x 2, + 8 ulp)
            err, err_logits = (np.abs(np.asarray(a, np.float64) - ref64).max() for a in (g32, l32))
            assert err <= 2 * err_logits + 8 * 2**-23 * np.abs(ref64).max(), (err, err_logits)
