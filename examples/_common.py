"""Helpers shared by the example scripts: flags, a held-out test split, checkpoint evaluation.

The examples are thin drivers over the `train` package: they build `train.config.Config`s, get
their data from `train.data.input_from_config` and their loss from `train.losses.loss_from_config`,
call `train.loop.train_and_evaluate`, and read back what it wrote (metrics.jsonl, checkpoints/),
plus tables and plots.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
try:  # `pip install -e .` makes `train` importable; a plain clone runs from its root
    import train  # noqa: F401
except ImportError:  # pragma: no cover - depends on how the repo is installed
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402 - after the sys.path fallback above

from train.config import Config  # noqa: E402 - needs the sys.path fallback above

__all__ = [
    "add_common_flags",
    "base_config",
    "build_data",
    "evaluate_checkpoint",
    "history",
    "markdown_table",
    "mean_std",
    "run",
    "write_outputs",
]

DATASETS = ("digits", "mnist", "cifar10")


def add_common_flags(
    parser: argparse.ArgumentParser,
    *,
    outdir: str,
    datasets: Sequence[str] = DATASETS,
    data_dir_help: str = "TFDS data dir (mnist, cifar10)",
) -> None:
    """Flags every example takes: data, output directory, --quick, --verbose."""
    parser.add_argument(
        "--dataset",
        default=datasets[0],
        choices=datasets,
        help="'digits' is embedded (offline); mnist/cifar10 must be prepared as "
        "TFDS array_record in --data-dir",
    )
    parser.add_argument("--data-dir", default=None, help=data_dir_help)
    parser.add_argument("--cache-dir", default=None, help="where the digits dataset is prepared")
    parser.add_argument(
        "--outdir",
        "--workdir",
        dest="outdir",
        default=outdir,
        help="where runs, the table and the PNG go",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: tiny epochs, one seed (< 30 s)"
    )
    parser.add_argument("--verbose", action="store_true", help="print every epoch of every run")


def base_config(args: argparse.Namespace, **overrides: Any) -> Config:
    """A Config with the example's data flags and `overrides`."""
    return Config(
        dataset=args.dataset, data_dir=args.data_dir, cache_dir=args.cache_dir, **overrides
    )


def build_data(config: Config, *, test_split: bool = True):
    """`train.data.input_from_config(config)`; without a test split, half of val becomes test.

    digits has no test split: with `test_split`, the validation indices (`config.val_fraction`
    of the data) are halved at random (seeded by `config.seed`) into validation and test, a
    3-way split. Datasets with a test split (mnist, cifar10) keep theirs.
    """
    from train import data as data_lib

    data = data_lib.input_from_config(config)
    if not test_split or data.test_size > 0:
        return data
    pool, idx = data.splits["val"]
    perm = np.random.default_rng([config.seed, 12345]).permutation(idx)
    n_test = len(idx) // 2
    test, val = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    splits = {**data.splits, "val": (pool, val), "test": (pool, test)}
    return dataclasses.replace(data, splits=splits, val_size=len(val), test_size=len(test))


def run(config: Config, workdir: str, data, *, verbose: bool = False) -> dict[str, Any]:
    """`train_and_evaluate` into a fresh `workdir` (an old run there is removed first)."""
    import shutil

    from train import loop as loop_lib

    if os.path.exists(workdir):
        shutil.rmtree(workdir)
    return loop_lib.train_and_evaluate(
        config, workdir, data=data, log=print if verbose else (lambda _: None)
    )


def history(workdir: str) -> list[dict[str, Any]]:
    """The per-epoch records of `workdir/metrics.jsonl`."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def evaluate_checkpoint(
    config: Config, workdir: str, data, kind: str = "latest", split: str = "test"
) -> tuple[int, dict[str, Any]]:
    """Evaluates a finished run's `kind` checkpoint ("latest", "best_loss", "best_f1") on `split`.

    Returns `(epoch, metrics)` with `metrics` as `train.metrics.summarize` (keys `loss, accuracy,
    f1, recall, count`). The eval step is the trainer's (`train.step.compiled_steps`, cached per
    loss), so it compiles once per loss and process.
    """
    import jax

    from train import checkpoints, losses, metrics
    from train import step as step_lib

    target = step_lib.create_train_state(
        config,
        num_classes=data.num_classes,
        image_shape=data.image_shape,
        key=jax.random.key(config.seed, impl="rbg"),
    )
    ckpt = checkpoints.Checkpoints(os.path.join(workdir, "checkpoints"))
    try:
        if kind == "latest":
            epoch = ckpt.latest_step()
            state, _ = ckpt.restore_latest(target)
        else:
            epoch = ckpt.best_step(kind)
            state = ckpt.restore_best(kind, target)
    finally:
        ckpt.close()
    loss_fn = losses.loss_from_config(config, data.num_classes)
    _, eval_fn = step_lib.compiled_steps(loss_fn, data.num_classes, config.disturb_label)
    totals = step_lib.evaluate(eval_fn, state, data.eval_batches(split), data.num_classes)
    return int(epoch), metrics.summarize(jax.device_get(totals))


def checkpoint_epochs(workdir: str) -> dict[str, int | None]:
    """Epochs of the trainer's best-by-val-loss and best-by-val-F1 checkpoints in `workdir`."""
    from train import checkpoints

    ckpt = checkpoints.Checkpoints(os.path.join(workdir, "checkpoints"))
    try:
        return {kind: ckpt.best_step(kind) for kind in ("best_loss", "best_f1")}
    finally:
        ckpt.close()


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    v = np.asarray(values, np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def pm(values: Sequence[float], scale: float = 100.0, digits: int = 1) -> str:
    """`"mean ± std"` of `values * scale` (percent by default)."""
    m, s = mean_std(values)
    return f"{m * scale:.{digits}f} ± {s * scale:.{digits}f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_outputs(
    outdir: str, name: str, *, title: str, table: str, notes: Sequence[str], results: Any
) -> str:
    """Writes `outdir/name.md` (title, table, notes) and `outdir/name.json`; returns the md path."""
    os.makedirs(outdir, exist_ok=True)
    md = os.path.join(outdir, f"{name}.md")
    with open(md, "w") as f:
        f.write(f"## {title}\n\n{table}\n\n" + "".join(f"- {n}\n" for n in notes))
    with open(os.path.join(outdir, f"{name}.json"), "w") as f:
        json.dump(results, f, indent=1, default=float)
    return md


def finite(x: float) -> bool:
    """True for a finite real number."""
    return isinstance(x, (int, float)) and math.isfinite(x)


def pyplot():
    """matplotlib.pyplot with the Agg backend."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """`(fn(*args, **kwargs), seconds)`."""
    import time

    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start
