"""Training throughput: the Flax trainer's step against the same model and optimiser in torch.

Usage (from the repository root)::

    python benchmarks/bench_train.py [--quick] [--out benchmarks/results/train.json]

One process, one CIFAR-style ResNet-18 (``resnet18_cifar``: 3x3 stem, no max-pool, width 64,
11.2 M parameters), batch 128 of 32x32x3 float32 images, cross-entropy, SGD with momentum 0.9 and
weight decay 5e-4, train mode (BatchNorm batch statistics):

* ``flax``: ``train.step.train_step`` under ``jax.jit`` with the state donated, exactly as
  ``jaxloss-train`` compiles it (NHWC), the loss from ``train.losses.loss_from_config``;
* ``torch``: ``train.pytorch.models.build("resnet18_cifar")`` (the layout ``train.pytorch.port``
  maps), eager, ``zero_grad / cross_entropy / backward / SGD.step``, NCHW;
* ``compile``: the same module under ``torch.compile`` (inductor);
* ``conv``: the diagnosis: one 3x3, 64 -> 64 channel convolution of the batch (the layer ResNet-18's
  first stage repeats), forward and forward+backward, ``lax.conv_general_dilated`` (NHWC) against
  ``torch.nn.functional.conv2d`` (NCHW), min of a few calls;
* ``data``: the trainer's input pipeline alone (``train.data.pipeline.from_arrays``: grain, shuffle,
  pad-4 random crop, horizontal flip, normalisation, prefetch) over 50,000 random uint8 CIFAR-sized
  images: images/s it can deliver, which must exceed the train step's.

Timing: a method's first step is timed alone (trace + compile + run: the compile time reported);
then rounds of ``--steps`` consecutive steps, the methods interleaved round by round, with one
host sync at the end of each round, as the trainer syncs once per epoch. images/s = steps * batch /
round time; best and median round. torch gets as many threads as XLA's pool (the cores available);
``OMP_WAIT_POLICY=PASSIVE`` unless set, so torch's idle OpenMP workers don't spin on XLA's cores.
glibc's malloc is tuned unless ``--malloc default`` (see ``train/runtime.py``); both frameworks
share the process, so both get the same allocator settings.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import os
import pathlib
import sys
import time
import traceback

# Passive OpenMP waiting, set before torch is imported (an explicit user setting wins): see the
# docstring and bench_losses.py.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# The helper modules beside this file (also when it is loaded by path, as the smoke test does).
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F
from _timing import apply_malloc, cores, machine_info, write_results

from train import losses
from train import step as step_lib
from train.config import Config
from train.data import pipeline
from train.data.catalog import ArrayDataset
from train.pytorch import models as torch_models

MODEL, NUM_CLASSES, IMAGE = "resnet18_cifar", 10, (32, 32, 3)
LR, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 5e-4


def _batch(batch_size: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch_size, *IMAGE), dtype=np.float32)
    labels = rng.integers(0, NUM_CLASSES, batch_size).astype(np.int32)
    return images, labels


def flax_method(batch_size: int, width: int):
    """``step(sync)``: one call of the trainer's jitted, donating train step on a fixed batch."""
    config = Config(
        model=MODEL,
        width=width,
        optimizer="sgd",
        lr=LR,
        momentum=MOMENTUM,
        weight_decay=WEIGHT_DECAY,
        batch_size=batch_size,
    )
    images, labels = _batch(batch_size)
    batch = {
        "image": jnp.asarray(images),
        "label": jnp.asarray(labels),
        "mask": jnp.ones(batch_size, bool),
    }
    key = jax.random.key(0, impl="rbg")
    state = [
        step_lib.create_train_state(config, num_classes=NUM_CLASSES, image_shape=IMAGE, key=key)
    ]
    jax.block_until_ready(state[0])
    step_fn = jax.jit(
        functools.partial(
            step_lib.train_step,
            loss_fn=losses.loss_from_config(config, NUM_CLASSES),  # config.loss is "ce"
            num_classes=NUM_CLASSES,
        ),
        donate_argnums=0,
    )

    def step(sync: bool):
        state[0], m = step_fn(state[0], batch, key)
        if sync:
            jax.block_until_ready((state[0], m))

    return step


def torch_method(batch_size: int, width: int, compiled: bool):
    torch.manual_seed(0)
    model = torch_models.build(MODEL, num_classes=NUM_CLASSES, width=width).train()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    images, labels = _batch(batch_size)
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    y = torch.from_numpy(labels.astype(np.int64))
    forward = torch.compile(model) if compiled else model

    def step(sync: bool):  # torch on CPU is synchronous
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(forward(x), y).backward()
        opt.step()

    return step


