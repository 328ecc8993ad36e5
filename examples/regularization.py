r"""Seed 004: regularisers against overfitting: early stopping, L2 weight decay, dropout,
DisturbLabel, label smoothing.

All runs: Adam 1e-3, constant LR, no augmentation (so the baseline overfits), batch 32, and a
3-way split: digits has no test split, so 40% of it is held out and halved into validation and test
(60/20/20; the post splits CIFAR-10 30k/20k and tests on the 10k test split, which is what
`--dataset cifar10` does). Rows:

- baseline: CIFAR ResNet-18 (width `--width`), all epochs, final weights ("overfitting" in the
  post);
- early stopping: the same run's best-validation-loss checkpoint (the post keeps the lowest val-loss
  model while training on), with the epoch where `--early-stopping 5` would have stopped it;
- Adam weight decay 1e-3 (L2 added to the gradient, torch's Adam), DisturbLabel alpha 30, label
  smoothing 0.2 (the seeds' loss): the ResNet, final weights;
- dropout: the seed's small CNN (dropout 0.5 after the first FC layer) against the same CNN with the
  dropout removed (`small_cnn` has no dropout-rate flag, so this script registers a no-dropout
  variant with `train.models.register_model`); digits are resized to 16x16 for it
  (it needs >= 14x14).

Writes `regularization.md/.json` and `regularization.png` (train/val loss per run) to --outdir.

    python examples/regularization.py
    python examples/regularization.py --dataset cifar10 --data-dir ~/tensorflow_datasets \
        --width 64 --epochs 30
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import _common as C

PATIENCE = 5


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    C.add_common_flags(p, outdir="runs/examples/regularization")
    p.add_argument("--epochs", type=int, default=20, help="epochs of every run")
    p.add_argument("--width", type=int, default=8, help="ResNet-18 base width (64 in the post)")
    p.add_argument("--seeds", type=int, default=1, help="number of seeds (0, 1, ...)")
    p.add_argument(
        "--model",
        default="resnet18_cifar",
        help="model of the non-dropout rows (--quick: lenet, which compiles fast)",
    )
    return p.parse_args(argv)


def register_no_dropout_cnn() -> str:
    """Adds `small_cnn_no_dropout` (seed 004's small CNN, no dropout) to the model registry."""
    from flax import nnx

    from train import models

    class SmallCNNNoDropout(models.SmallCNN):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.dropout = nnx.Dropout(0.0)  # rate 0: the identity

    def build(*, num_classes, image_shape, width=None, dtype, rngs):
        return SmallCNNNoDropout(
            num_classes=num_classes,
            image_shape=image_shape,
            width=6 if width is None else width,
            dtype=dtype,
            rngs=rngs,
        )

    if "small_cnn_no_dropout" not in models.MODELS:
        models.register_model("small_cnn_no_dropout", build)
    return "small_cnn_no_dropout"


def settings(args: argparse.Namespace) -> list[tuple[str, dict]]:
    """`(label, Config overrides)` of the training runs."""
    resnet = (
        dict(model="lenet", width=6) if args.quick else dict(model=args.model, width=args.width)
    )
    cnn = dict(width=6, image_size=16 if args.dataset == "digits" else None)
    return [
        ("baseline", dict(**resnet)),
        ("Adam L2 weight decay 1e-3", dict(**resnet, weight_decay=1e-3)),
        ("DisturbLabel α=30", dict(**resnet, disturb_label=30.0)),
        ("label smoothing 0.2", dict(**resnet, loss="label_smoothing", label_smoothing=0.2)),
        ("small CNN, dropout 0.5", dict(model="small_cnn", **cnn)),
        ("small CNN, no dropout", dict(model=register_no_dropout_cnn(), **cnn)),
    ]


def stop_epoch(hist: list[dict], patience: int) -> int | None:
    """The epoch where early stopping with `patience` would end the run (None: never)."""
    best, bad = float("inf"), 0
    for r in hist:
        if r["val_loss"] < best:
            best, bad = r["val_loss"], 0
        else:
            bad += 1
            if bad >= patience:
                return r["epoch"]
    return None


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    seeds = 1 if args.quick else args.seeds
    common = dict(
        optimizer="adam",
        lr=1e-3,
        schedule="constant",
        batch_size=32,
        augment=False,
        val_fraction=0.4,
        plot=False,
        epochs=2 if args.quick else args.epochs,
        limit_train_batches=4 if args.quick else None,
    )
    results, total = [], 0.0
    runs_to_do = settings(args)
    if args.quick:  # a smoke run: baseline (LeNet) and the dropout pair, three compilations
        runs_to_do = [runs_to_do[0], *runs_to_do[-2:]]
    for i, (label, overrides) in enumerate(runs_to_do):
        runs = []
        for seed in range(seeds):
            config = C.base_config(args, seed=seed, **{**common, **overrides})
            data = C.build_data(config)
            workdir = os.path.join(args.outdir, "runs", f"{i}_seed{seed}")
            _, seconds = C.timed(C.run, config, workdir, data, verbose=args.verbose)
            total += seconds
            hist = C.history(workdir)
            final_epoch, final = C.evaluate_checkpoint(config, workdir, data, "latest", "test")
            best_epoch, best = C.evaluate_checkpoint(config, workdir, data, "best_loss", "test")
            runs.append(
                dict(
                    seed=seed,
                    test_acc_final=final["accuracy"],
                    test_acc_best_loss=best["accuracy"],
                    best_loss_epoch=best_epoch,
                    final_epoch=final_epoch,
                    stop_epoch=stop_epoch(hist, PATIENCE),
                    train_loss=[r["train_loss"] for r in hist],
                    val_loss=[r["val_loss"] for r in hist],
                    val_accuracy=[r["val_accuracy"] for r in hist],
                    seconds=round(seconds, 1),
                )
            )
            print(
                f"{label:28s} seed {seed}: test acc final {final['accuracy']:.4f} "
                f"best-val-loss (epoch {best_epoch}) {best['accuracy']:.4f} ({seconds:.1f}s)",
                flush=True,
            )
        results.append(dict(setting=label, model=config.model, runs=runs))

    rows = []
    for r in results:
        runs = r["runs"]
        rows.append(
            [
                r["setting"],
                r["model"],
                C.pm([x["test_acc_final"] for x in runs]),
                C.pm([x["test_acc_best_loss"] for x in runs]),
                ", ".join(str(x["best_loss_epoch"]) for x in runs),
                ", ".join(str(x["stop_epoch"] or "-") for x in runs),
                f"{C.mean_std([x['train_loss'][-1] for x in runs])[0]:.3f} / "
                f"{C.mean_std([x['val_loss'][-1] for x in runs])[0]:.3f}",
            ]
        )
    headers = [
        "setting",
        "model",
        "test acc, final epoch %",
        "test acc, best val loss %",
        "best val-loss epoch",
        f"stop epoch (patience {PATIENCE})",
        "final train / val loss",
    ]
    table = C.markdown_table(headers, rows)
    base = results[0]["runs"]
    notes = [
        f"early stopping = the baseline's best-val-loss checkpoint: "
        f"{C.pm([x['test_acc_best_loss'] for x in base])}% vs "
        f"{C.pm([x['test_acc_final'] for x in base])}% with the final weights.",
        f"{args.dataset}, {common['epochs']} epochs, Adam 1e-3, batch 32, no augmentation; "
        + (
            "60/20/20 train/val/test split of the 1,797 digits"
            if args.dataset == "digits"
            else "train split 60/40 into train/val, the dataset's test split"
        )
        + f"; mean ± sample std over {seeds} seed(s).",
        "Loss columns are each run's own training loss (DisturbLabel: on the disturbed labels; "
        "label smoothing: the smoothed loss), so compare them within a row, not across rows.",
        f"Training time of all runs: {total:.0f} s.",
    ]
    title = f"Regularisation against overfitting ({args.dataset})"
    md = C.write_outputs(
        args.outdir,
        "regularization",
        title=title,
        table=table,
        notes=notes,
        results=dict(args=vars(args), results=results),
    )
    png = plot(results, os.path.join(args.outdir, "regularization.png"), title)
    print(f"\n{table}\n")
    print(f"wrote {md}, {png}")
    return dict(results=results, table=table, md=md, png=png)


def plot(results: list[dict], path: str, title: str) -> str:
    """One panel per run (seed 0): train loss solid, val loss dashed, best val-loss epoch marked."""
    plt = C.pyplot()
    n = len(results)
    cols = 3
    fig, axes = plt.subplots(
        -(-n // cols), cols, figsize=(11, 6), constrained_layout=True, sharex=True
    )
    for ax, r in zip(axes.flat, results, strict=False):
        run = r["runs"][0]
        epochs = range(1, len(run["train_loss"]) + 1)
        ax.plot(epochs, run["train_loss"], label="train")
        ax.plot(epochs, run["val_loss"], "--", label="val")
        ax.axvline(run["best_loss_epoch"], color="grey", lw=0.8, ls=":")
        ax.set_title(
            f"{r['setting']}\ntest {100 * run['test_acc_final']:.1f}% final, "
            f"{100 * run['test_acc_best_loss']:.1f}% best-val",
            fontsize=8,
        )
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(title + " (loss; dotted: best val-loss epoch)", fontsize=10)
    fig.savefig(path, dpi=70)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main(sys.argv[1:])
