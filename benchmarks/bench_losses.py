"""Value+gradient time of every jaxloss loss against torch eager,
torch.compile, naive JAX and optax.

Usage (from the repository root)::

    python benchmarks/bench_losses.py [--quick] [--out benchmarks/results/losses.json]

For each loss and size, every method computes the mean loss *and* its gradient with respect to the
logits, in one process, on the same float32 data:

* ``ours``: ``jax.jit(jax.value_and_grad(jaxloss.<loss>))``;
* ``torch``: the seed's reference module (``parity_tests/torch_reference.py``) or
  ``torch.nn.functional.cross_entropy``, eager, ``loss.backward()``;
* ``compile``: the same module under ``torch.compile`` (needs a C++ compiler; ``n/a`` and the reason
  otherwise), compile time reported separately;
* ``naive``: the textbook JAX composition (``log_softmax``, ``take_along_axis``, ``pow``) under
  ``jax.jit(jax.value_and_grad(...))``;
* ``optax``: ``optax.losses`` where it has the loss;
* ``floor``: one read of the logits, one ``exp`` and one write (``jnp.exp(x - r[:, None])``,
  jitted): what any softmax value+grad must at least spend, measured in the same run.

Timing: the methods of one (loss, size) are interleaved round by round (so load from other processes
hits them alike); in each round a method runs ``BLOCK`` calls back to back, as a training loop calls
its loss, and the first call of each block is dropped (it pays for the switch from the previous
method: cold caches, sleeping threads); min and median over the kept calls; JAX results are
``block_until_ready``-ed. glibc's malloc thresholds are raised first (``train/runtime.py``) unless
``--malloc default``: with the C library's defaults every call of either framework that allocates
more than 32 MiB gets freshly mapped pages, and the page faults then cost more than the arithmetic
(the floor at 8192x1000 goes from about 2 ms to 9 ms); both settings are recorded.
``torch.set_num_threads`` is set to the number of cores this process may use, which is the size of
XLA:CPU's default intra-op pool, and ``OMP_WAIT_POLICY=PASSIVE`` (unless set) so that torch's
idle OpenMP workers do not spin on the cores the next JAX call needs; ``XLA_FLAGS`` is left as the
environment has it (recorded) and is the same for every JAX method because they share the process.
Ratios use the min times. The losses are in ``_loss_cases.py``, the timing helpers in
``_timing.py``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import sys
import time
import traceback

import numpy as np

# torch's OpenMP workers otherwise spin-wait after every call and, on a machine with few cores,
# steal them from the XLA call that follows (and XLA's pool does the same to torch): measured 2x
# swings. Passive waiting (set before torch is imported; an explicit user setting wins) makes
# interleaved timing fair. It is recorded in the output.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# The helper modules beside this file (also when it is loaded by path, as the smoke test does).
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import jax.numpy as jnp
import torch
import torch.nn.functional as F
from _loss_cases import (
    GAMMA,
    SIGMOID_ALPHA,
    SMOOTHING,
    jax_naive,
    jax_optax,
    jax_ours,
    torch_module,
)
from _timing import (
    BLOCK,
    apply_malloc,
    cores,
    floor_runner,
    jax_runner,
    machine_info,
    time_interleaved,
    torch_runner,
    write_results,
)

SIZES = {  # name -> logits shape (classes last)
    "256x10": (256, 10),
    "8192x1000": (8192, 1000),
    "65536x100": (65536, 100),
    "16x128x128x19": (16, 128, 128, 19),
}
QUICK_SIZES = {"256x10": (256, 10), "2048x100": (2048, 100)}
LOSSES = (
    "focal",
    "focal_sigmoid",
    "cross_entropy",
    "cross_entropy_ls",
    "cross_entropy_soft",
    "label_smoothing_others",
    "f1",
    "focal@axis1",
    "cross_entropy@axis1",
    "focal@bf16",
    "cross_entropy@bf16",
)
# A name "loss@variant" is the loss in another form: "axis1" the logits in torch's layout (N, C, ..)
# with axis=1 (run at the segmentation size only), "bf16" bfloat16 logits against torch autocast
# (run at 8192x1000 only).
SEGMENTATION_LOSSES = (
    "focal",
    "focal_sigmoid",
    "cross_entropy",
    "focal@axis1",
    "cross_entropy@axis1",
)
VARIANT_SIZES = {"axis1": lambda shape: len(shape) > 2, "bf16": lambda shape: shape == (8192, 1000)}
METHODS = ("ours", "floor", "torch", "compile", "naive", "optax")
SOFTMAX_GOAL_LOSSES = ("focal", "cross_entropy", "cross_entropy_ls", "label_smoothing_others")
SLOW_GOAL_LOSSES = ("f1", "focal_sigmoid")
FLOOR_GOAL_SIZES = ("8192x1000", "65536x100")
SEGMENTATION_SIZE = "16x128x128x19"
WARMUP_CALLS = 6  # untimed calls before the rounds (the first compiles)


def _inputs(name, shape, seed):
    """``(x, y, t)`` for JAX and for torch, and the callables of every method, for one case."""
    base, _, variant = name.partition("@")
    num_classes = shape[-1]
    rng = np.random.default_rng(seed)
    logits_np = (rng.standard_normal(shape) * 2).astype(np.float32)
    labels_np = rng.integers(0, num_classes, shape[:-1]).astype(np.int32)
    if base == "cross_entropy_soft":  # probability targets, as mixup or a teacher gives them
        scores = rng.standard_normal(shape) * 2
        targets_np = np.exp(scores - scores.max(-1, keepdims=True))
        targets_np = (targets_np / targets_np.sum(-1, keepdims=True)).astype(np.float32)
    else:
        targets_np = np.eye(num_classes, dtype=np.float32)[labels_np]
    ours, naive = jax_ours(base, num_classes), jax_naive(base, num_classes)
    optax_loss, torch_loss = jax_optax(base, num_classes), torch_module(base, num_classes)
    x, y, t = jnp.asarray(logits_np), jnp.asarray(labels_np), jnp.asarray(targets_np)
    # torch's modules take (N, C): the leading axes are flattened (the same memory, classes last).
    xt = torch.from_numpy(logits_np.reshape(-1, num_classes)).requires_grad_(True)
    yt = torch.from_numpy(labels_np.reshape(-1).astype(np.int64))
    tt = torch.from_numpy(targets_np.reshape(-1, num_classes))
    if variant == "axis1":  # torch's layout: every method gets (N, C, d..) logits
        first = np.ascontiguousarray(np.moveaxis(logits_np, -1, 1))
        x = jnp.asarray(first)
        ours = jax_ours(base, num_classes, axis=1)
        naive = (lambda f: lambda a, b, c: f(jnp.moveaxis(a, 1, -1), b, c))(naive)
        if optax_loss is not None:
            optax_loss = (lambda f: lambda a, b, c: f(jnp.moveaxis(a, 1, -1), b, c))(optax_loss)
        xt = torch.from_numpy(first).requires_grad_(True)
        yt = torch.from_numpy(labels_np.astype(np.int64))
        if base == "cross_entropy":  # F.cross_entropy reads (N, C, d..) itself
            torch_loss = lambda a, b, c: F.cross_entropy(a, b)  # noqa: E731
        else:  # the seed modules take (N, C): the torch user moves the classes last
            torch_loss = (
                lambda f: (
                    lambda a, b, c: f(a.movedim(1, -1).reshape(-1, num_classes), b.reshape(-1), c)
                )
            )(torch_loss)
    elif variant == "bf16":  # bfloat16 logits; torch under CPU autocast (its losses upcast)
        x = x.astype(jnp.bfloat16)
        naive = (lambda f: lambda a, b, c: f(a.astype(jnp.float32), b, c))(naive)
        if optax_loss is not None:
            optax_loss = (lambda f: lambda a, b, c: f(a.astype(jnp.float32), b, c))(optax_loss)
        xt = xt.detach().to(torch.bfloat16).requires_grad_(True)

        def torch_loss(a, b, c, f=torch_loss):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return f(a, b, c)

    elif variant:
        raise ValueError(f"unknown variant {variant!r} in {name!r}")
    return (x, y, t), (xt, yt, tt), (ours, naive, optax_loss, torch_loss)


def bench_one(name, shape, *, use_compile, min_rounds, max_rounds, budget_s, seed=0):
    """Times all methods for one loss and one logits shape; returns a JSON-ready dict."""
    (x, y, t), (xt, yt, tt), (ours, naive, optax_loss, torch_loss) = _inputs(name, shape, seed)

    methods, runners = {}, {}

    def add(method, make):
        t0 = time.perf_counter()
        try:
            run = make()
            for _ in range(WARMUP_CALLS):  # compile, then let the heap reach its steady size
                run()
        except Exception as error:
            methods[method] = {"n/a": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"}
            return
        methods[method] = {"first_call_s": round(time.perf_counter() - t0, 3)}
        runners[method] = run

    add("ours", lambda: jax_runner(ours, x, y, t))
    add("floor", lambda: floor_runner(x.astype(jnp.float32)))
    add("torch", lambda: torch_runner(torch_loss, xt, yt, tt))
    if use_compile:
        torch._dynamo.reset()
        add("compile", lambda: torch_runner(torch.compile(torch_loss), xt, yt, tt))
    else:
        methods["compile"] = {"n/a": "skipped (--quick / --no-compile)"}
    add("naive", lambda: jax_runner(naive, x, y, t))
    if optax_loss is None:
        methods["optax"] = {"n/a": "optax has no such loss"}
    else:
        add("optax", lambda: jax_runner(optax_loss, x, y, t))

    times = time_interleaved(runners, min_rounds, max_rounds, budget_s)
    for method, samples in times.items():
        ms = np.asarray(samples) * 1e3
        methods[method].update(
            min_ms=round(float(ms.min()), 3),
            median_ms=round(float(np.median(ms)), 3),
            repeats=len(samples),
        )

    def ratio(num, den, stat="min_ms"):
        a, b = methods.get(num, {}), methods.get(den, {})
        if stat in a and stat in b and b[stat] > 0:
            return round(a[stat] / b[stat], 3)
        return None

    ratios = {
        "ours/floor": ratio("ours", "floor"),
        "torch/ours": ratio("torch", "ours"),
        "compile/ours": ratio("compile", "ours"),
        "naive/ours": ratio("naive", "ours"),
        "optax/ours": ratio("optax", "ours"),
    }
    median_ratios = {k: ratio(*k.split("/"), stat="median_ms") for k in ratios}
    return {
        "loss": name,
        "size": "x".join(map(str, shape)),
        "shape": list(shape),
        "methods": methods,
        "ratios": ratios,
        "ratios_median": median_ratios,
    }


# ------------------------------------------------------------------------------ goals, table


def _goal(r, label, value, ok):
    return {
        "loss": r["loss"],
        "size": r["size"],
        "goal": label,
        "value": value,
        "met": None if value is None else bool(ok(value)),
    }


def evaluate_goals(results):
    """Issue 12's goals, from the min-time ratios of this run."""
    goals = []
    ours_ms = {(r["loss"], r["size"]): r["methods"]["ours"].get("min_ms") for r in results}
    for r in results:
        q, base = r["ratios"], r["loss"].partition("@")[0]
        goals.append(_goal(r, "compile/ours > 1", q["compile/ours"], lambda v: v > 1.0))
        if r["size"] in FLOOR_GOAL_SIZES and r["loss"] in SOFTMAX_GOAL_LOSSES:
            goals.append(_goal(r, "ours/floor <= 2.5", q["ours/floor"], lambda v: v <= 2.5))
        if r["size"] in FLOOR_GOAL_SIZES and r["loss"] in SLOW_GOAL_LOSSES:
            goals.append(_goal(r, "ours/floor <= 4", q["ours/floor"], lambda v: v <= 4.0))
        if r["size"] == SEGMENTATION_SIZE and base in SOFTMAX_GOAL_LOSSES:
            goals.append(_goal(r, "torch/ours >= 1.5", q["torch/ours"], lambda v: v >= 1.5))
        if r["loss"].endswith("@axis1"):
            last = ours_ms.get((base, r["size"]))
            mine = r["methods"]["ours"].get("min_ms")
            value = None if not (last and mine) else round(mine / last, 3)
            goals.append(_goal(r, "axis1/axis-1 <= 1.2", value, lambda v: v <= 1.2))
        goals.append(_goal(r, "naive/ours >= 1", q["naive/ours"], lambda v: v >= 1.0))
    return goals


