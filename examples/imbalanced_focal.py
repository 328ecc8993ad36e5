r"""Seed 003: one class cut to a fraction of its training images; cross-entropy vs focal loss.

Runs, each over several seeds (LeNet, Adam 1e-3, constant LR, no augmentation, as the post):

1. CE on the balanced training set;
2. CE with class `--cut-class` (default 6) cut to `--fraction` of its training images;
3. focal loss (gamma 2) with per-class alpha (`--alpha` on the cut class, 1 on the others), same
   cut;
4. class-weighted CE, same cut: focal with gamma 0 and the same alpha, i.e. `alpha[y] * CE`
   averaged over the batch (the seed's weighting, not divided by the sum of the weights as torch's
   weighted CE);
5. label smoothing 0.1 (the seeds' loss), same cut.

Each run is scored on a held-out test split with the final weights (the post evaluates after the
last epoch): accuracy, recall of the cut class (the post's "digit-6 accuracy") and macro-F1, as
mean ± std over the seeds. Writes `imbalanced_focal.md/.json` and `imbalanced_focal.png` to
--outdir.

    python examples/imbalanced_focal.py                       # digits, 1/10 of the 6s, 3 seeds
    python examples/imbalanced_focal.py --dataset mnist --data-dir ~/tensorflow_datasets \
        --fraction 0.01
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import _common as C


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    C.add_common_flags(p, outdir="runs/examples/imbalanced_focal")
    p.add_argument("--fraction", type=float, default=0.1, help="kept fraction of the cut class")
    p.add_argument("--cut-class", type=int, default=6, help="the class that is cut")
    p.add_argument("--alpha", type=float, default=100.0, help="focal alpha on the cut class")
    p.add_argument("--gamma", type=float, default=2.0, help="focal gamma")
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (0, 1, ...)")
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="default 30 on digits (1,437 images), 5 on mnist/cifar10 (the post)",
    )
    p.add_argument("--batch-size", type=int, default=None, help="default 32 digits, 128 otherwise")
    p.add_argument("--model", default="lenet", help="a train.models name")
    return p.parse_args(argv)


def settings(args: argparse.Namespace, num_classes: int) -> list[tuple[str, dict]]:
    """`(label, Config overrides)` of the compared runs."""
    cut = (args.cut_class, args.fraction)
    alpha = tuple(args.alpha if c == args.cut_class else 1.0 for c in range(num_classes))
    return [
        ("CE, balanced", dict(loss="ce")),
        ("CE, cut", dict(loss="ce", imbalance=cut)),
        (
            f"focal γ={args.gamma:g} α={args.alpha:g}, cut",
            dict(loss="focal", focal_gamma=args.gamma, focal_alpha=alpha, imbalance=cut),
        ),
        (
            f"weighted CE α={args.alpha:g}, cut",
            dict(loss="focal", focal_gamma=0.0, focal_alpha=alpha, imbalance=cut),
        ),
        (
            "label smoothing 0.1, cut",
            dict(loss="label_smoothing", label_smoothing=0.1, imbalance=cut),
        ),
    ]


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    digits = args.dataset == "digits"
    epochs = args.epochs or (30 if digits else 5)
    batch = args.batch_size or (32 if digits else 128)
    seeds = 1 if args.quick else args.seeds
    common = dict(
        model=args.model,
        width=6,
        optimizer="adam",
        lr=1e-3,
        schedule="constant",
        epochs=2 if args.quick else epochs,
        batch_size=batch,
        augment=False,
        val_fraction=0.4 if digits else 0.1,
        plot=False,
        limit_train_batches=5 if args.quick else None,
    )
    num_classes = 10
    results = []
    total = 0.0
    runs = settings(args, num_classes)
    if args.quick:  # a smoke run: the two rows that matter, two compilations
        runs = runs[1:3]
    for label, overrides in runs:
        per_seed = []
        for seed in range(seeds):
            config = C.base_config(args, seed=seed, **common, **overrides)
            data = C.build_data(config)
            workdir = os.path.join(args.outdir, "runs", f"{len(results)}_seed{seed}")
            _, seconds = C.timed(C.run, config, workdir, data, verbose=args.verbose)
            epoch, m = C.evaluate_checkpoint(config, workdir, data, "latest", "test")
            total += seconds
            per_seed.append(
                dict(
                    seed=seed,
                    epoch=epoch,
                    accuracy=m["accuracy"],
                    f1=m["f1"],
                    recall_cut=m["recall"][args.cut_class],
                    train_size=data.train_size,
                    test_size=data.test_size,
                    seconds=round(seconds, 1),
                )
            )
            print(
                f"{label:32s} seed {seed}: acc {m['accuracy']:.4f} recall[{args.cut_class}] "
                f"{m['recall'][args.cut_class]:.4f} macro-F1 {m['f1']:.4f} ({seconds:.1f}s)",
                flush=True,
            )
        results.append(dict(setting=label, runs=per_seed))

    headers = [
        "setting",
        "train images",
        "accuracy %",
        f"recall of class {args.cut_class} %",
        "macro-F1 %",
    ]
    rows = [
        [
            r["setting"],
            r["runs"][0]["train_size"],
            C.pm([x["accuracy"] for x in r["runs"]]),
            C.pm([x["recall_cut"] for x in r["runs"]]),
            C.pm([x["f1"] for x in r["runs"]]),
        ]
        for r in results
    ]
    table = C.markdown_table(headers, rows)
    test_size = results[0]["runs"][0]["test_size"]
    notes = [
        f"{args.dataset}, class {args.cut_class} cut to {args.fraction:g} of its training images "
        f"(balanced validation and test sets); {args.model}, Adam 1e-3, batch {batch}, "
        f"{common['epochs']} epochs, no augmentation.",
        f"Test split of {test_size} images"
        + (" (half of a 40% hold-out: digits has no test split)" if digits else "")
        + f"; final-epoch weights; mean ± sample std over {seeds} seed(s).",
        f"Training time of all runs: {total:.0f} s.",
    ]
    title = f"Class {args.cut_class} cut to {args.fraction:g}: CE vs focal loss ({args.dataset})"
    md = C.write_outputs(
        args.outdir,
        "imbalanced_focal",
        title=title,
        table=table,
        notes=notes,
        results=dict(args=vars(args), results=results),
    )
    png = plot(results, os.path.join(args.outdir, "imbalanced_focal.png"), args.cut_class, title)
    print(f"\n{table}\n")
    print(f"wrote {md}, {png}")
    return dict(results=results, table=table, md=md, png=png)


def plot(results: list[dict], path: str, cut_class: int, title: str) -> str:
    """Grouped bars: accuracy, cut-class recall, macro-F1 per setting, std as error bars."""
    import numpy as np

    plt = C.pyplot()
    metrics = [
        ("accuracy", "accuracy"),
        ("recall_cut", f"recall of class {cut_class}"),
        ("f1", "macro-F1"),
    ]
    x = np.arange(len(results))
    width = 0.8 / len(metrics)
    fig, ax = plt.subplots(figsize=(9, 4.2), constrained_layout=True)
    for i, (key, name) in enumerate(metrics):
        stats = [C.mean_std([r[key] for r in res["runs"]]) for res in results]
        ax.bar(
            x + (i - 1) * width,
            [100 * m for m, _ in stats],
            width,
            yerr=[100 * s for _, s in stats],
            capsize=3,
            label=name,
        )
    ax.set_xticks(x, [r["setting"] for r in results], rotation=15, fontsize=8)
    ax.set_ylabel("% on the test split")
    ax.set_ylim(0, 105)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(axis="y", alpha=0.3)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main(sys.argv[1:])
