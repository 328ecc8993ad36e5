"""The examples' --quick modes, run in-process (one interpreter, shared JAX compilation caches).

Each writes its markdown table, JSON results and PNG into tmp_path; the tests check the files and
that the numbers are sane (accuracies in [0, 1], epochs in range, the table has a row per run).
"""

from __future__ import annotations

import importlib
import json
import math
import os
import sys

import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


@pytest.fixture(scope="module")
def examples():
    sys.path.insert(0, EXAMPLES)  # the scripts import their sibling `_common`
    try:
        yield lambda name: importlib.import_module(name)
    finally:
        sys.path.remove(EXAMPLES)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("digits_cache"))


def _check_files(out, name):
    md, js, png = (os.path.join(out, f"{name}.{ext}") for ext in ("md", "json", "png"))
    for path in (md, js, png):
        assert os.path.getsize(path) > 0, path
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(md) as f:
        text = f.read()
    with open(js) as f:
        return text, json.load(f)


def _unit(x):
    return isinstance(x, float) and 0.0 <= x <= 1.0


def test_imbalanced_focal_quick(examples, tmp_path, cache_dir):
    out = examples("imbalanced_focal").main(
        ["--quick", "--outdir", str(tmp_path), "--cache-dir", cache_dir]
    )
    text, saved = _check_files(tmp_path, "imbalanced_focal")
    assert [r["setting"] for r in out["results"]] == ["CE, cut", "focal γ=2 α=100, cut"]
    for r in out["results"]:
        (run,) = r["runs"]
        assert all(_unit(run[k]) for k in ("accuracy", "recall_cut", "f1")), run
        assert run["epoch"] == 2 and run["test_size"] > 300
        assert r["setting"] in text
    # 1,078 training digits (60%), ~110 of them sixes; the cut keeps a tenth of the sixes
    assert 950 <= out["results"][0]["runs"][0]["train_size"] <= 1000
    assert saved["args"]["fraction"] == 0.1


def test_regularization_quick(examples, tmp_path, cache_dir):
    out = examples("regularization").main(
        ["--quick", "--outdir", str(tmp_path), "--cache-dir", cache_dir]
    )
    text, _ = _check_files(tmp_path, "regularization")
    labels = [r["setting"] for r in out["results"]]
    assert labels == ["baseline", "small CNN, dropout 0.5", "small CNN, no dropout"]
    for r in out["results"]:
        (run,) = r["runs"]
        assert _unit(run["test_acc_final"]) and _unit(run["test_acc_best_loss"])
        assert 1 <= run["best_loss_epoch"] <= run["final_epoch"] == 2
        assert len(run["train_loss"]) == len(run["val_loss"]) == 2
        assert all(math.isfinite(v) and v > 0 for v in run["train_loss"] + run["val_loss"])
    assert "early stopping" in text


def test_compare_losses_and_schedules_quick(examples, tmp_path, cache_dir):
    out = examples("compare_losses_and_schedules").main(
        ["--quick", "--outdir", str(tmp_path), "--cache-dir", cache_dir]
    )
    _check_files(tmp_path, "compare_losses_and_schedules")
    runs = out["results"]
    assert [(r["schedule"], r["accum"]) for r in runs] == [
        ("StepLR(5, 0.7)", 1),
        ("StepLR(5, 0.7)", 4),
        ("plateau(0.5, 1)", 1),
        ("plateau(0.5, 1)", 4),
    ]
    for r in runs:
        if r["schedule"].startswith("StepLR"):
            assert r["lr"] == [1e-3] * 3  # StepLR(5, 0.7) keeps 1e-3 for 5 epochs
        else:  # ReduceLROnPlateau(factor 0.5, patience 1): halved after a bad epoch, at most once
            assert r["lr"][:2] == [1e-3, 1e-3] and r["lr"][2] in (1e-3, 5e-4)
        for kind in ("best_loss", "best_f1"):
            assert 1 <= r[kind]["epoch"] <= 3
            assert _unit(r[kind]["test_accuracy"]) and _unit(r[kind]["test_f1"])
            assert _unit(r[kind]["val_f1"])
        # best-by-F1 is the epoch with the highest val F1 of the run
        assert r["best_f1"]["val_f1"] == pytest.approx(max(r["val_f1"]))


def test_finetune_imagefolder_quick(examples, tmp_path):
    out = examples("finetune_imagefolder").main(["--quick", "--outdir", str(tmp_path)])
    text, _ = _check_files(tmp_path, "finetune_imagefolder")
    hist = out["history"]
    assert [r["epoch"] for r in hist] == [1, 2]
    assert all(r["lr"] == pytest.approx(1e-3) for r in hist)
    assert all(_unit(r["val_accuracy"]) for r in hist)
    assert out["best_val_accuracy_epoch"] in (1, 2)
    assert set(out["checkpoint_epochs"].values()) <= {1, 2}
    assert os.path.isdir(os.path.join(tmp_path, "synthetic_shapes", "train", "circle"))
    assert "best validation accuracy" in text


def test_verify_your_port_quick(examples, tmp_path):
    out = examples("verify_your_port").main(["--quick", "--outdir", str(tmp_path)])
    assert out["checks"] == {
        "loss": True,
        "layers eval": True,
        "layers train": True,
        "steps SGD": True,
    }
    # the lessons: flax's BatchNorm is caught at its running variance, at the first step
    assert out["flagged"]["flax nnx.BatchNorm"] == "step 1 buffer/bn1.running_var"
    assert out["flagged"]["optax.adam"] is not None  # where depends on the sizes
    assert out["ok"] is True
    with open(os.path.join(tmp_path, "verify_your_port.txt")) as f:
        text = f.read()
    assert "1. Dice loss: 16 comparisons, all passed" in text
    assert "first failure: step 1 buffer/bn1.running_var" in text
    assert text.rstrip().splitlines()[-1].startswith("summary: loss ok")
