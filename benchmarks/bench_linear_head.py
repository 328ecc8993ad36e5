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
torch.compile.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import subprocess
import sys
import time
import traceback

import numpy as np

# torch's OpenMP workers otherwise spin-wait after every call and steal the cores of the XLA call
# that follows (see bench_losses.py); set before torch is imported, an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# The helper modules beside this file (also when it is loaded by path, as the smoke test does).
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import jax
import jax.numpy as jnp
import torch
import torch.nn.functional as F
from _loss_cases import GAMMA, SMOOTHING, jax_ours, torch_module
from _timing import BLOCK, apply_malloc, cores, machine_info, time_interleaved, write_results

import jaxloss
from jaxloss import _linear_head

try:
    import resource
except ImportError:  # not POSIX: no peak RSS
    resource = None

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


def _error(error):
    return f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:200]}"


# ------------------------------------------------------------------------------ peak RSS (child)


def _ru_maxrss():
    """``(raw, bytes)`` of ``getrusage(RUSAGE_SELF).ru_maxrss`` (KiB on Linux, bytes on macOS)."""
    raw = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return raw, raw if sys.platform == "darwin" else raw * 1024


def _proc_status_bytes(field):
    """``field`` (``VmRSS``, ``VmHWM``) of ``/proc/self/status`` in bytes; None without it."""
    try:
        for line in pathlib.Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                value, unit = line.split()[1:3]
                return int(value) * {"kB": 1024}.get(unit, 1)
    except (OSError, ValueError):
        pass
    return None


def _rss_bytes():
    """This process's resident set now (``VmRSS``), or its peak where that is absent."""
    now = _proc_status_bytes("VmRSS")
    return _ru_maxrss()[1] if now is None else now


def _peak_bytes():
    """``(bytes, source)``: this process's peak resident set, ``VmHWM`` where Linux has it.

    Not ``ru_maxrss`` there: Linux carries the peak of the process that started this one across
    ``fork``/``vfork`` and ``exec`` into ``ru_maxrss`` (a child of a 2 GiB parent reports 2 GiB),
    so the parent's timing would set every child's figure. ``VmHWM`` is the high-water mark of
    this process's own address space, which ``exec`` made new.
    """
    peak = _proc_status_bytes("VmHWM")
    return (_ru_maxrss()[1], "ru_maxrss") if peak is None else (peak, "VmHWM")


def child_measure(spec):
    """The ``--child`` mode: one method's peak RSS in this process; a JSON-ready dict.

    ``spec``: ``method``, ``loss``, ``n``, ``c``, ``d``, ``chunk_size`` (or None), ``calls``,
    ``malloc``, ``seed``. Only the method's own framework's inputs are built.
    """
    if resource is None:
        return {"n/a": "no resource module (not POSIX)"}
    apply_malloc(spec["malloc"])
    torch.set_num_threads(cores())
    method, n, c, d = spec["method"], spec["n"], spec["c"], spec["d"]
    framework = "jax" if method in JAX_METHODS else "torch"
    inputs = _inputs(n, c, d, spec.get("seed", 0), frameworks=(framework,))
    baseline, (baseline_peak, _) = _rss_bytes(), _peak_bytes()
    t0 = time.perf_counter()
    run, info = _make(method, spec["loss"], inputs, c, spec.get("chunk_size"))
    ready = _rss_bytes()
    build_s = time.perf_counter() - t0
    call_s = []
    for _ in range(spec["calls"]):
        t1 = time.perf_counter()
        run()
        call_s.append(round(time.perf_counter() - t1, 4))
    (peak, source), (raw, raw_bytes) = _peak_bytes(), _ru_maxrss()
    peak = max(peak, _rss_bytes(), baseline, ready)  # (ru_maxrss's fallback is updated lazily)
    return {
        "method": method,
        "loss": spec["loss"],
        "size": f"{n}x{c}",
        "d": d,
        "peak_rss_bytes": peak,
        "peak_source": source,
        "ru_maxrss": raw,
        "ru_maxrss_bytes": raw_bytes,
        "baseline_rss_bytes": baseline,
        "baseline_peak_bytes": baseline_peak,
        "ready_rss_bytes": ready,
        "increase_bytes": peak - baseline,
        "calls_increase_bytes": peak - ready,
        "build_s": round(build_s, 3),
        "call_s": call_s,
        **({"xla": info["xla"]} if "xla" in info else {}),
    }


