"""The goals, tables and Markdown of bench_linear_head.py: the issue's goals checked MET or MISSED
on a run's results, and its time and memory tables as plain text and as Markdown.
"""

from __future__ import annotations

from _linear_head_cases import (
    HEADLINE,
    LARGE_CLASSES,
    MEMORY_GOAL,
    METHODS,
    SMALL_CLASSES,
    SMALL_TIME_GOAL,
)

# ------------------------------------------------------------------------------ goals


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


# ------------------------------------------------------------------------------ tables


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
