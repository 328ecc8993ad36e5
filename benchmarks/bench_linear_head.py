"""Classifier head and loss in one pass: time and peak memory of the fused ``linear_*`` losses
against the materialised logits, torch eager and torch.compile.

Usage (from the repository root)::

    python benchmarks/bench_linear_head.py [--quick] [--no-compile] [--rss all|headline|none]
        [--out benchmarks/results/linear_head.json]

For each loss and size, every method computes the mean loss of ``features @ kernel + bias`` *and*
its gradients with respect to the features, the kernel and the bias, on the same float32 data
(``features (N, D)`` standard normal, ``kernel (D, C)`` normal with std ``2 / sqrt(D)`` so the
logits have std about 2 as in bench_losses.py, ``bias (C,)`` std 0.1, ``D = 256``):

* ``fused``: ``jax.jit(jax.value_and_grad(jaxloss.linear_focal_loss, argnums=(0, 1, 2)))`` (or
  ``linear_cross_entropy``), chunked over the classes (``chunk_size``, default
  ``jaxloss._linear_head.CHUNK_SIZE``) inside a ``custom_vjp``: no ``(N, C)`` array;
* ``materialised``: the same with ``jaxloss.focal_loss(x @ w + b, y)`` (or ``cross_entropy``);
* ``torch``: the seed's reference module (``parity_tests/torch_reference.py``) or
  ``F.cross_entropy`` on ``F.linear(x, W, b)`` (``W = kernel.T``, ``(C, D)``, torch's layout),
  eager, ``.backward()``, the three ``.grad`` set to ``None`` before each call;
* ``compile``: the same function under ``torch.compile`` (needs a C++ compiler; ``n/a`` and the
  reason otherwise), its first call (the compile) reported separately (``first_call_s``, and a
  column of the table); ``--no-compile`` skips it.

Timing (in this process): the methods of one (loss, size) are interleaved round by round with
``_timing.time_interleaved``, so load from other processes hits them alike; min and median over
the kept calls, ratios from the min times. Up to 4096x1000 logits, a round runs ``BLOCK`` calls of
a method back to back and drops the first (bench_losses.py's rule), after ``WARMUP_CALLS``
untimed calls. The larger sizes cost 0.05 to 1.1 TFLOP per call (three ``N x D x C`` products,
four for ``fused``, whose backward recomputes each chunk's logits), seconds on a CPU, so they run
one call per method per round, two or three rounds (``_plan``): switching methods costs
milliseconds at most there. The JAX methods are compiled ahead of time (``lower(...).compile()``,
that time is ``compile_s``) and the compiled executable is the one timed. glibc's malloc
thresholds are raised first (``train/runtime.py``) unless ``--malloc default``;
``torch.set_num_threads`` is the number of cores this process may use and
``OMP_WAIT_POLICY=PASSIVE`` (unless set), as in bench_losses.py.

Memory, two measures:

* XLA's own account of the compiled executable (``compiled.memory_analysis()``, JAX methods only):
  ``temp`` (the scratch buffers) and ``total = argument + output + temp - alias``, in MiB;
* the peak resident set of a fresh process: each (loss, size, method) is run by this script in a
  child process (a hidden ``--child`` mode, one at a time, after the timing of that case, the
  parent idle) that builds only its own method's inputs, records its resident set (``baseline``,
  after the imports and the inputs), builds the method (JAX: compiles it), runs it a few times and
  prints one JSON line with its peak resident set. That peak is ``VmHWM`` of
  ``/proc/self/status``: Linux carries the parent's peak across ``fork`` and ``exec`` into
  ``getrusage(RUSAGE_SELF).ru_maxrss`` (printed too, and the fallback where there is no ``/proc``,
  which is right only when the parent is small). The table shows the increase of the peak above
  the baseline: the method's working memory (its outputs, such as the kernel's gradient,
  included) plus what building it cost (XLA's compile, about 100 MiB at the quick sizes; for
  ``compile``, inductor's); ``calls+`` is the peak above the resident set once the
  method is built, the calls alone (when they, not the compile, set the peak). ``--rss headline``
  measures it at the headline size only, ``none`` not at all.

The issue's goals are printed MET or MISSED with their figures: at N=4096, C=131072, D=256 the
fused peak memory is at most 1/8 of the materialised one (XLA total, and RSS increase); at
C >= 32768 ``fused`` is no slower than ``materialised`` and faster than torch eager; at C = 1000
``fused`` is within 1.3x of ``materialised``. ``--quick`` runs two tiny sizes (D = 32, 128-class
chunks, so the chunked path runs), checks the goals on their quick analogues, measures the RSS at
the larger size for the first loss only (each child costs seconds of imports) and skips
torch.compile. The sizes and methods are in ``_linear_head_cases.py``, the peak-RSS child in
``_rss.py``, the goals and tables in ``_linear_head_report.py``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import sys
import time
import traceback

import numpy as np

# torch's OpenMP workers otherwise spin-wait after every call and steal the cores of the XLA call
# that follows (see bench_losses.py); set before torch is imported, an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# The helper modules beside this file (also when it is loaded by path, as the smoke test does).
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import torch
from _linear_head_cases import (
    ALL_LOSSES,
    HEADLINE,
    JAX_METHODS,
    LOSSES,
    METHODS,
    MIB,
    QUICK_CHUNK,
    QUICK_D,
    QUICK_HEADLINE,
    QUICK_LARGE_CLASSES,
    QUICK_SIZES,
    QUICK_SMALL_CLASSES,
    SIZES,
    WARMUP_CALLS,
    D,
    _inputs,
    _make,
)

# Re-exported: the smoke test reads them from this module.
from _linear_head_report import MEMORY_COLUMNS as MEMORY_COLUMNS
from _linear_head_report import MEMORY_RATIO_COLUMNS as MEMORY_RATIO_COLUMNS
from _linear_head_report import (
    _fmt_time,
    evaluate_goals,
    format_goals,
    format_markdown,
    format_table,
)
from _loss_cases import GAMMA, SMOOTHING
from _rss import _error, _rss_summary, child_measure, run_child
from _timing import BLOCK, apply_malloc, cores, machine_info, time_interleaved, write_results

from jaxloss import _linear_head


def _plan(n, c, quick=False):
    """Warm-up calls, calls per block, rounds, budget and child calls for an ``(N, C)`` size."""
    if quick or n * c <= 1 << 23:  # up to 4096x1000: tens of ms per call
        return {
            "warmup": WARMUP_CALLS,
            "block": BLOCK,
            "min_rounds": 3 if quick else 5,
            "max_rounds": 20 if quick else 100,
            "budget_s": 0.3 if quick else 5.0,
            "child_calls": 3,
        }
    if n * c <= 1 << 25:  # 1024x32768: about a second per call
        return {
            "warmup": 1,
            "block": 1,
            "min_rounds": 3,
            "max_rounds": 3,
            "budget_s": 0.0,
            "child_calls": 2,
        }
    # 4096x32768 to 4096x131072: seconds to tens of seconds per call. No warm-up but torch.compile's
    # compile: the JAX methods are compiled ahead of time, and a first call's one-time costs are
    # milliseconds against seconds (the min of the rounds discounts them anyway).
    return {
        "warmup": 0,
        "block": 1,
        "min_rounds": 2,
        "max_rounds": 2,
        "budget_s": 0.0,
        "child_calls": 1,
    }


# ------------------------------------------------------------------------------ one case


def _time_case(name, n, c, d, chunk_size, plan, use_compile, seed):
    """Builds, warms and times every method in this process; ``{method: {...}}``."""
    inputs = _inputs(n, c, d, seed)
    methods, runners = {}, {}
    for method in METHODS:
        if method == "compile" and not use_compile:
            methods[method] = {"n/a": "skipped (--quick / --no-compile)"}
            continue
        entry = {}
        try:
            run, info = _make(method, name, inputs, c, chunk_size)
            entry.update(info)
            t0 = time.perf_counter()
            # torch.compile compiles in its first call; then the heap settles at the small sizes.
            for i in range(max(plan["warmup"], 1 if method == "compile" else 0)):
                run()
                if i == 0:  # for torch.compile, its compile time
                    entry["first_call_s"] = round(time.perf_counter() - t0, 3)
                entry["warmup_s"] = round(time.perf_counter() - t0, 3)
        except Exception as error:
            methods[method] = {"n/a": _error(error)}
            continue
        methods[method], runners[method] = entry, run
    times = time_interleaved(
        runners, plan["min_rounds"], plan["max_rounds"], plan["budget_s"], block=plan["block"]
    )
    for method, samples in times.items():
        ms = np.asarray(samples) * 1e3
        methods[method].update(
            min_ms=round(float(ms.min()), 3),
            median_ms=round(float(np.median(ms)), 3),
            repeats=len(samples),
        )
    return methods


def bench_one(
    name,
    n,
    c,
    d=D,
    *,
    chunk_size=None,
    use_compile=True,
    rss=True,
    malloc="tuned",
    quick=False,
    plan=None,
    seed=0,
):
    """Times every method for one loss and size, then measures each one's peak RSS in a child."""
    plan = plan or _plan(n, c, quick)
    methods = _time_case(name, n, c, d, chunk_size, plan, use_compile, seed)
    for method in METHODS:
        entry = methods[method]
        if not rss:
            entry["rss"] = {"n/a": "not measured (--rss)"}
        elif "n/a" in entry:
            entry["rss"] = {"n/a": "the method did not run"}
        else:
            spec = {
                "method": method,
                "loss": name,
                "n": n,
                "c": c,
                "d": d,
                "chunk_size": chunk_size,
                "calls": plan["child_calls"],
                "malloc": malloc,
                "seed": seed,
            }
            entry["rss"] = _rss_summary(run_child(spec))

    def ratio(a, b, stat="min_ms"):
        x, y = methods[a].get(stat), methods[b].get(stat)
        return round(x / y, 3) if x is not None and y else None

    def memory(method, key):
        xla = methods[method].get("xla", {})
        return None if key not in xla else round(xla[key] / MIB, 3)

    def mem_ratio(kind, key):  # from the bytes, not the rounded MiB
        num, den = (methods[m].get(kind, {}).get(key) for m in JAX_METHODS)
        return round(num / den, 4) if num is not None and den else None

    xla_fused, xla_mat = memory("fused", "total"), memory("materialised", "total")
    return {
        "loss": name,
        "size": f"{n}x{c}",
        "n": n,
        "c": c,
        "d": d,
        "plan": plan,
        "methods": methods,
        "ratios": {
            "fused/materialised": ratio("fused", "materialised"),
            "fused/torch": ratio("fused", "torch"),
            "fused/compile": ratio("fused", "compile"),
        },
        "ratios_median": {
            "fused/materialised": ratio("fused", "materialised", "median_ms"),
            "fused/torch": ratio("fused", "torch", "median_ms"),
            "fused/compile": ratio("fused", "compile", "median_ms"),
        },
        "memory_mib": {
            "xla_temp_fused": memory("fused", "temp"),
            "xla_temp_materialised": memory("materialised", "temp"),
            "xla_total_fused": xla_fused,
            "xla_total_materialised": xla_mat,
            **{f"rss_increase_{m}": methods[m]["rss"].get("increase_mib") for m in METHODS},
            **{
                f"rss_calls_increase_{m}": methods[m]["rss"].get("calls_increase_mib")
                for m in JAX_METHODS
            },
        },
        "memory_ratios": {
            "xla_total fused/materialised": mem_ratio("xla", "total"),
            "rss_increase fused/materialised": mem_ratio("rss", "increase_bytes"),
        },
    }