def _fmt(method):
    if "min_ms" not in method:
        return "n/a"
    return f"{method['min_ms']:.2f}/{method['median_ms']:.2f}"


def format_table(results):
    head = (
        f"{'loss':<23}{'size':<15}"
        + "".join(f"{m + ' min/med ms':>21}" for m in METHODS)
        + "".join(f"{k:>14}" for k in results[0]["ratios"])
    )
    lines = [head, "-" * len(head)]
    for r in results:
        cells = "".join(f"{_fmt(r['methods'].get(m, {})):>21}" for m in METHODS)
        ratios = "".join(
            f"{'n/a' if v is None else format(v, '.2f'):>14}" for v in r["ratios"].values()
        )
        lines.append(f"{r['loss']:<23}{r['size']:<15}{cells}{ratios}")
    return "\n".join(lines)


def format_markdown(result):
    """The table as Markdown (for the README): min ms per method, the ratios, and the machine."""
    m = result["machine"]
    keys = list(result["results"][0]["ratios"])
    lines = [
        f"{m['cpu']}, {m['cores_available']} cores, torch threads {m['torch_num_threads']}, "
        f"OMP_WAIT_POLICY {m.get('OMP_WAIT_POLICY')}, XLA_FLAGS {m['XLA_FLAGS']}; jax {m['jax']}, "
        f"torch {m['torch']}, optax {m['optax']}; malloc {result['settings']['malloc']}; "
        f"{result['date_utc']}. "
        "Value+grad, float32, min (median) ms.",
        "",
        "| loss | size | " + " | ".join(METHODS) + " | " + " | ".join(keys) + " |",
        "|" + "---|" * (2 + len(METHODS) + len(keys)),
    ]
    for r in result["results"]:
        cells = []
        for name in METHODS:
            method = r["methods"].get(name, {})
            cells.append(
                f"{method['min_ms']:.2f} ({method['median_ms']:.2f})"
                if "min_ms" in method
                else "n/a"
            )
        ratios = ["n/a" if v is None else f"{v:.2f}" for v in r["ratios"].values()]
        lines.append(f"| {r['loss']} | {r['size']} | " + " | ".join(cells + ratios) + " |")
    return "\n".join(lines) + "\n"


