"""Seed 000 end to end: a torch ResNet-18 -> `jaxloss-train --init-from --freeze-backbone` -> torch.

torch writes a torchvision-layout ResNet-18 state_dict (width 4, random weights and BatchNorm
statistics, every `num_batches_tracked` 7, a 3-class head); the trainer fine-tunes it on a tiny
RGB ImageFolder (seed 000's preset: focal loss, SGD lr 1e-3 momentum 0.9) for 2 epochs with the
backbone frozen and exports the best-by-val-loss state. In torch the export must load strictly and
hold exactly what torch's own fine-tuning loop (`requires_grad=False` on the backbone, the model in
train mode) would have left: every backbone weight bit for bit, running statistics moved, every
`num_batches_tracked` 7 + the train steps taken up to the exported epoch, `fc` moved. torch's
eval-mode logits of the export equal the Flax logits of the trainer's own checkpoint of that epoch
within 1e-4 absolute (float32 logits of order 1; measured ~1e-7).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import torch
import torch_models
from flax import nnx
from PIL import Image

from train import checkpoints, step
from train import workdir as run_dir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ("ant", "bee", "cat")
SIZE, BATCH, EPOCHS, TRACKED = 32, 4, 2, 7
TRAIN_PER_CLASS, VAL_PER_CLASS = 6, 2  # 18 training images: 4 steps of 4 per epoch


def _imagefolder(root) -> None:
    rng = np.random.default_rng(0)
    for split, count in (("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS)):
        for c, name in enumerate(CLASSES):
            os.makedirs(root / split / name)
            for i in range(count):
                pixels = rng.normal(60 + 60 * c, 30, (SIZE, SIZE, 3)).clip(0, 255)
                Image.fromarray(pixels.astype(np.uint8), "RGB").save(
                    root / split / name / f"{i}.png"
                )


def _pretrained(path) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = torch_models.build("resnet18", num_classes=len(CLASSES), width=4, in_channels=3)
    torch_models.randomise_batch_norm(model, bias=True, tracked=TRACKED)
    torch.save(model.state_dict(), path)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _flax_logits(run, images: np.ndarray, epoch: int) -> np.ndarray:
    """Eval-mode logits of the trainer's best-by-val-loss checkpoint (epoch `epoch`)."""
    config = run_dir.read_config(str(run))
    target = jax.eval_shape(
        lambda: step.create_train_state(
            config,
            num_classes=len(CLASSES),
            image_shape=(SIZE, SIZE, 3),
            key=jax.random.key(0, impl="rbg"),
        )
    )
    ckpt = checkpoints.Checkpoints(run / "checkpoints")
    try:
        assert ckpt.best_step("best_loss") == epoch
        state = ckpt.restore_best("best_loss", target)
    finally:
        ckpt.close()
    model = nnx.merge(target.graphdef, state.params, state.batch_stats)
    return np.asarray(model(images.transpose(0, 2, 3, 1), train=False))


def test_seed000_fine_tune_export_is_what_torch_would_hold(tmp_path):
    _imagefolder(tmp_path / "data")
    original = _pretrained(tmp_path / "pretrained.pth")
    out, run = tmp_path / "finetuned.pth", tmp_path / "run"
    args = [
        *("--preset", "imagefolder_seed000", "--data-dir", str(tmp_path / "data")),
        *("--image-size", str(SIZE), "--batch-size", str(BATCH), "--epochs", str(EPOCHS)),
        *("--init-from", str(tmp_path / "pretrained.pth"), "--freeze-backbone"),
        *("--export-torch", str(out), "--workdir", str(run), "--no-plot"),
        *("--cache-dir", str(tmp_path / "cache")),
    ]
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-m", "train", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    assert "width 4 from the checkpoint" in proc.stdout and "replacing" not in proc.stdout
    epoch = int(re.search(r"exported the model \(best val loss, epoch (\d+)\)", proc.stdout)[1])
    with open(run / "metrics.jsonl") as f:
        history = [json.loads(line) for line in f]
    assert len(history) == EPOCHS
    steps = sum(r["train_count"] for r in history[:epoch]) // BATCH
    assert steps == epoch * (len(CLASSES) * TRAIN_PER_CLASS // BATCH)  # full batches only

    exported = torch.load(out, weights_only=True)
    model = torch_models.build("resnet18", num_classes=len(CLASSES), width=4, in_channels=3)
    model.load_state_dict(exported, strict=True)
    assert list(exported) == list(original)  # torchvision's names and order
    for key, value in original.items():
        got = exported[key]
        assert got.dtype == value.dtype and got.shape == value.shape, key
        if key.endswith("num_batches_tracked"):  # torch counts every train-mode forward
            assert int(got) == TRACKED + steps, key
        elif key.endswith(("running_mean", "running_var")):  # train-mode BN updates them
            assert not torch.equal(got, value), key
        elif key.startswith("fc."):  # the only trained parameters
            assert (got - value).abs().max() > 1e-6, key
        else:  # frozen: bit for bit
            assert torch.equal(got, value), key

    images = np.random.default_rng(1).normal(size=(5, 3, SIZE, SIZE)).astype(np.float32)
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(images)).numpy()
    assert np.abs(expected).max() > 0.1
    np.testing.assert_allclose(_flax_logits(run, images, epoch), expected, atol=1e-4, rtol=0)
