"""Peak resident set of one bench_linear_head.py method, measured in a fresh child process.

:func:`run_child` starts ``bench_linear_head.py --child SPEC`` (the script's hidden mode, which
calls :func:`child_measure`) and reads back the one JSON line it prints; :func:`_rss_summary` turns
that record into the MiB figures of the results.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import time

import torch
from _linear_head_cases import JAX_METHODS, MIB, _inputs, _make
from _timing import apply_malloc, cores

try:
    import resource
except ImportError:  # not POSIX: no peak RSS
    resource = None

SCRIPT = pathlib.Path(__file__).resolve().with_name("bench_linear_head.py")  # has the --child mode


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
    cmd = [sys.executable, str(SCRIPT), "--child", json.dumps(spec)]
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
