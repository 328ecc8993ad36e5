"""The sizes, losses and methods bench_linear_head.py measures: its constants, the inputs, and the
four methods (``fused``, ``materialised``, ``torch``, ``compile``) as zero-argument runners.

Shared by the timing in bench_linear_head.py and the ``--child`` peak-RSS mode in ``_rss.py``.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F
from _loss_cases import GAMMA, SMOOTHING, jax_ours, torch_module

import jaxloss

D = 256
SIZES = {  # name -> (N, C); the classes are the kernel's columns
    "1024x1000": (1024, 1000),
    "4096x1000": (4096, 1000),
    "1024x32768": (1024, 32768),
    "4096x32768": (4096, 32768),
    "1024x131072": (1024, 131072),
    "4096x131072": (4096, 131072),
}
HEADLINE = "4096x131072"
LARGE_CLASSES, SMALL_CLASSES = 32768, 1000  # the goals' "C >= 32k" and "C = 1000"
QUICK_SIZES = {"256x40": (256, 40), "512x1000": (512, 1000)}
QUICK_D, QUICK_CHUNK = 32, 128  # 40 classes: one chunk; 1000: seven chunks and a tail
QUICK_HEADLINE, QUICK_LARGE_CLASSES, QUICK_SMALL_CLASSES = "512x1000", 1000, 40
LOSSES = ("focal", "cross_entropy_ls")
ALL_LOSSES = ("focal", "cross_entropy", "cross_entropy_ls")  # --losses takes any of these
METHODS = ("fused", "materialised", "torch", "compile")
JAX_METHODS = ("fused", "materialised")
WARMUP_CALLS = 6  # untimed calls before the rounds at the small sizes
MEMORY_GOAL = 1 / 8
SMALL_TIME_GOAL = 1.3
MIB = 1 << 20


# ------------------------------------------------------------------------------ inputs, methods


def _fused(name, chunk_size):
    """``(x, w, b, y) -> mean loss``: jaxloss's ``linear_*`` form of ``name``."""
    if name == "focal":
        return lambda x, w, b, y: jaxloss.linear_focal_loss(
            x, w, y, bias=b, gamma=GAMMA, chunk_size=chunk_size
        )
    smoothing = {"cross_entropy": 0.0, "cross_entropy_ls": SMOOTHING}[name]
    return lambda x, w, b, y: jaxloss.linear_cross_entropy(
        x, w, y, bias=b, label_smoothing=smoothing, chunk_size=chunk_size
    )


def _materialised(name, num_classes):
    """``(x, w, b, y) -> mean loss``: jaxloss's logits form on ``x @ w + b``."""
    loss = jax_ours(name, num_classes)
    return lambda x, w, b, y: loss(x @ w + b, y, None)


def _torch_head(name, num_classes):
    """``(x, W (C, D), b, y) -> mean loss``: the torch reference on ``F.linear(x, W, b)``."""
    loss = torch_module(name, num_classes)
    return lambda x, w, b, y: loss(F.linear(x, w, b), y, None)


def _inputs(n, c, d, seed=0, frameworks=("jax", "torch")):
    """``{"jax": (x, w, b, y), "torch": (x, W, b, y)}`` for the frameworks asked, same numbers."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d), dtype=np.float32)
    w = rng.standard_normal((d, c), dtype=np.float32) * np.float32(2 / np.sqrt(d))
    b = rng.standard_normal(c, dtype=np.float32) * np.float32(0.1)
    y = rng.integers(0, c, n).astype(np.int32)
    out = {}
    if "jax" in frameworks:
        out["jax"] = tuple(jnp.asarray(a) for a in (x, w, b, y))
    if "torch" in frameworks:  # torch's Linear layout: the weight is (C, D), contiguous
        out["torch"] = (
            torch.from_numpy(x).requires_grad_(True),
            torch.from_numpy(np.ascontiguousarray(w.T)).requires_grad_(True),
            torch.from_numpy(b).requires_grad_(True),
            torch.from_numpy(y.astype(np.int64)),
        )
    return out


def xla_memory(compiled):
    """XLA's memory account of a compiled executable, in bytes: temp, total and its parts."""
    stats = compiled.memory_analysis()
    if stats is None:
        return {"n/a": "memory_analysis() returned None on this backend"}
    parts = {
        k: int(getattr(stats, f"{k}_size_in_bytes"))
        for k in ("argument", "output", "alias", "temp", "generated_code")
    }
    parts["total"] = parts["argument"] + parts["output"] + parts["temp"] - parts["alias"]
    return parts


def jax_head_runner(loss, x, w, b, y):
    """``(run, info)``: the value and the three gradients of ``loss``, compiled ahead of time."""
    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
    t0 = time.perf_counter()
    compiled = step.lower(x, w, b, y).compile()
    info = {"compile_s": round(time.perf_counter() - t0, 3), "xla": xla_memory(compiled)}

    def run():
        jax.block_until_ready(compiled(x, w, b, y))

    return run, info


def torch_head_runner(loss, x, w, b, y):
    """``run()``: ``loss(x, w, b, y).backward()`` with the three ``.grad`` cleared first.

    (``_timing.torch_runner`` clears the first argument's only; ``.backward()`` would then add
    each call's kernel gradient into the last one.)
    """
    params = (x, w, b)

    def run():
        for p in params:
            p.grad = None
        loss(x, w, b, y).backward()

    return run


def _make(method, name, inputs, num_classes, chunk_size):
    """``(run, info)`` for one method on its framework's inputs."""
    if method == "fused":
        return jax_head_runner(_fused(name, chunk_size), *inputs["jax"])
    if method == "materialised":
        return jax_head_runner(_materialised(name, num_classes), *inputs["jax"])
    loss = _torch_head(name, num_classes)
    if method == "compile":
        torch._dynamo.reset()
        loss = torch.compile(loss)
    elif method != "torch":
        raise KeyError(method)
    return torch_head_runner(loss, *inputs["torch"]), {}
