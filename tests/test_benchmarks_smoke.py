"""Smoke tests of benchmarks/bench_losses.py and bench_train.py: their logic, in-process, tiny.

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


def _load(path=BENCH):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_logic_on_tiny_sizes_writes_the_documented_json(tmp_path):
    bench = _load()
    tiny = dict(
        quick=True, use_compile=False, min_rounds=1, max_rounds=2, budget_s=0.0, log=lambda *_: None
    )
    result = bench.run({"8x5": (8, 5)}, bench.LOSSES, **tiny)  # no variant at this size
    segmentation = bench.run(
        {"2x3x4x3": (2, 3, 4, 3)}, ("focal", "f1", "cross_entropy@axis1"), **tiny
    )
    result["results"] += segmentation["results"]  # 4-D logits: the segmentation losses only
    bf16 = bench.bench_one(
        "focal@bf16",
        (8, 5),
        use_compile=False,
        **{k: tiny[k] for k in ("min_rounds", "max_rounds", "budget_s")},
    )
    result["results"].append(bf16)
    path = tmp_path / "losses.json"
    path.write_text(json.dumps(result))
    loaded = json.loads(path.read_text())

    assert {"date_utc", "machine", "settings", "results", "goals", "total_s"} <= set(loaded)
    assert {"cpu", "cores_available", "jax", "torch", "torch_num_threads", "XLA_FLAGS"} <= set(
        loaded["machine"]
    )
    expected = {(loss, "8x5") for loss in bench.LOSSES if "@" not in loss}
    expected |= {("focal", "2x3x4x3"), ("cross_entropy@axis1", "2x3x4x3"), ("focal@bf16", "8x5")}
    assert {(r["loss"], r["size"]) for r in loaded["results"]} == expected
    for r in loaded["results"]:
        assert set(r["methods"]) == set(bench.METHODS)
        for name in ("ours", "floor", "torch", "naive"):
            assert {"min_ms", "median_ms", "repeats"} <= set(r["methods"][name]), (r["loss"], name)
        assert "n/a" in r["methods"]["compile"]  # skipped in quick mode
        assert set(r["ratios"]) == {
            "ours/floor",
            "torch/ours",
            "compile/ours",
            "naive/ours",
            "optax/ours",
        }
        assert r["ratios"]["ours/floor"] is not None and r["ratios"]["compile/ours"] is None
        assert (r["ratios"]["optax/ours"] is None) == ("n/a" in r["methods"]["optax"])
    assert all({"loss", "size", "goal", "value", "met"} <= set(g) for g in loaded["goals"])
    goals = {(g["loss"], g["goal"]) for g in bench.evaluate_goals(loaded["results"])}
    assert ("cross_entropy@axis1", "axis1/axis-1 <= 1.2") in goals
    assert ("focal@bf16", "naive/ours >= 1") in goals
    assert bench.format_table(loaded["results"]).count("\n") == len(loaded["results"]) + 1
    assert bench.format_markdown(loaded).count("\n| ") == len(loaded["results"]) + 1


def test_malloc_setting_is_recorded_and_checked():
    bench = _load()
    tiny = dict(
        quick=True, use_compile=False, min_rounds=1, max_rounds=1, budget_s=0.0, log=lambda *_: None
    )
    result = bench.run({"4x3": (4, 3)}, ("cross_entropy",), malloc="default", **tiny)
    assert result["settings"]["malloc"] == "default"
    assert result["settings"]["malloc_tuning_applied"] is False
    assert result["settings"]["calls_per_block"] == bench.BLOCK
    with pytest.raises(ValueError, match="malloc"):
        bench.run({"4x3": (4, 3)}, ("cross_entropy",), malloc="fast", **tiny)


def test_train_benchmark_logic_on_a_tiny_model(tmp_path):
    bench = _load(BENCH.with_name("bench_train.py"))
    result = bench.run(
        quick=True,
        use_compile=False,
        batch_size=4,
        width=2,
        steps=1,
        rounds=1,
        budget_s=0.0,
        data_images=64,
        log=lambda *_: None,
    )
    path = tmp_path / "train.json"
    path.write_text(json.dumps(result))
    loaded = json.loads(path.read_text())
    assert set(loaded["results"]) == {"flax", "torch", "data"}
    for name, r in loaded["results"].items():
        assert {"first_step_s", "compile_s", "step_ms_min", "images_per_s_median", "rounds"} <= set(
            r
        ), name
        assert r["images_per_s_best"] >= r["images_per_s_median"] > 0
    goals = {g["goal"]: g for g in loaded["goals"]}
    assert goals["flax/torch.compile >= 1"]["value"] is None  # not run
    ratio = (
        loaded["results"]["flax"]["images_per_s_median"]
        / loaded["results"]["torch"]["images_per_s_median"]
    )
    assert goals["flax/torch eager >= 1.5"]["value"] == pytest.approx(ratio, rel=1e-3)
    assert bench.format_markdown(loaded).count("\n| ") == 4  # header + three methods
    conv = loaded["conv_diagnosis"]
    assert {"jax_forward_ms", "jax_grad_ms", "torch_forward_ms", "torch_grad_ms"} <= set(conv)
    assert conv["forward_gflop"] == pytest.approx(2 * 9 * 4 * 32 * 32 * 2 * 2 / 1e9, abs=1e-3)


def test_devices_benchmark_child_and_table_on_a_tiny_model():
    """bench_devices.py's child (here in-process, one device: the mesh step and today's plain
    step) and its table; the parent only starts one child per device count."""
    bench = _load(BENCH.with_name("bench_devices.py"))
    row = bench._child(8, 2, 1, 1)
    assert row["devices"] == 1 and set(row["methods"]) == {"mesh", "plain"}
    for m in row["methods"].values():
        assert m["best_images_per_s"] > 0 and m["rounds"] == 1
    plain = row["methods"]["plain"]["best_images_per_s"]
    ratio = plain / row["methods"]["mesh"]["best_images_per_s"]
    result = {
        "date_utc": "2026-12-02T00:00:00+00:00",
        "machine": {"cores_available": 2, "jax": "x", "cpu": "cpu"},
        "settings": {"model": "small_cnn", "width": 2, "image": (32, 32, 1), "batch_size": 8},
        "results": [row, {**row, "devices": 2, "methods": {"mesh": row["methods"]["mesh"]}}],
        "goals": {"mesh_over_plain_seconds_per_image_at_1_device": ratio, "met": ratio <= 1.1},
    }
    table = bench.format_markdown(result)
    assert table.count("\n| ") == 3 and f"{ratio:.3f}x" in table