def data_method(batch_size: int, num_images: int):
    """Images/s of the trainer's pipeline: one epoch's iterator, consumed batch by batch."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (num_images, *IMAGE), dtype=np.uint8)
    labels = rng.integers(0, NUM_CLASSES, num_images).astype(np.int32)
    dataset = ArrayDataset(
        name="cifar_like",
        splits={"train": (images, labels)},
        class_names=tuple(str(i) for i in range(NUM_CLASSES)),
    )
    data = pipeline.from_arrays(
        dataset,
        image_size=None,
        options=pipeline.BatchOptions(batch_size=batch_size, val_fraction=0.0),
    )
    state = {"epoch": 0, "it": iter(())}

    def step(sync: bool):
        try:
            batch = next(state["it"])
        except StopIteration:
            state["epoch"] += 1
            state["it"] = data.train_batches(state["epoch"])
            batch = next(state["it"])
        assert batch["image"].shape == (batch_size, *IMAGE)

    step(True)  # the first epoch's iterator (threads) starts here
    return step


def conv_diagnosis(batch_size: int, channels: int, size: int = 32, calls: int = 5):
    """ms of one 3x3 convolution, forward and value+grad (input and kernel), in JAX and torch."""
    rng = np.random.default_rng(0)
    x_np = rng.standard_normal((batch_size, size, size, channels), dtype=np.float32)
    w_np = rng.standard_normal((3, 3, channels, channels), dtype=np.float32) * 0.05

    def conv(x, w):
        return jax.lax.conv_general_dilated(
            x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    x, w = jnp.asarray(x_np), jnp.asarray(w_np)
    forward = jax.jit(conv)
    both = jax.jit(jax.grad(lambda x, w: jnp.sum(conv(x, w) ** 2), argnums=(0, 1)))
    xt = torch.from_numpy(x_np.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
    wt = torch.from_numpy(w_np.transpose(3, 2, 0, 1).copy()).requires_grad_(True)

    def torch_both():
        xt.grad = wt.grad = None
        (F.conv2d(xt, wt, padding=1) ** 2).sum().backward()

    runs = {
        "jax_forward": lambda: jax.block_until_ready(forward(x, w)),
        "jax_grad": lambda: jax.block_until_ready(both(x, w)),
        "torch_forward": lambda: F.conv2d(xt.detach(), wt.detach(), padding=1),
        "torch_grad": torch_both,
    }
    out = {}
    for name, fn in runs.items():
        fn()
        times = []
        for _ in range(calls):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        out[name + "_ms"] = round(min(times) * 1e3, 2)
    flops = 2 * 9 * batch_size * size * size * channels * channels
    out["forward_gflop"] = round(flops / 1e9, 3)
    out["jax_forward_gflops"] = round(flops / out["jax_forward_ms"] / 1e6, 1)
    out["torch_forward_gflops"] = round(flops / out["torch_forward_ms"] / 1e6, 1)
    return out


def measure(methods, *, steps: int, rounds: int, budget_s: float, batch_size: int, log=print):
    """First-step time, then interleaved rounds of ``steps`` steps; returns a dict per method."""
    out, runners = {}, {}
    for name, make in methods.items():
        t0 = time.perf_counter()
        try:
            step = make()
            t1 = time.perf_counter()
            step(True)
            t2 = time.perf_counter()
            step(True)
            t3 = time.perf_counter()
        except Exception as error:
            log(traceback.format_exc())
            out[name] = {"n/a": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"}
            continue
        out[name] = {
            "setup_s": round(t1 - t0, 3),
            "first_step_s": round(t2 - t1, 3),
            "second_step_s": round(t3 - t2, 3),
            "compile_s": round(max(0.0, (t2 - t1) - (t3 - t2)), 3),
        }
        runners[name] = step
        log(f"  {name:<8} first step {t2 - t1:.1f} s, second {t3 - t2:.3f} s")
    samples = {name: [] for name in runners}
    start = time.perf_counter()
    for round_ in range(rounds):
        for name, step in runners.items():
            t0 = time.perf_counter()
            for i in range(steps):
                step(i == steps - 1)
            samples[name].append(time.perf_counter() - t0)
        if round_ >= 1 and time.perf_counter() - start > budget_s:
            break
    for name, times in samples.items():
        per_step = np.asarray(times) / steps
        out[name].update(
            step_ms_min=round(float(per_step.min() * 1e3), 2),
            step_ms_median=round(float(np.median(per_step) * 1e3), 2),
            images_per_s_best=round(batch_size / float(per_step.min()), 1),
            images_per_s_median=round(batch_size / float(np.median(per_step)), 1),
            rounds=len(times),
            steps_per_round=steps,
        )
    return out


def evaluate_goals(res):
    def ips(name):
        return res.get(name, {}).get("images_per_s_median")

    def goal(label, num, den, threshold):
        a, b = ips(num), ips(den)
        value = None if a is None or b is None else round(a / b, 3)
        return {"goal": label, "value": value, "met": None if value is None else value >= threshold}

    return [
        goal("flax/torch eager >= 1.5", "flax", "torch", 1.5),
        goal("flax/torch.compile >= 1", "flax", "compile", 1.0),
        goal("data/flax > 1", "data", "flax", 1.0 + 1e-9),
    ]


def format_markdown(result):
    m = result["machine"]
    lines = [
        f"{m['cpu']}, {m['cores_available']} cores, torch threads {m['torch_num_threads']}, "
        f"malloc {result['settings']['malloc']}; jax {m['jax']}, torch {m['torch']}; "
        f"{result['date_utc']}. {MODEL} width {result['settings']['width']}, batch "
        f"{result['settings']['batch_size']}, SGD momentum; images/s median (best) of rounds.",
        "",
        "| method | images/s | step ms | first step s (compile) |",
        "|---|---|---|---|",
    ]
    for name, r in result["results"].items():
        if "images_per_s_median" not in r:
            lines.append(f"| {name} | n/a | n/a | {r.get('n/a', '')} |")
            continue
        lines.append(
            f"| {name} | {r['images_per_s_median']:.0f} ({r['images_per_s_best']:.0f}) | "
            f"{r['step_ms_median']:.0f} | {r['first_step_s']:.1f} |"
        )
    lines.append("")
    for g in result["goals"]:
        lines.append(f"- {g['goal']}: {g['value']} ({'met' if g['met'] else 'missed'})")
    c = result.get("conv_diagnosis")
    if c:
        w = result["settings"]["width"]
        lines.append(
            f"- one 3x3 conv {w}->{w} channels on the batch: forward JAX {c['jax_forward_ms']} ms "
            f"({c['jax_forward_gflops']} GFLOP/s) vs torch {c['torch_forward_ms']} ms "
            f"({c['torch_forward_gflops']} GFLOP/s); forward+backward JAX {c['jax_grad_ms']} ms "
            f"vs torch {c['torch_grad_ms']} ms"
        )
    return "\n".join(lines) + "\n"


def run(
    *,
    quick=False,
    use_compile=True,
    malloc="tuned",
    batch_size=128,
    width=64,
    steps=None,
    rounds=None,
    budget_s=None,
    data_images=None,
    log=print,
):
    """Runs the methods; returns the JSON-ready result (machine, settings, results, goals)."""
    malloc_applied = apply_malloc(malloc)
    threads = cores()
    torch.set_num_threads(threads)
    steps = steps or (2 if quick else 3)
    rounds = rounds or (2 if quick else 5)
    budget_s = budget_s if budget_s is not None else (5.0 if quick else 150.0)
    methods = {
        "flax": lambda: flax_method(batch_size, width),
        "torch": lambda: torch_method(batch_size, width, compiled=False),
    }
    if use_compile:
        methods["compile"] = lambda: torch_method(batch_size, width, compiled=True)
    data_images = data_images or (5_000 if quick else 50_000)
    methods["data"] = lambda: data_method(batch_size, data_images)
    started = time.perf_counter()
    result = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(threads),
        "settings": {
            "model": MODEL,
            "width": width,
            "batch_size": batch_size,
            "image": IMAGE,
            "optimizer": f"SGD lr {LR} momentum {MOMENTUM} weight decay {WEIGHT_DECAY}",
            "steps_per_round": steps,
            "max_rounds": rounds,
            "malloc": malloc,
            "malloc_tuning_applied": malloc_applied,
            "torch_compile": use_compile,
            "quick": quick,
        },
    }
    result["results"] = measure(
        methods, steps=steps, rounds=rounds, budget_s=budget_s, batch_size=batch_size, log=log
    )
    result["goals"] = evaluate_goals(result["results"])
    result["conv_diagnosis"] = conv_diagnosis(batch_size, width)
    log(f"  conv 3x3 {width}->{width}: {result['conv_diagnosis']}")
    result["total_s"] = round(time.perf_counter() - started, 1)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="width 8, batch 16, no torch.compile")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument(
        "--malloc",
        choices=("tuned", "default"),
        default="tuned",
        help="glibc malloc thresholds (train/runtime.py) or the C library defaults",
    )
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--out", default=None, help="JSON path (a .md table is written beside it)")
    args = parser.parse_args(argv)
    batch = args.batch_size or (16 if args.quick else 128)
    width = args.width or (8 if args.quick else 64)
    result = run(
        quick=args.quick,
        use_compile=not (args.no_compile or args.quick),
        malloc=args.malloc,
        batch_size=batch,
        width=width,
    )
    print()
    print(format_markdown(result))
    print(f"total {result['total_s']} s")
    if args.out:
        write_results(args.out, result, format_markdown(result))
    return result


if __name__ == "__main__":
    main()
