"""`jaxloss-train --init-from/--freeze-backbone/--export-torch` and `jaxloss-verify`.

Subprocess runs on tiny inputs: a width-4 torchvision-layout ResNet-18 with random weights saved by
torch, the embedded digits (8x8, 1 channel) for fine-tuning.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch_models

from train import optim
from train.pytorch import verify

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(module, args, cwd, timeout=240):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _checkpoint(path, *, num_classes, in_channels=3, seed=0):
    torch.manual_seed(seed)
    model = torch_models.build(
        "resnet18", num_classes=num_classes, width=4, in_channels=in_channels
    )
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
    torch.save(model.state_dict(), path)
    return model.state_dict()


def test_verify_prints_the_difference_and_saves_logits(tmp_path):
    _checkpoint(tmp_path / "r18.pth", num_classes=5)
    images = np.random.default_rng(0).normal(size=(3, 3, 32, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", images)
    proc = _run(
        "train.pytorch.verify",
        [
            str(tmp_path / "r18.pth"),
            "--model",
            "resnet18",
            "--images",
            str(tmp_path / "x.npy"),
            "--save-logits",
            str(tmp_path / "logits.npy"),
            "--atol",
            "1e-4",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("max |logit diff| = ")
    assert float(last.split("=")[1]) <= 1e-4
    assert "5 classes" in proc.stdout  # read from fc.weight
    logits = np.load(tmp_path / "logits.npy")
    model = torch_models.build("resnet18", num_classes=5, width=4)
    model.load_state_dict(torch.load(tmp_path / "r18.pth", weights_only=True))
    with torch.no_grad():
        np.testing.assert_allclose(
            logits, model.eval()(torch.from_numpy(images)).numpy(), atol=1e-4
        )


@pytest.mark.parametrize(
    "args,message",
    [
        (["missing.pth", "--model", "resnet18"], "error: cannot read missing.pth: no such file"),
        (
            ["r18.pth", "--model", "resnet34"],
            "error: the state_dict does not fit the model "
            "(torchvision layout): missing keys: layer1.2.conv1",
        ),
        (["r18.pth", "--model", "resnet18_cifar"], "error: not a cifar-layout ResNet state_dict"),
        (["r18.pth", "--model", "resnet18", "--num-classes", "7"], "error: --num-classes 7 but"),
        (["junk.pth", "--model", "resnet18"], "error: cannot read junk.pth as a torch state_dict"),
    ],
)
def test_verify_errors_are_one_line(tmp_path, args, message):
    _checkpoint(tmp_path / "r18.pth", num_classes=5)
    (tmp_path / "junk.pth").write_bytes(b"junk")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            status = verify.main(args)
    finally:
        os.chdir(cwd)
    assert status == 1
    assert err.getvalue().count("\n") == 1 and err.getvalue().startswith(message), err.getvalue()


def test_freeze_backbone_zeroes_every_update_but_the_head():
    import jax
    import jax.numpy as jnp
    from flax import nnx

    params = nnx.State(
        {
            "fc": {"kernel": nnx.Param(jnp.ones((2, 2)))},
            "layer1": {0: {"conv1": {"kernel": nnx.Param(jnp.ones((1, 1, 2, 2)))}}},
        }
    )
    tx = optim.freeze_backbone(optim.create_optimizer("adam", learning_rate=0.1, weight_decay=0.5))
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    assert np.all(np.asarray(updates["fc"]["kernel"].get_value()) < 0)
    assert np.all(np.asarray(updates["layer1"][0]["conv1"]["kernel"].get_value()) == 0)
    state = tx.init(params)
    assert optim.get_learning_rate(optim.set_learning_rate(state, 0.01)) == np.float32(0.01)


def test_cli_fine_tunes_from_a_torch_checkpoint_and_exports(tmp_path):
    original = _checkpoint(tmp_path / "pretrained.pth", num_classes=5, in_channels=1)
    out = tmp_path / "finetuned.pth"
    args = [
        "--model",
        "resnet18",
        "--init-from",
        str(tmp_path / "pretrained.pth"),
        "--freeze-backbone",
        "--export-torch",
        str(out),
        "--epochs",
        "1",
        "--limit-train-batches",
        "2",
        "--batch-size",
        "32",
        "--optimizer",
        "sgd",
        "--lr",
        "0.1",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--workdir",
        str(tmp_path / "run"),
        "--no-plot",
    ]
    proc = _run("train", args, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "replacing the classifier head (5 -> 10 classes)" in proc.stdout
    assert "width 4 from the checkpoint" in proc.stdout
    assert f"torch state_dict written to {out}" in proc.stdout
    exported = torch.load(out, weights_only=True)
    model = torch_models.build("resnet18", num_classes=10, width=4, in_channels=1)
    model.load_state_dict(exported, strict=True)  # same names and shapes as torchvision's
    assert list(exported) == list(model.state_dict())
    for key, value in original.items():
        if key.startswith("fc."):
            continue
        if key.endswith(("running_mean", "running_var")):  # train-mode BatchNorm still updates
            assert not torch.equal(exported[key], value), key
        elif key.endswith("num_batches_tracked"):
            assert int(exported[key]) == 2, key  # two train steps
        else:  # frozen: bit-identical to the checkpoint
            assert torch.equal(exported[key], value), key
    assert exported["fc.weight"].shape == (10, 32)
