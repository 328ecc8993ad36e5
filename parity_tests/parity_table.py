"""Prints the parity table: worst value and gradient differences, jaxloss vs the PyTorch references.

    python parity_tests/parity_table.py [--cases 50]

An independent check from the pytest suite's hypothesis sweeps: fixed seeds, every function and
option, float32 and float64, values and gradients (torch autograd vs jax.vjp, random cotangent).
Exits 1 if any row exceeds the suite's tolerances.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import torch_reference as ref
from parity_helpers import TOLERANCES, to_torch

import jaxloss


def _case(rng):
    lead = [(1,), (6,), (16,), (3, 4)][rng.integers(4)]
    c = int(rng.choice([2, 3, 7, 12]))
    logits = rng.normal(size=lead + (c,)) * rng.choice([0.1, 1.0, 4.0])
    return logits, rng.integers(0, c, lead), c, lead


def _rows():
    """(name, make(rng) -> (jax_fn, torch_fn, x))."""

    def focal000(rng):
        x, y, c, lead = _case(rng)
        g, a, red = (
            float(rng.uniform(0, 5)),
            float(rng.uniform(0.05, 4)),
            rng.choice(["mean", "sum", "none"]),
        )
        m = ref.FocalLossSeed000(alpha=a, gamma=g, reduction=red)
        return (
            lambda v: jaxloss.focal_loss(v, y, gamma=g, alpha=a, reduction=red),
            lambda t: (lambda o: o.reshape(lead) if red == "none" else o)(
                m(t.reshape(-1, c), torch.tensor(y.ravel()))
            ),
            x,
        )

    def focal001(rng):
        x, y, c, lead = _case(rng)
        g, w, red = (
            float(rng.uniform(0, 5)),
            rng.uniform(0.1, 3, c),
            rng.choice(["mean", "sum", "none"]),
        )

        def tfn(t):
            out = ref.FocalLossSeed001(
                weight=torch.tensor(w, dtype=t.dtype), gamma=g, reduction=red
            )(t.reshape(-1, c), torch.tensor(y.ravel()))
            return out.reshape(lead) if red == "none" else out

        return lambda v: jaxloss.focal_loss(v, y, gamma=g, weight=w, reduction=red), tfn, x

    def focal003(rng):
        x, y, c, lead = _case(rng)
        g, a = float(rng.uniform(0, 5)), rng.uniform(0.1, 100, c)
        m = ref.FocalLossSeed003(alpha=list(a), gamma=g)
        m.smooth = 0.0  # its +1e-8 is a documented deviation (test_deviations.py)
        return (
            lambda v: jaxloss.focal_loss(v, y, gamma=g, alpha=a),
            lambda t: m(t.reshape(-1, c), torch.tensor(y.ravel())),
            x,
        )

    def ce(rng):
        x, y, c, lead = _case(rng)
        s, w, red = (
            float(rng.uniform(0, 0.9)),
            rng.uniform(0.1, 3, c),
            rng.choice(["mean", "sum", "none"]),
        )
        y = np.where(rng.random(y.shape) < 0.2, -100, y)
        y.ravel()[0] = 0

        def tfn(t):
            out = F.cross_entropy(
                t.reshape(-1, c),
                torch.tensor(y.ravel()),
                weight=torch.tensor(w, dtype=t.dtype),
                ignore_index=-100,
                label_smoothing=s,
                reduction=red,
            )
            return out.reshape(lead) if red == "none" else out

        return (
            lambda v: jaxloss.cross_entropy(
                v, y, weight=w, ignore_index=-100, label_smoothing=s, reduction=red
            ),
            tfn,
            x,
        )

    def smoothing(rng):
        x, y, c, lead = _case(rng)
        s = float(rng.uniform(0, 0.9))
        m = ref.LabelSmoothingLoss(classes=c, smoothing=s)
        return (
            lambda v: jaxloss.label_smoothing_loss(v, y, smoothing=s),
            lambda t: m(t.reshape(-1, c), torch.tensor(y.ravel())),
            x,
        )

    def f1(rng):
        x, y, c, lead = _case(rng)
        m = ref.F1Loss(classes=c)
        return (
            lambda v: jaxloss.f1_loss(v, y),
            lambda t: m(t.reshape(-1, c), torch.tensor(y.ravel())),
            x,
        )

    def sigmoid(rng):
        x, _, c, lead = _case(rng)
        tg = np.where(
            rng.random(x.shape) < 0.5, rng.integers(0, 2, x.shape), rng.uniform(0, 1, x.shape)
        )
        g, a = float(rng.uniform(0, 5)), float(rng.choice([0.25, -1.0, rng.uniform(0, 1)]))
        return (
            lambda v: jaxloss.sigmoid_focal_loss(v, tg, gamma=g, alpha=a),
            lambda t: ref.torchvision_sigmoid_focal_loss(
                t, to_torch(tg, np.float64).to(t.dtype), alpha=a, gamma=g, reduction="mean"
            ),
            x,
        )

    return [
        ("focal_loss vs seed 000 FocalLoss(alpha, gamma)", focal000),
        ("focal_loss vs seed 001 FocalLoss(weight, gamma)", focal001),
        ("focal_loss vs seed 003 FocalLoss([alpha_c], gamma)", focal003),
        ("cross_entropy vs F.cross_entropy(weight, ignore, smoothing)", ce),
        ("label_smoothing_loss vs seed LabelSmoothingLoss", smoothing),
        ("f1_loss vs seed 001 F1Loss", f1),
        ("sigmoid_focal_loss vs torchvision", sigmoid),
    ]


def _diffs(jax_fn, torch_fn, x, dtype):
    with jax.enable_x64(dtype == np.float64):
        out, vjp = jax.vjp(jax_fn, jnp.asarray(x, dtype))
        cot = np.random.default_rng(0).normal(size=out.shape).astype(dtype)
        (grad,) = vjp(jnp.asarray(cot))
    t = to_torch(x, dtype).requires_grad_(True)
    tout = torch_fn(t)
    (tout * to_torch(cot, dtype)).sum().backward()
    tol = TOLERANCES[dtype]

    def exceed(a, b):
        return np.max(np.abs(a - b) - tol["atol"] - tol["rtol"] * np.abs(b))

    o, to = np.asarray(out, np.float64), tout.detach().double().numpy()
    g, tg = np.asarray(grad, np.float64), t.grad.double().numpy()
    return np.max(np.abs(o - to)), np.max(np.abs(g - tg)), max(exceed(o, to), exceed(g, tg)) <= 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=40, help="random cases per row and dtype")
    args = parser.parse_args(argv)
    header = f"{'reference':62} {'dtype':8} {'cases':>5} {'max|dvalue|':>12} {'max|dgrad|':>12}  ok"
    print(header + "\n" + "-" * len(header))
    all_ok, total = True, 0
    for name, make in _rows():
        for dtype in (np.float32, np.float64):
            rng = np.random.default_rng(zlib.crc32(name.encode()))
            dv = dg = 0.0
            ok = True
            for _ in range(args.cases):
                a, b, fine = _diffs(*make(rng), dtype)
                dv, dg, ok = max(dv, a), max(dg, b), ok and fine
            total += args.cases
            all_ok &= ok
            print(
                f"{name:62} {np.dtype(dtype).name:8} {args.cases:5d} {dv:12.2e} {dg:12.2e}  "
                f"{'yes' if ok else 'NO'}"
            )
    tol = ", ".join(
        f"{np.dtype(k).name}: rtol {v['rtol']:g} atol {v['atol']:g}" for k, v in TOLERANCES.items()
    )
    verdict = "all within" if all_ok else "EXCEEDED"
    print(f"\n{total} cases, values and gradients; tolerances {tol}: {verdict}")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
