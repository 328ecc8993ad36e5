"""Smoke tests of benchmarks/bench_linear_head.py: its logic, in-process where possible, tiny.

Checks that every method runs (or says why not), that the results carry the time and memory fields
the tables and goals read, that the goal check gives a verdict, and that the ``--child`` mode
prints one JSON line with a peak RSS. It never asserts anything about speed or memory size.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("optax")

BENCH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "bench_linear_head.py"
TINY = dict(min_rounds=1, max_rounds=2, budget_s=0.0, log=lambda *_: None)


def _load():
    spec = importlib.util.spec_from_file_location(BENCH.stem, BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return _load()


@pytest.fixture(scope="module")
def tiny_run(bench):
    # The children run in this process (child_measure, not a fresh interpreter): the logic of
    # merging their records is what is under test here; the real --child mode is tested below.
    original = bench.run_child
    bench.run_child = lambda spec, timeout=None: bench.child_measure(spec)
    try:
        # chunk_size 4: C = 5 is one chunk and a tail, C = 12 three chunks, so the loop runs.
        result = bench.run(
            {"8x5": (8, 5), "8x12": (8, 12)},
            bench.LOSSES,
            d=4,
            chunk_size=4,
            quick=True,
            headline="8x12",
            rss="headline",
            rss_losses=("focal",),
            **TINY,
        )
    finally:
        bench.run_child = original
    return result


def test_results_have_every_method_and_the_memory_fields(bench, tiny_run, tmp_path):
    path = tmp_path / "linear_head.json"
    path.write_text(json.dumps(tiny_run))
    loaded = json.loads(path.read_text())
    assert {"date_utc", "machine", "settings", "results", "goals", "total_s"} <= set(loaded)
    assert {"cpu", "cores_available", "jax", "torch", "torch_num_threads"} <= set(loaded["machine"])
    assert loaded["settings"]["d"] == 4 and loaded["settings"]["chunk_size"] == 4
    assert {(r["loss"], r["size"]) for r in loaded["results"]} == {
        (loss, size) for loss in bench.LOSSES for size in ("8x5", "8x12")
    }
    for r in loaded["results"]:
        methods = r["methods"]
        assert set(methods) == set(bench.METHODS)
        for name in ("fused", "materialised", "torch"):
            assert {"min_ms", "median_ms", "repeats", "rss"} <= set(methods[name]), name
        assert "n/a" in methods["compile"]  # skipped in quick mode
        for name in bench.JAX_METHODS:
            xla = methods[name]["xla"]
            assert xla["total"] == xla["argument"] + xla["output"] + xla["temp"] - xla["alias"]
            assert xla["temp"] >= 0 and xla["argument"] > 0
        assert set(r["ratios"]) == {"fused/materialised", "fused/torch", "fused/compile"}
        assert (
            r["ratios"]["fused/materialised"] is not None and r["ratios"]["fused/compile"] is None
        )
        mem = r["memory_mib"]
        assert {k for _, k in bench.MEMORY_COLUMNS} <= set(mem)
        assert mem["xla_total_fused"] is not None and mem["xla_total_materialised"] is not None
        assert r["memory_ratios"]["xla_total fused/materialised"] > 0
        if (r["loss"], r["size"]) == ("focal", "8x12"):  # rss="headline", rss_losses: focal
            for name in ("fused", "materialised", "torch"):
                rss = methods[name]["rss"]
                assert rss["peak_mib"] >= rss["baseline_mib"] > 0, name
                assert rss["increase_mib"] >= 0 and rss["calls"] == 3
            assert mem["rss_increase_fused"] is not None
            assert mem["rss_increase_compile"] is None
        else:
            assert all("n/a" in methods[name]["rss"] for name in bench.METHODS)
    tables = bench.format_table(loaded["results"])
    assert tables.count("\n") == 2 * len(loaded["results"]) + 5
    assert bench.format_markdown(loaded).count("\n| ") == 2 * (len(loaded["results"]) + 1)


def test_goal_check_gives_a_verdict(bench, tiny_run):
    goals = bench.evaluate_goals(
        tiny_run["results"], headline="8x12", large_classes=12, small_classes=5
    )
    assert all({"loss", "size", "goal", "value", "met", "detail"} <= set(g) for g in goals)
    labels = {(g["loss"], g["size"], g["goal"]) for g in goals}
    for loss in bench.LOSSES:
        assert (loss, "8x12", "memory (XLA total) fused/materialised <= 1/8") in labels
        assert (loss, "8x12", "memory (RSS increase) fused/materialised <= 1/8") in labels
        assert (loss, "8x12", "time fused/materialised <= 1") in labels
        assert (loss, "8x12", "time fused/torch < 1") in labels
        assert (loss, "8x5", "time fused/materialised <= 1.3") in labels
    # Every figure but the RSS was measured; in-process "children" share this process's peak, so
    # their increase can be 0 and its ratio n/a (focal) or was not measured (the other loss).
    rss = "memory (RSS increase) fused/materialised <= 1/8"
    assert all(g["met"] in (True, False) for g in goals if g["goal"] != rss)
    text = bench.format_goals(goals)
    assert text.count("\n") == len(goals) - 1
    assert all(line.split()[0] in ("MET", "MISSED", "n/a") for line in text.splitlines())
    # At the real sizes none of these rows exists: no goal, rather than a made-up verdict.
    assert bench.evaluate_goals(tiny_run["results"]) == []
    # A figure that was not measured (no child, no memory_analysis) gives n/a, not a verdict.
    row = dict(tiny_run["results"][0])
    row["memory_ratios"] = {k: None for _, k in bench.MEMORY_RATIO_COLUMNS}
    memory = bench.evaluate_goals([row], headline=row["size"])
    assert [g["met"] for g in memory if g["goal"].startswith("memory")] == [None, None]
    assert {g["goal"] for g in tiny_run["goals"]} == {  # run's own check, the quick analogues
        "memory (XLA total) fused/materialised <= 1/8",
        rss,
    }


def test_child_mode_prints_one_json_line_with_the_peak_rss(bench, capsys):
    spec = {
        "method": "fused",
        "loss": "focal",
        "n": 8,
        "c": 12,
        "d": 4,
        "chunk_size": 4,
        "calls": 2,
        "malloc": "tuned",
        "seed": 0,
    }
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--child", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    assert record["method"] == "fused" and record["size"] == "8x12"
    assert record["ru_maxrss"] > 0  # printed, but the peak is VmHWM where Linux has it
    assert record["peak_source"] == ("VmHWM" if sys.platform.startswith("linux") else "ru_maxrss")
    assert record["peak_rss_bytes"] >= record["baseline_rss_bytes"] > 0
    assert record["increase_bytes"] == record["peak_rss_bytes"] - record["baseline_rss_bytes"]
    assert len(record["call_s"]) == 2 and record["xla"]["total"] > 0
    summary = bench._rss_summary(record)
    assert summary["increase_mib"] >= 0 and summary["calls"] == 2
    # A child that fails still prints one JSON line, with the reason (here, in-process).
    capsys.readouterr()
    bench.main(["--child", json.dumps(dict(spec, method="nope"))])
    bad = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(bad) == {"n/a"} and "KeyError" in bad["n/a"]