def run_child(spec, timeout=3600):
    """Runs ``child_measure(spec)`` in a fresh process (this script, ``--child``); its dict."""
    cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), "--child", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"n/a": f"child timed out after {timeout} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = (proc.stderr.strip().splitlines() or [""])[-1][:200]
    return {"n/a": f"child exited {proc.returncode} without a result: {tail}"}


def _rss_summary(record):
    if "n/a" in record:
        return {"n/a": record["n/a"]}
    return {
        "peak_mib": round(record["peak_rss_bytes"] / MIB, 1),
        "baseline_mib": round(record["baseline_rss_bytes"] / MIB, 1),
        "ready_mib": round(record["ready_rss_bytes"] / MIB, 1),
        "increase_mib": round(record["increase_bytes"] / MIB, 1),
        "increase_bytes": record["increase_bytes"],
        "calls_increase_mib": round(record["calls_increase_bytes"] / MIB, 1),
        "calls": len(record["call_s"]),
        "call_s": record["call_s"],
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


# ------------------------------------------------------------------------------ goals, tables


def _goal(r, label, value, ok, detail):
    return {
        "loss": r["loss"],
        "size": r["size"],
        "goal": label,
        "value": value,
        "met": None if value is None else bool(ok(value)),
        "detail": detail,
    }


def _ms(r, method):
    v = r["methods"][method].get("min_ms")
    return "n/a" if v is None else f"{v:.2f} ms"


def _mib(v):
    return "n/a" if v is None else f"{v:.1f} MiB"


def evaluate_goals(
    results, headline=HEADLINE, large_classes=LARGE_CLASSES, small_classes=SMALL_CLASSES
):
    """The issue's goals from this run's results (min times; XLA totals and RSS increases)."""
    goals = []
    for r in results:
        q, mem = r["ratios"], r["memory_mib"]
        if r["size"] == headline:
            for kind, key in (("XLA total", "xla_total"), ("RSS increase", "rss_increase")):
                fused, mat = mem[f"{key}_fused"], mem[f"{key}_materialised"]
                detail = f"fused {_mib(fused)}, materialised {_mib(mat)}"
                if key == "rss_increase":
                    detail += (
                        f"; the calls alone: fused {_mib(mem['rss_calls_increase_fused'])}, "
                        f"materialised {_mib(mem['rss_calls_increase_materialised'])}"
                    )
                goals.append(
                    _goal(
                        r,
                        f"memory ({kind}) fused/materialised <= 1/8",
                        r["memory_ratios"][f"{key} fused/materialised"],
                        lambda v: v <= MEMORY_GOAL,
                        detail,
                    )
                )
        if r["c"] >= large_classes:
            goals.append(
                _goal(
                    r,
                    "time fused/materialised <= 1",
                    q["fused/materialised"],
                    lambda v: v <= 1.0,
                    f"fused {_ms(r, 'fused')}, materialised {_ms(r, 'materialised')}",
                )
            )
            goals.append(
                _goal(
                    r,
                    "time fused/torch < 1",
                    q["fused/torch"],
                    lambda v: v < 1.0,
                    f"fused {_ms(r, 'fused')}, torch eager {_ms(r, 'torch')}",
                )
            )
        if r["c"] == small_classes:
            goals.append(
                _goal(
                    r,
                    f"time fused/materialised <= {SMALL_TIME_GOAL}",
                    q["fused/materialised"],
                    lambda v: v <= SMALL_TIME_GOAL,
                    f"fused {_ms(r, 'fused')}, materialised {_ms(r, 'materialised')}",
                )
            )
    return goals


def _fmt_time(method):
    if "min_ms" not in method:
        return "n/a"
    return f"{method['min_ms']:.2f}/{method['median_ms']:.2f}"


def _fmt(v, spec=".2f"):
    return "n/a" if v is None else format(v, spec)


MEMORY_COLUMNS = (  # (header, key in memory_mib)
    ("XLA temp fused", "xla_temp_fused"),
    ("XLA temp mat.", "xla_temp_materialised"),
    ("XLA total fused", "xla_total_fused"),
    ("XLA total mat.", "xla_total_materialised"),
    ("RSS+ fused", "rss_increase_fused"),
    ("RSS+ mat.", "rss_increase_materialised"),
    ("RSS+ torch", "rss_increase_torch"),
    ("RSS+ compile", "rss_increase_compile"),
    ("calls+ fused", "rss_calls_increase_fused"),
    ("calls+ mat.", "rss_calls_increase_materialised"),
)
MEMORY_RATIO_COLUMNS = (  # (header, key in memory_ratios)
    ("XLA fused/mat.", "xla_total fused/materialised"),
    ("RSS+ fused/mat.", "rss_increase fused/materialised"),
)
MEMORY_NOTE = (
    "XLA: memory_analysis(), temp and total = argument + output + temp - alias; RSS+: a fresh "
    "process's peak resident set above its baseline after imports and inputs; calls+: above its "
    "resident set once the method is built (compiled), the calls alone"
)


def format_table(results):
    """Two plain-text tables: min/median ms and the time ratios; memory in MiB and its ratios."""
    head = (
        f"{'loss':<18}{'N x C':<13}"
        + "".join(f"{m + ' min/med ms':>26}" for m in METHODS)
        + "".join(f"{k:>20}" for k in results[0]["ratios"])
        + f"{'compile 1st call s':>20}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        cells = "".join(f"{_fmt_time(r['methods'][m]):>26}" for m in METHODS)
        ratios = "".join(f"{_fmt(v):>20}" for v in r["ratios"].values())
        first = _fmt(r["methods"]["compile"].get("first_call_s"), ".1f")
        lines.append(f"{r['loss']:<18}{r['size']:<13}{cells}{ratios}{first:>20}")
    head = (
        f"{'loss':<18}{'N x C':<13}"
        + "".join(f"{h:>16}" for h, _ in MEMORY_COLUMNS)
        + "".join(f"{h:>17}" for h, _ in MEMORY_RATIO_COLUMNS)
    )
    lines += ["", f"peak memory, MiB ({MEMORY_NOTE})", head, "-" * len(head)]
    for r in results:
        cells = "".join(f"{_fmt(r['memory_mib'][k], '.1f'):>16}" for _, k in MEMORY_COLUMNS)
        ratios = "".join(
            f"{_fmt(r['memory_ratios'][k], '.3f'):>17}" for _, k in MEMORY_RATIO_COLUMNS
        )
        lines.append(f"{r['loss']:<18}{r['size']:<13}{cells}{ratios}")
    return "\n".join(lines)


def format_markdown(result):
    """The two tables as Markdown (for the README), with the machine and the settings."""
    m, s = result["machine"], result["settings"]
    keys = list(result["results"][0]["ratios"])
    lines = [
        f"{m['cpu']}, {m['cores_available']} cores, torch threads {m['torch_num_threads']}, "
        f"OMP_WAIT_POLICY {m.get('OMP_WAIT_POLICY')}, XLA_FLAGS {m['XLA_FLAGS']}; jax {m['jax']}, "
        f"torch {m['torch']}; malloc {s['malloc']}; {result['date_utc']}. "
        f"Value+grad (features, kernel, bias), float32, D={s['d']}, chunk {s['chunk_size']}; "
        "min (median) ms.",
        "",
        "| loss | N x C | "
        + " | ".join(METHODS)
        + " | "
        + " | ".join(keys)
        + " | compile's first call (s) |",
        "|" + "---|" * (3 + len(METHODS) + len(keys)),
    ]
    for r in result["results"]:
        cells = []
        for name in METHODS:
            method = r["methods"][name]
            cells.append(
                f"{method['min_ms']:.2f} ({method['median_ms']:.2f})"
                if "min_ms" in method
                else "n/a"
            )
        ratios = [_fmt(v) for v in r["ratios"].values()]
        ratios.append(_fmt(r["methods"]["compile"].get("first_call_s"), ".1f"))
        lines.append(f"| {r['loss']} | {r['size']} | " + " | ".join(cells + ratios) + " |")
    lines += [
        "",
        f"Peak memory, MiB ({MEMORY_NOTE}).",
        "",
        "| loss | N x C | "
        + " | ".join(h for h, _ in MEMORY_COLUMNS + MEMORY_RATIO_COLUMNS)
        + " |",
        "|" + "---|" * (2 + len(MEMORY_COLUMNS) + len(MEMORY_RATIO_COLUMNS)),
    ]
    for r in result["results"]:
        cells = [_fmt(r["memory_mib"][k], ".1f") for _, k in MEMORY_COLUMNS]
        cells += [_fmt(r["memory_ratios"][k], ".3f") for _, k in MEMORY_RATIO_COLUMNS]
        lines.append(f"| {r['loss']} | {r['size']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def format_goals(goals):
    """One line per goal: MET / MISSED / n/a, the goal, its value and the figures behind it."""
    lines = []
    for g in goals:
        status = {True: "MET", False: "MISSED", None: "n/a"}[g["met"]]
        lines.append(
            f"  {status:<7}{g['loss']:<18}{g['size']:<13}{g['goal']:<50}"
            f"{_fmt(g['value'], '.3f'):>7}  ({g['detail']})"
        )
    return "\n".join(lines)


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
