"""A separate, minimal timing: ``jaxloss.focal_loss`` value+grad against the seed-000 module.

Usage (from the repository root)::

    python benchmarks/bench_focal_vs_seed.py [--batch 8192] [--classes 1000] [--rounds 50]

One process, the same float32 logits (standard normal * 2) and labels, gamma=2, alpha=1, mean. The
two are timed alternately, round by round, so machine load hits both alike: each round runs
``--block`` calls of one back to back and drops the first (the switch from the other framework);
min and median are reported. glibc's malloc thresholds are raised first (``train/runtime.py``)
unless ``--malloc default``. ``torch.set_num_threads`` equals the number of cores this process may
use (the size of XLA:CPU's intra-op pool). It cross-checks ``benchmarks/bench_losses.py``'s focal
row at 8192x1000; the timing helpers are ``benchmarks/_timing.py``'s.
"""

from __future__ import annotations

import argparse
import math
import os
import pathlib
import sys

import numpy as np

# torch's OpenMP workers otherwise spin-wait after every call and, on a machine with few cores,
# steal them from the XLA call that follows (and XLA's pool does the same to torch): measured 2x
# swings. Passive waiting (set before torch is imported; an explicit user setting wins) makes
# interleaved timing fair. It is recorded in the output.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "parity_tests"))
# _timing, beside this file (also when the file is loaded by path).
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import jax
import jax.numpy as jnp
import torch
from _timing import apply_malloc, cores, time_interleaved
from torch_reference import FocalLossSeed000

import jaxloss


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8192)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument(
        "--block", type=int, default=4, help="calls per round (the first not counted)"
    )
    parser.add_argument("--malloc", choices=("tuned", "default"), default="tuned")
    args = parser.parse_args(argv)
    apply_malloc(args.malloc)
    threads = cores()
    torch.set_num_threads(threads)

    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((args.batch, args.classes)) * 2).astype(np.float32)
    labels = rng.integers(0, args.classes, args.batch)

    x, y = jnp.asarray(logits), jnp.asarray(labels, jnp.int32)
    ours = jax.jit(jax.value_and_grad(lambda v, t: jaxloss.focal_loss(v, t, gamma=2.0)))
    xt = torch.from_numpy(logits).requires_grad_(True)
    yt = torch.from_numpy(labels.astype(np.int64))
    seed = FocalLossSeed000(alpha=1, gamma=2)

    def run_ours():
        return jax.block_until_ready(ours(x, y))

    def run_seed():
        xt.grad = None
        loss = seed(xt, yt)
        loss.backward()
        return loss

    value, grad = run_ours()
    ref = run_seed()
    run_seed()
    np.testing.assert_allclose(float(value), float(ref.detach()), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(grad), xt.grad.numpy(), rtol=1e-4, atol=1e-9)

    runners = {"jaxloss.focal_loss": run_ours, "FocalLossSeed000": run_seed}
    seconds = time_interleaved(runners, args.rounds, args.rounds, math.inf, block=args.block)
    times = {name: [s * 1e3 for s in samples] for name, samples in seconds.items()}
    print(
        f"focal loss value+grad, {args.batch}x{args.classes} float32, gamma=2, "
        f"{args.rounds} rounds, block {args.block}, malloc {args.malloc}, torch threads {threads}, "
        f"OMP_WAIT_POLICY {os.environ.get('OMP_WAIT_POLICY')}, "
        f"XLA_FLAGS {os.environ.get('XLA_FLAGS', '(unset)')}"
    )
    for name, ms in times.items():
        print(f"  {name:<20} min {min(ms):8.2f} ms   median {np.median(ms):8.2f} ms")
    ours_min, seed_min = min(times["jaxloss.focal_loss"]), min(times["FocalLossSeed000"])
    ours_med, seed_med = (
        np.median(times["jaxloss.focal_loss"]),
        np.median(times["FocalLossSeed000"]),
    )
    print(
        f"  seed/jaxloss: {seed_min / ours_min:.2f}x (min), {seed_med / ours_med:.2f}x (median); "
        f"values and gradients agree (rtol 1e-5 / 1e-4)"
    )


if __name__ == "__main__":
    main()
