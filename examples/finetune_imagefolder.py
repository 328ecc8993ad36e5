r"""Seed 000: fine-tune a torchvision-layout ResNet-18 on an ImageFolder with focal loss.

The seed's setup: SGD lr 0.001 momentum 0.9, StepLR(step_size=7, gamma=0.1), softmax focal loss
alpha 0.25 gamma 2, random-resized-crop + flip, keep the best validation-accuracy weights. The
trainer checkpoints the best model by validation loss and by validation macro-F1; with two balanced
classes this script reports the best validation *accuracy* epoch from metrics.jsonl (the seed's
criterion) next to the epochs of the two checkpoints.

Without `--data-dir` it generates a synthetic two-class folder (circles vs squares,
`make_synthetic_imagefolder.py`) under --outdir, so it runs offline. The seed fine-tunes ImageNet
weights; here the network starts from random weights unless the trainer supports `--init-from`
(a torch state_dict checkpoint), which this script then passes through. Defaults are scaled for a
2-core CPU (64x64 images, width 16, 25 epochs as the seed); `--image-size 224 --width 64` is the
seed's network input and size.

    python examples/finetune_imagefolder.py
    python examples/finetune_imagefolder.py --data-dir hymenoptera_data \
        --image-size 224 --width 64 --epochs 25
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
from collections.abc import Sequence

import _common as C
import make_synthetic_imagefolder

from train.config import Config

_FIELDS = {f.name for f in dataclasses.fields(Config)}
INIT_FROM = "init_from" in _FIELDS  # the trainer's torch-checkpoint import, when it has one
FREEZE = "freeze_backbone" in _FIELDS


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    C.add_common_flags(
        p,
        outdir="runs/examples/finetune_imagefolder",
        datasets=("imagefolder", "digits", "mnist", "cifar10"),
        data_dir_help="ImageFolder root with train/<class>/ and val/<class>/ "
        "(default: a generated circles-vs-squares folder); TFDS data "
        "dir for mnist/cifar10",
    )
    p.add_argument("--image-size", type=int, default=64, help="crop side (the seed: 224)")
    p.add_argument("--width", type=int, default=16, help="ResNet-18 base width (the seed: 64)")
    p.add_argument("--epochs", type=int, default=25, help="epochs (the seed: 25)")
    p.add_argument("--batch-size", type=int, default=16, help="batch size")
    p.add_argument("--lr", type=float, default=1e-3, help="SGD learning rate (the seed: 0.001)")
    p.add_argument(
        "--no-augment",
        dest="augment",
        action="store_false",
        help="no random-resized-crop/flip (the seed augments)",
    )
    p.add_argument(
        "--train-images",
        type=int,
        default=200,
        help="generated training images per class (no --data-dir)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of init, shuffling, augmentation")
    if INIT_FROM:
        p.add_argument(
            "--init-from",
            default=None,
            help="torch checkpoint (state_dict) to start from, passed to the trainer "
            "(jaxloss-train --init-from); the width comes from the checkpoint",
        )
    if FREEZE:
        p.add_argument(
            "--freeze-backbone",
            action="store_true",
            help="with --init-from: train only the classifier head",
        )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    data_dir = args.data_dir
    if args.dataset == "imagefolder" and data_dir is None:
        data_dir = os.path.join(args.outdir, "synthetic_shapes")
        if not os.path.isdir(os.path.join(data_dir, "val")):
            make_synthetic_imagefolder.make_imagefolder(
                data_dir,
                train=24 if args.quick else args.train_images,
                val=8 if args.quick else 50,
                size=32 if args.quick else args.image_size,
            )
    extra = {"init_from": args.init_from} if INIT_FROM and args.init_from else {}
    if extra and FREEZE and args.freeze_backbone:
        extra["freeze_backbone"] = True
    config = Config(
        dataset=args.dataset,
        data_dir=data_dir,
        cache_dir=args.cache_dir,
        model="resnet18",
        width=4 if args.quick else args.width,
        image_size=32 if args.quick else args.image_size,
        optimizer="sgd",
        lr=args.lr,
        momentum=0.9,
        augment=args.augment,
        schedule="step",
        step_size=7,
        gamma=0.1,
        loss="focal",
        focal_alpha=(0.25,),
        focal_gamma=2.0,
        epochs=2 if args.quick else args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        limit_train_batches=2 if args.quick else None,
        **extra,
    )
    workdir = os.path.join(args.outdir, "run")
    data = C.build_data(config, test_split=False)
    _, seconds = C.timed(C.run, config, workdir, data, verbose=True)
    hist = C.history(workdir)
    best_acc = max(hist, key=lambda r: r["val_accuracy"])  # first epoch reaching the maximum
    ckpt_epochs = C.checkpoint_epochs(workdir)

    headers = ["epoch", "lr", "train loss", "train acc %", "val loss", "val acc %", "val F1 %"]
    rows = [
        [
            r["epoch"],
            f"{r['lr']:.0e}",
            f"{r['train_loss']:.4f}",
            f"{100 * r['train_accuracy']:.1f}",
            f"{r['val_loss']:.4f}",
            f"{100 * r['val_accuracy']:.1f}",
            f"{100 * r['val_f1']:.1f}",
        ]
        for r in hist
    ]
    table = C.markdown_table(headers, rows)
    source = (
        "generated circles-vs-squares folder"
        if args.data_dir is None and args.dataset == "imagefolder"
        else f"{args.dataset} {args.data_dir or ''}"
    )
    init = (
        f"initialised from {args.init_from} (its width)"
        + (", backbone frozen" if extra.get("freeze_backbone") else "")
        if extra
        else f"width {config.width}, random init (no ImageNet weights)"
    )
    augment = "random-resized-crop + flip" if config.augment else "no augmentation"
    notes = [
        f"best validation accuracy {100 * best_acc['val_accuracy']:.1f}% at epoch "
        f"{best_acc['epoch']} (from metrics.jsonl); the trainer's checkpoints: best val loss at "
        f"epoch {ckpt_epochs['best_loss']}, best val macro-F1 at epoch {ckpt_epochs['best_f1']}.",
        f"{source}: {data.train_size} train / {data.val_size} val images, "
        f"{config.image_size}x{config.image_size}; ResNet-18 (torchvision layout), {init}; "
        f"SGD {config.lr:g} momentum 0.9, StepLR(7, 0.1), focal alpha 0.25 gamma 2, {augment}, "
        f"batch {config.batch_size}, {config.epochs} epochs, seed {config.seed}.",
        f"Training time: {seconds:.0f} s.",
    ]
    md = C.write_outputs(
        args.outdir,
        "finetune_imagefolder",
        title="Fine-tuning a ResNet-18 with focal loss (seed 000)",
        table=table,
        notes=notes,
        results=dict(
            args=vars(args),
            history=hist,
            best_val_accuracy_epoch=best_acc["epoch"],
            checkpoint_epochs=ckpt_epochs,
        ),
    )
    png = os.path.join(args.outdir, "finetune_imagefolder.png")
    shutil.copyfile(os.path.join(workdir, "curves.png"), png)
    print(f"\n{table}\n\n" + "\n".join(notes))
    print(f"wrote {md}, {png}")
    return dict(
        history=hist,
        table=table,
        md=md,
        png=png,
        best_val_accuracy_epoch=best_acc["epoch"],
        checkpoint_epochs=ckpt_epochs,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
