"""Timing helpers shared by the benchmarks: runners, interleaved rounds, the floor, machine, output.

* :func:`jax_runner`, :func:`torch_runner`, :func:`floor_runner`: a zero-argument callable that
  computes one value+gradient (or the floor's read/exp/write) and waits for it;
* :func:`time_interleaved`: the methods timed round by round, ``block`` calls each per round, the
  first call of each block dropped;
* :func:`cores`, :func:`machine_info`: what the results were measured on;
* :func:`apply_malloc`: glibc's malloc thresholds raised (``train/runtime.py``) or left alone;
* :func:`write_results`: the JSON and the Markdown table beside it.
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import time

# torch's OpenMP workers otherwise spin-wait after every call (see bench_losses.py); the scripts set
# this before they import torch, and this module does too in case it is imported first.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import jax
import jax.numpy as jnp
import optax
import torch

import jaxloss
from train import runtime

BLOCK = 4  # calls per method per round; the first of each block is not counted


def cores() -> int:
    """The number of cores this process may use (the size of XLA:CPU's default intra-op pool)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def jax_runner(loss, x, y, t):
    """``run()``: one jitted value+grad of ``loss(x, y, t)`` with respect to ``x``, waited for."""
    step = jax.jit(jax.value_and_grad(loss))

    def run():
        jax.block_until_ready(step(x, y, t))

    return run


def floor_runner(x):
    """``run()``: one read of the logits, one ``exp`` and one write, jitted and waited for."""
    flat = x.reshape(-1, x.shape[-1])
    shift = jnp.zeros(flat.shape[:1], flat.dtype)
    floor = jax.jit(lambda v, r: jnp.exp(v - r[:, None]))

    def run():
        jax.block_until_ready(floor(flat, shift))

    return run


def torch_runner(loss, x, y, t):
    """``run()``: ``loss(x, y, t).backward()`` in torch eager (or compiled) mode."""

    def run():
        x.grad = None
        loss(x, y, t).backward()

    return run


def time_interleaved(runners, min_rounds, max_rounds, budget_s, block=BLOCK):
    """Round-robin timing of ``runners`` ({name: run}); returns {name: [seconds]}.

    Every round calls every runner ``block`` times back to back and keeps all but the first of
    those calls (all of them when ``block == 1``). Stops after ``max_rounds`` rounds, or after
    ``min_rounds`` once ``budget_s`` seconds have passed.
    """
    times = {name: [] for name in runners}
    start = time.perf_counter()
    for round_ in range(max_rounds):
        for name, run in runners.items():
            for i in range(block):
                t0 = time.perf_counter()
                run()
                if i or block == 1:
                    times[name].append(time.perf_counter() - t0)
        if round_ + 1 >= min_rounds and time.perf_counter() - start > budget_s:
            break
    return times


def machine_info(torch_threads):
    """CPU, cores, versions, thread and allocator-relevant settings of this process."""
    cpu = platform.processor()
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores_available": cores(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jax_backend": jax.default_backend(),
        "torch": torch.__version__,
        "optax": optax.__version__,
        "jaxloss": jaxloss.__version__,
        "torch_num_threads": torch_threads,
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", "(unset: XLA defaults, intra-op pool = cores)"),
        "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def apply_malloc(malloc: str) -> bool:
    """Applies the ``--malloc`` setting; returns whether tuning was applied.

    ``"tuned"``: raise glibc's malloc thresholds (``train/runtime.py``); ``"default"``: leave them.
    """
    if malloc not in ("tuned", "default"):
        raise ValueError(f"malloc must be 'tuned' or 'default', got {malloc=!r}")
    return runtime.tune_malloc() if malloc == "tuned" else False


def write_results(out: str, result: dict, markdown: str) -> None:
    """Writes ``result`` as JSON to ``out`` and ``markdown`` beside it (``.md``)."""
    path = pathlib.Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    path.with_suffix(".md").write_text(markdown)
    print(f"wrote {path} and {path.with_suffix('.md')}")