def run(
    sizes=None,
    losses=LOSSES,
    *,
    quick=False,
    use_compile=True,
    malloc="tuned",
    min_rounds=None,
    max_rounds=None,
    budget_s=None,
    log=print,
):
    """Runs the suite; returns the JSON-ready result (machine, settings, results, goals).

    ``malloc="default"`` leaves the allocator as this process has it: run it in a fresh process (as
    the command line does) to measure glibc's defaults.
    """
    malloc_applied = apply_malloc(malloc)
    sizes = dict(sizes or (QUICK_SIZES if quick else SIZES))
    min_rounds = min_rounds or (3 if quick else 10)
    max_rounds = max_rounds or (20 if quick else 200)
    budget_s = budget_s if budget_s is not None else (0.3 if quick else 6.0)
    threads = cores()
    torch.set_num_threads(threads)
    started = time.perf_counter()
    out = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(threads),
        "settings": {
            "quick": quick,
            "torch_compile": use_compile,
            "min_rounds": min_rounds,
            "max_rounds": max_rounds,
            "timing_budget_s_per_case": budget_s,
            "dtype": "float32 (bfloat16 for the @bf16 rows)",
            "logits": "standard normal * 2",
            "gamma": GAMMA,
            "label_smoothing": SMOOTHING,
            "sigmoid_alpha": SIGMOID_ALPHA,
            "calls_per_block": BLOCK,
            "malloc": malloc,
            "malloc_tuning_applied": malloc_applied,
            "floor": "jit(exp(x - r[:, None])): one read, one exp, one write",
        },
        "results": [],
    }
    for size_name, shape in sizes.items():
        for name in losses:
            variant = name.partition("@")[2]
            if len(shape) > 2 and name not in SEGMENTATION_LOSSES:
                continue
            if variant and not VARIANT_SIZES[variant](shape):
                continue
            t0 = time.perf_counter()
            try:
                result = bench_one(
                    name,
                    shape,
                    use_compile=use_compile and not quick,
                    min_rounds=min_rounds,
                    max_rounds=max_rounds,
                    budget_s=budget_s,
                )
            except Exception:
                log(traceback.format_exc())
                continue
            out["results"].append(result)
            log(
                f"  {name:<23} {size_name:<15} ours {_fmt(result['methods']['ours'])} ms "
                f"({time.perf_counter() - t0:.1f} s)"
            )
    out["goals"] = evaluate_goals(out["results"])
    out["total_s"] = round(time.perf_counter() - started, 1)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="two small sizes, no torch.compile (<1 min)"
    )
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument(
        "--malloc",
        choices=("tuned", "default"),
        default="tuned",
        help="raise glibc's malloc thresholds first (train/runtime.py), or keep the "
        "C library's defaults",
    )
    parser.add_argument("--out", default=None, help="JSON path (default: print only)")
    parser.add_argument("--losses", default=",".join(LOSSES), help="comma-separated subset")
    parser.add_argument(
        "--sizes", default=None, help="comma-separated subset of " + ",".join(SIZES)
    )
    args = parser.parse_args(argv)
    sizes = None
    if args.sizes:
        sizes = {s: SIZES[s] for s in args.sizes.split(",")}
    result = run(
        sizes,
        tuple(args.losses.split(",")),
        quick=args.quick,
        use_compile=not args.no_compile,
        malloc=args.malloc,
    )
    print()
    print(format_table(result["results"]))
    print()
    m = result["machine"]
    print(
        f"{m['cpu']}, {m['cores_available']} cores; torch threads {m['torch_num_threads']}; "
        f"XLA_FLAGS {m['XLA_FLAGS']}; jax {m['jax']}, torch {m['torch']}; malloc "
        f"{result['settings']['malloc']}; {result['date_utc']}; "
        f"total {result['total_s']} s"
    )
    for goal in result["goals"]:
        if goal["goal"] != "naive/ours >= 1" or goal["met"] is False:
            status = {True: "MET", False: "MISSED", None: "n/a"}[goal["met"]]
            print(
                f"  {status:<7}{goal['loss']:<23}{goal['size']:<15}"
                f"{goal['goal']:<20}{goal['value']}"
            )
    naive = [g for g in result["goals"] if g["goal"] == "naive/ours >= 1"]
    print(f"  naive/ours >= 1 at every size: {sum(bool(g['met']) for g in naive)}/{len(naive)} met")
    if args.out:
        write_results(args.out, result, format_markdown(result))
    return result


if __name__ == "__main__":
    main()
