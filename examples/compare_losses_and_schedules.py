"""Seed 002: losses (CE, label smoothing, focal, soft-F1) x LR schedules (StepLR, cosine, plateau),
with and without gradient accumulation; best-by-val-loss vs best-by-val-F1 checkpoints.

Every run: LeNet, Adam 1e-3, batch 32, no augmentation, digits split 60/20/20 into
train/val/test (digits has no test split). Schedules, per epoch with torch's semantics:
StepLR(step_size=5, gamma=0.7) as the seed, CosineAnnealingLR(T_max=epochs), and
ReduceLROnPlateau on the validation loss (factor 0.5, patience 1: torch's defaults, factor 0.1
and patience 10, would not act within 15 epochs, nor did patience 2 here). `--accum K` accumulates
K micro-batches of 32 per optimiser step (the seed: batch 32 with NUM_ACCUM 4 updates once per
128 images).

The trainer keeps the best checkpoint by validation loss and, separately, by validation macro-F1
(seed 002); both are evaluated on the test split. Writes `compare_losses_and_schedules.md/.json`
and `compare_losses_and_schedules.png` (learning rate and validation macro-F1 per epoch).

    python examples/compare_losses_and_schedules.py            # 4 losses x 3 schedules x accum 1, 4
    python examples/compare_losses_and_schedules.py --accum 1  # without accumulation only
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import _common as C

LOSSES = {
    "CE": dict(loss="ce"),
    "label smoothing 0.1": dict(loss="label_smoothing", label_smoothing=0.1),
    "focal γ=2": dict(loss="focal", focal_gamma=2.0),
    "soft F1": dict(loss="f1"),
}
SCHEDULES = {
    "StepLR(5, 0.7)": dict(schedule="step", step_size=5, gamma=0.7),
    "cosine": dict(schedule="cosine"),
    "plateau(0.5, 1)": dict(schedule="plateau", plateau_factor=0.5, plateau_patience=1),
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    C.add_common_flags(p, outdir="runs/examples/compare_losses_and_schedules")
    p.add_argument("--epochs", type=int, default=15, help="epochs of every run")
    p.add_argument(
        "--accum", default="1,4", help="comma-separated accumulation steps to compare (1 = none)"
    )
    p.add_argument("--model", default="lenet", help="a train.models name")
    p.add_argument("--seed", type=int, default=0, help="seed of every run")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    accums = [int(a) for a in args.accum.split(",")]
    losses, schedules = LOSSES, SCHEDULES
    if args.quick:  # a smoke run: CE x (StepLR, plateau) x the first two accum values
        losses = {"CE": LOSSES["CE"]}
        schedules = {k: v for k, v in SCHEDULES.items() if k != "cosine"}
        accums = accums[:2]
    common = dict(
        model=args.model,
        width=6,
        optimizer="adam",
        lr=1e-3,
        batch_size=32,
        augment=False,
        val_fraction=0.4,
        plot=False,
        seed=args.seed,
        epochs=3 if args.quick else args.epochs,
        limit_train_batches=4 if args.quick else None,
    )
    results, total = [], 0.0
    for loss_name, loss_kw in losses.items():
        for sched_name, sched_kw in schedules.items():
            for accum in accums:
                config = C.base_config(args, accum=accum, **common, **loss_kw, **sched_kw)
                data = C.build_data(config)
                workdir = os.path.join(args.outdir, "runs", f"{len(results)}")
                _, seconds = C.timed(C.run, config, workdir, data, verbose=args.verbose)
                total += seconds
                hist = C.history(workdir)
                row = dict(
                    loss=loss_name,
                    schedule=sched_name,
                    accum=accum,
                    lr=[r["lr"] for r in hist],
                    val_f1=[r["val_f1"] for r in hist],
                    final_val_accuracy=hist[-1]["val_accuracy"],
                    seconds=round(seconds, 1),
                )
                for kind in ("best_loss", "best_f1"):
                    epoch, test = C.evaluate_checkpoint(config, workdir, data, kind, "test")
                    rec = hist[epoch - 1]
                    row[kind] = dict(
                        epoch=epoch,
                        val_loss=rec["val_loss"],
                        val_f1=rec["val_f1"],
                        test_accuracy=test["accuracy"],
                        test_f1=test["f1"],
                    )
                results.append(row)
                print(
                    f"{loss_name:20s} {sched_name:16s} accum {accum}: best-loss epoch "
                    f"{row['best_loss']['epoch']} test F1 {row['best_loss']['test_f1']:.4f} | "
                    f"best-F1 epoch {row['best_f1']['epoch']} test F1 "
                    f"{row['best_f1']['test_f1']:.4f} ({seconds:.1f}s)",
                    flush=True,
                )

    headers = [
        "loss",
        "schedule",
        "accum",
        "final val acc %",
        "best-loss: epoch (val loss)",
        "best-loss: test acc / F1 %",
        "best-F1: epoch (val F1 %)",
        "best-F1: test acc / F1 %",
    ]
    rows = [
        [
            r["loss"],
            r["schedule"],
            r["accum"],
            f"{100 * r['final_val_accuracy']:.1f}",
            f"{r['best_loss']['epoch']} ({r['best_loss']['val_loss']:.3f})",
            f"{100 * r['best_loss']['test_accuracy']:.1f} / {100 * r['best_loss']['test_f1']:.1f}",
            f"{r['best_f1']['epoch']} ({100 * r['best_f1']['val_f1']:.1f})",
            f"{100 * r['best_f1']['test_accuracy']:.1f} / {100 * r['best_f1']['test_f1']:.1f}",
        ]
        for r in results
    ]
    table = C.markdown_table(headers, rows)
    diff = [r["best_f1"]["test_f1"] - r["best_loss"]["test_f1"] for r in results]
    same = sum(r["best_f1"]["epoch"] == r["best_loss"]["epoch"] for r in results)
    notes = [
        f"{args.dataset}, {args.model}, Adam 1e-3, micro-batch 32, {common['epochs']} epochs, "
        f"seed {args.seed}, one run per cell; val losses of different losses are not comparable.",
        f"best-by-F1 minus best-by-loss test macro-F1: mean {100 * C.mean_std(diff)[0]:+.2f} "
        f"points over {len(results)} runs; the two checkpoints are the same epoch in "
        f"{same} of {len(results)} runs.",
        f"Training time of all runs: {total:.0f} s.",
    ]
    title = f"Losses x LR schedules x gradient accumulation ({args.dataset})"
    md = C.write_outputs(
        args.outdir,
        "compare_losses_and_schedules",
        title=title,
        table=table,
        notes=notes,
        results=dict(args=vars(args), results=results),
    )
    png = plot(results, os.path.join(args.outdir, "compare_losses_and_schedules.png"), title)
    print(f"\n{table}\n")
    print(f"wrote {md}, {png}")
    return dict(results=results, table=table, md=md, png=png)


def plot(results: list[dict], path: str, title: str) -> str:
    """Top row: LR per epoch for each schedule; bottom row: validation macro-F1 per epoch."""
    plt = C.pyplot()
    scheds = list(dict.fromkeys(r["schedule"] for r in results))
    fig, axes = plt.subplots(
        2, len(scheds), figsize=(12, 6), constrained_layout=True, squeeze=False, sharex=True
    )
    colors = {name: f"C{i}" for i, name in enumerate(dict.fromkeys(r["loss"] for r in results))}
    for j, sched in enumerate(scheds):
        for r in results:
            if r["schedule"] != sched:
                continue
            epochs = range(1, len(r["lr"]) + 1)
            style = "-" if r["accum"] == 1 else "--"
            label = f"{r['loss']}, accum {r['accum']}"
            axes[0, j].plot(epochs, r["lr"], style, color=colors[r["loss"]], label=label)
            axes[1, j].plot(epochs, r["val_f1"], style, color=colors[r["loss"]], label=label)
        axes[0, j].set_title(f"{sched}: learning rate", fontsize=9)
        axes[1, j].set_title(f"{sched}: val macro-F1", fontsize=9)
        axes[1, j].set_xlabel("epoch")
        for ax in axes[:, j]:
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=7)
    axes[1, -1].legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=70)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main(sys.argv[1:])