# ------------------------------------------------------------------------------ the suite


def run(
    sizes=None,
    losses=LOSSES,
    *,
    d=None,
    chunk_size=None,
    quick=False,
    use_compile=True,
    headline=None,
    rss="all",
    rss_losses=None,
    malloc="tuned",
    min_rounds=None,
    max_rounds=None,
    budget_s=None,
    log=print,
):
    """Runs the suite; returns the JSON-ready result (machine, settings, results, goals).

    ``headline``: the size of the memory goal (default `HEADLINE`, or `QUICK_HEADLINE` with
    ``quick``). ``rss``: ``"all"`` (a child process per method and case), ``"headline"`` (at the
    headline size only) or ``"none"``; ``rss_losses`` (default: all) the losses it is measured for.
    ``min_rounds``, ``max_rounds`` and ``budget_s`` override ``_plan``'s.
    """
    if rss not in ("all", "headline", "none"):
        raise ValueError(f"rss must be 'all', 'headline' or 'none', got {rss=!r}")
    malloc_applied = apply_malloc(malloc)
    sizes = dict(sizes or (QUICK_SIZES if quick else SIZES))
    d = d or (QUICK_D if quick else D)
    if chunk_size is None and quick:
        chunk_size = QUICK_CHUNK
    headline = headline or (QUICK_HEADLINE if quick else HEADLINE)
    threads = cores()
    torch.set_num_threads(threads)
    started = time.perf_counter()
    out = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(threads),
        "settings": {
            "quick": quick,
            "torch_compile": use_compile and not quick,
            "d": d,
            "dtype": "float32",
            "chunk_size": chunk_size or _linear_head.CHUNK_SIZE,
            "inputs": "x ~ N(0, 1), kernel ~ N(0, 4 / D), bias ~ N(0, 0.01): logits std about 2",
            "gamma": GAMMA,
            "label_smoothing (cross_entropy_ls)": SMOOTHING,
            "gradients": "features, kernel, bias",
            "rss": rss,
            "rss_losses": list(rss_losses or losses),
            "headline": headline,
            "malloc": malloc,
            "malloc_tuning_applied": malloc_applied,
            "plan_overrides": {
                "min_rounds": min_rounds,
                "max_rounds": max_rounds,
                "budget_s": budget_s,
            },
        },
        "results": [],
    }
    for size_name, (n, c) in sizes.items():
        plan = _plan(n, c, quick)
        for key, value in (("min_rounds", min_rounds), ("max_rounds", max_rounds)):
            if value is not None:
                plan[key] = value
        if budget_s is not None:
            plan["budget_s"] = budget_s
        for name in losses:
            t0 = time.perf_counter()
            try:
                result = bench_one(
                    name,
                    n,
                    c,
                    d,
                    chunk_size=chunk_size,
                    use_compile=use_compile and not quick,
                    rss=(rss == "all" or (rss == "headline" and size_name == headline))
                    and (rss_losses is None or name in rss_losses),
                    malloc=malloc,
                    quick=quick,
                    plan=plan,
                )
            except Exception:
                log(traceback.format_exc())
                continue
            out["results"].append(result)
            ms = {m: _fmt_time(result["methods"][m]) for m in METHODS}
            log(
                f"  {name:<18} {size_name:<13} fused {ms['fused']}, materialised "
                f"{ms['materialised']}, torch {ms['torch']}, compile {ms['compile']} ms "
                f"({time.perf_counter() - t0:.1f} s)"
            )
    if quick:
        out["goals"] = evaluate_goals(
            out["results"], headline, QUICK_LARGE_CLASSES, QUICK_SMALL_CLASSES
        )
        out["goals_note"] = (
            f"quick analogues: headline {headline}, 'C >= 32k' is C >= "
            f"{QUICK_LARGE_CLASSES}, 'C = 1000' is C = {QUICK_SMALL_CLASSES}"
        )
    else:
        out["goals"] = evaluate_goals(out["results"], headline)
    out["total_s"] = round(time.perf_counter() - started, 1)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"two tiny sizes (D={QUICK_D}, chunk {QUICK_CHUNK}), no torch.compile (<1 min)",
    )
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument(
        "--rss",
        choices=("all", "headline", "none"),
        default=None,
        help="peak RSS in a child process per method: every size, the headline size only, or "
        "none (default: all; --quick: the larger size, the first loss)",
    )
    parser.add_argument(
        "--malloc",
        choices=("tuned", "default"),
        default="tuned",
        help="raise glibc's malloc thresholds first (train/runtime.py), or keep the "
        "C library's defaults (the children get the same)",
    )
    parser.add_argument(
        "--chunk-size", type=int, default=None, help="classes per chunk of the fused method"
    )
    parser.add_argument("--out", default=None, help="JSON path (default: print only)")
    parser.add_argument(
        "--losses",
        default=",".join(LOSSES),
        help="comma-separated subset of " + ",".join(ALL_LOSSES),
    )
    parser.add_argument(
        "--sizes", default=None, help="comma-separated subset of " + ",".join(SIZES)
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # JSON spec
    args = parser.parse_args(argv)
    if args.child is not None:
        try:
            record = child_measure(json.loads(args.child))
        except Exception as error:
            record = {"n/a": _error(error)}
        print(json.dumps(record), flush=True)
        return record
    losses = tuple(args.losses.split(","))
    unknown = set(losses) - set(ALL_LOSSES)
    if unknown:
        parser.error(f"unknown losses {sorted(unknown)}; choose from {','.join(ALL_LOSSES)}")
    sizes = None
    if args.sizes:
        sizes = {s: SIZES[s] for s in args.sizes.split(",")}
    result = run(
        sizes,
        losses,
        chunk_size=args.chunk_size,
        quick=args.quick,
        use_compile=not args.no_compile,
        rss=args.rss or ("headline" if args.quick else "all"),
        rss_losses=losses[:1] if args.quick and args.rss is None else None,
        malloc=args.malloc,
    )
    print()
    print(format_table(result["results"]))
    print()
    m, s = result["machine"], result["settings"]
    print(
        f"{m['cpu']}, {m['cores_available']} cores; torch threads {m['torch_num_threads']}; "
        f"XLA_FLAGS {m['XLA_FLAGS']}; jax {m['jax']}, torch {m['torch']}; D={s['d']}, chunk "
        f"{s['chunk_size']}; malloc {s['malloc']}; {result['date_utc']}; total "
        f"{result['total_s']} s"
    )
    if "goals_note" in result:
        print(f"goals ({result['goals_note']}):")
    else:
        print("goals:")
    print(format_goals(result["goals"]))
    if args.out:
        write_results(args.out, result, format_markdown(result))
    return result


if __name__ == "__main__":
    main()
