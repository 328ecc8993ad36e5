"""Smoke test of benchmarks/bench_losses.py: runs its logic in-process on tiny sizes.

Checks that every method runs (or says why not) and that the JSON has the documented keys. It never
asserts anything about speed.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib

import pytest

pytest.importorskip("torch")
pytest.importorskip("optax")

BENCH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "bench_losses.py"


def _load():
  spec = importlib.util.spec_from_file_location("bench_losses", BENCH)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_quick_logic_on_tiny_sizes_writes_the_documented_json(tmp_path):
  bench = _load()
  tiny = dict(quick=True, use_compile=False, min_rounds=1, max_rounds=2, budget_s=0.0,
              log=lambda *_: None)
  result = bench.run({"8x5": (8, 5)}, bench.LOSSES, **tiny)
  segmentation = bench.run({"2x3x4x3": (2, 3, 4, 3)}, ("focal", "cross_entropy"), **tiny)
  result["results"] += segmentation["results"]  # classes-last 4-D logits: focal only
  path = tmp_path / "losses.json"
  path.write_text(json.dumps(result))
  loaded = json.loads(path.read_text())

  assert {"date_utc", "machine", "settings", "results", "goals", "total_s"} <= set(loaded)
  assert {"cpu", "cores_available", "jax", "torch", "torch_num_threads", "XLA_FLAGS"} <= set(
      loaded["machine"])
  expected = {(loss, "8x5") for loss in bench.LOSSES}
  expected.add(("focal", "2x3x4x3"))
  assert {(r["loss"], r["size"]) for r in loaded["results"]} == expected
  for r in loaded["results"]:
    assert set(r["methods"]) == set(bench.METHODS)
    for name in ("ours", "floor", "torch", "naive"):
      assert {"min_ms", "median_ms", "repeats"} <= set(r["methods"][name]), (r["loss"], name)
    assert "n/a" in r["methods"]["compile"]  # skipped in quick mode
    assert set(r["ratios"]) == {"ours/floor", "torch/ours", "compile/ours", "naive/ours",
                                "optax/ours"}
    assert r["ratios"]["ours/floor"] is not None and r["ratios"]["compile/ours"] is None
    assert (r["ratios"]["optax/ours"] is None) == ("n/a" in r["methods"]["optax"])
  assert all({"loss", "size", "goal", "value", "met"} <= set(g) for g in loaded["goals"])
  assert bench.format_table(loaded["results"]).count("\n") == len(loaded["results"]) + 1
  assert bench.format_markdown(loaded).count("\n| ") == len(loaded["results"]) + 1
