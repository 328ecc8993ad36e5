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
    torch_models.randomise_batch_norm(model)
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
    lines = proc.stdout.strip().splitlines()
    (line,) = [x for x in lines if x.startswith("max |logit diff| = ")]
    # max |logit diff| = 2.38e-07 (relative 4.1e-08; max |logit| 5.79)
    diff, rel, scale = (
        float(line.split(k)[1].split()[0].rstrip(";)")) for k in ("= ", "relative ", "max |logit| ")
    )
    assert diff <= 1e-4 and rel == pytest.approx(diff / scale, rel=0.1)
    (rule,) = [x for x in lines if x.startswith("within the float64-reference rule: ")]
    assert rule.split(": ")[1].startswith("yes (jax err ") and "torch err" in rule, rule
    assert lines[-1] == "within --atol 0.0001: yes"
    assert "5 classes" in proc.stdout  # read from fc.weight
    logits = np.load(tmp_path / "logits.npy")
    model = torch_models.build("resnet18", num_classes=5, width=4)
    model.load_state_dict(torch.load(tmp_path / "r18.pth", weights_only=True))
    with torch.no_grad():
        np.testing.assert_allclose(
            logits, model.eval()(torch.from_numpy(images)).numpy(), atol=1e-4
        )


def test_python_m_train_verify_is_jaxloss_verify(tmp_path):
    proc = _run("train.verify", ["--help"], tmp_path)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: jaxloss-verify "), proc.stderr
    assert "--retries N" in proc.stdout and "--free-running" in proc.stdout


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
        (["r18.pth", "--model", "resnet18", "--retries", "-1"], "error: --retries must be >= 0"),
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


def _trained_checkpoint(path, *, num_classes):
    """`_checkpoint` with BatchNorm biases drawn too, as in a trained model (not zeros)."""
    state = _checkpoint(path, num_classes=num_classes)
    gen = torch.Generator().manual_seed(1)
    for key, value in state.items():
        if key.endswith(".bias") and not key.startswith("fc."):
            state[key] = torch.randn(value.shape, generator=gen) * 0.1
    torch.save(state, path)


def _verify(argv):
    """`verify.main(argv)` in-process: (status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = verify.main([str(a) for a in argv])
    return status, out.getvalue(), err.getvalue()


TRAIN = ["--model", "resnet18", "--image-size", "32", "--train-image-size", "32"]


def test_verify_train_steps_match_for_sgd_and_adam(tmp_path):
    _trained_checkpoint(tmp_path / "r18.pth", num_classes=5)
    status, out, err = _verify(
        [tmp_path / "r18.pth", *TRAIN, "--train-steps", "2", "--optimizer", "both"]
    )
    assert status == 0 and err == "", (err, out)
    assert "within the float64-reference rule: yes" in out
    assert "training: 2 step(s) per optimizer on batches of 8 random (3, 32, 32) images" in out
    for head in ("sgd (lr 0.001, momentum 0.9): ", "adam (lr 0.0001, eps 0.001): "):
        (line,) = [x for x in out.splitlines() if x.startswith(head)]
        assert line.endswith("comparisons, all within the float64-reference rule"), line
        block = out.split(head, 1)[1].splitlines()
        header = "step loss torch loss flax params rel moments rel stats rel counters result"
        assert " ".join(block[1].split()) == header
        for i, row in enumerate(block[2:4], start=1):
            step, loss_torch, loss_flax, params, moments, stats, counters, result = row.split()
            assert (step, counters, result) == (str(i), "equal", "ok"), row
            assert float(loss_flax) == pytest.approx(float(loss_torch), rel=1e-5)
            assert 0 < float(params) < 1e-4 and float(moments) < 1e-3 and float(stats) < 1e-4
        exact = block[4].strip()
        assert exact.startswith("float64 (Flax in float64 vs torch float64, every step): "), exact
        assert "equal to torch float64" in exact and float(exact.split()[-1]) < 1e-11, exact
    assert "rel: max |flax - torch| / max |torch| of a tensor" in out
    assert "training steps:" not in out  # the full table only on failure or with --verbose


def test_verify_steps_start_from_the_float64_state_by_default(tmp_path):
    """Every step starts from the float64 run's state, so step 3 is as close as step 1."""
    _trained_checkpoint(tmp_path / "r18.pth", num_classes=5)
    status, out, err = _verify(
        [tmp_path / "r18.pth", *TRAIN, "--train-steps", "3", "--optimizer", "adam"]
    )
    assert status == 0 and err == "", (err, out)
    assert (
        "every step from the float64 reference's state, a failing step retried from that state "
        "on up to 2 other batch(es) (--retries)"
    ) in out
    rows = out.split("adam (lr 0.0001, eps 0.001): ", 1)[1].splitlines()[2:5]
    params = [float(r.split()[3]) for r in rows]
    assert all(p < 1e-5 for p in params), rows  # no drift carried over from step to step
    assert [r.split()[-1] for r in rows] == ["ok"] * 3 and "retried:" not in out


def test_verify_free_running_trajectories(tmp_path):
    _trained_checkpoint(tmp_path / "r18.pth", num_classes=5)
    status, out, err = _verify(
        [
            tmp_path / "r18.pth",
            *TRAIN,
            "--train-steps",
            "2",
            "--optimizer",
            "sgd",
            "--free-running",
        ]  # fmt: skip
    )
    assert status == 0 and err == "", (err, out)
    assert "free-running trajectories (--free-running)" in out
    assert _verify([tmp_path / "r18.pth", *TRAIN, "--free-running", "--retries", "1"])[0] == 1


def _flax_step_off_on_calls(monkeypatch, calls):
    """Flax's train step puts its parameters 1e-4 relative off on the given (1-based) calls."""
    import jax

    from train.pytorch import verify_steps

    real, count = verify_steps._train_fn, [0]

    def train_fn(num_classes):
        step = real(num_classes)

        def off(state, batch, key):
            new, metrics = step(state, batch, key)
            count[0] += 1
            if count[0] in calls:
                new = new.replace(params=jax.tree.map(lambda p: p * (1 + 1e-4), new.params))
            return new, metrics

        return off

    monkeypatch.setattr(verify_steps, "_train_fn", train_fn)


def test_a_step_that_fails_on_its_batch_passes_on_a_spare_one(tmp_path, monkeypatch):
    """A kink event follows the batch: step 2 fails on its own, is retried from the same state on a
    spare batch and passes there, and step 3 (from the retry's float64 state) passes too."""
    _trained_checkpoint(tmp_path / "r18.pth", num_classes=5)
    _flax_step_off_on_calls(monkeypatch, {2})
    status, out, err = _verify(
        [tmp_path / "r18.pth", *TRAIN, "--train-steps", "3", "--optimizer", "sgd"]
    )
    assert status == 0 and err == "", (err, out)
    block = out.split("sgd (lr 0.001, momentum 0.9): ", 1)[1].splitlines()
    assert block[0] == "float32: " + block[0].split(": ", 1)[1], block[0]
    assert block[0].endswith("comparisons, all within the float64-reference rule"), block[0]
    assert [" ".join(r.split()[7:]) for r in block[2:5]] == ["ok", "ok (retry 1)", "ok"]
    assert all(float(r.split()[3]) < 1e-5 for r in block[2:5]), block  # the retry's figures
    (retried,) = [x for x in out.splitlines() if x.strip().startswith("retried: ")]
    assert retried.strip().startswith("retried: step 2 on its batch: param/"), retried
    assert "above the floor" in retried or "x torch's" in retried, retried


def test_one_float32_step_failing_on_every_batch_is_tolerated_when_float64_matches(
    tmp_path, monkeypatch
):
    """Step 2's float32 update is off on its batch and both spares, float64 is exact: a note,
    status 0 (what a float32 kink-prone state gives); two such steps are an error."""
    _trained_checkpoint(tmp_path / "r18.pth", num_classes=5)
    _flax_step_off_on_calls(monkeypatch, {2, 3, 4})  # float32 step 2, spare 1, spare 2
    args = [tmp_path / "r18.pth", *TRAIN, "--train-steps", "3", "--optimizer", "sgd"]
    status, out, err = _verify(args)
    assert status == 0 and err == "", (err, out)
    block = out.split("sgd (lr 0.001, momentum 0.9): ", 1)[1].splitlines()
    assert block[0].startswith("float32: ") and block[0].endswith(" FAILED"), block[0]
    assert [" ".join(r.split()[7:]) for r in block[2:5]] == ["ok", "FAIL (2 retries)", "ok"]
    retried = [x.strip() for x in out.splitlines() if x.strip().startswith("retried: ")]
    assert [r.split(":")[1] for r in retried] == [
        " step 2 on its batch",
        " step 2 on spare batch 1",
    ]
    (note,) = [x.strip() for x in out.splitlines() if x.strip().startswith("note: ")]
    assert note.startswith("note: float32 step 2 failed on every batch tried while float64 "), note
    assert "float64 (Flax in float64 vs torch float64, every step): " in out
    assert "equal to torch float64" in out

    _flax_step_off_on_calls(monkeypatch, {2, 3, 4, 5, 6, 7})  # steps 2 and 3 on every batch
    status, out, err = _verify(args)
    assert status == 1 and err.startswith("error: sgd float32 step 2 param/"), err


def test_a_flax_step_off_in_float64_too_is_a_port_error(tmp_path, monkeypatch):
    """Every Flax step (float32 and float64) 1e-4 off: the float64 comparison fails from step 1."""
    _trained_checkpoint(tmp_path / "r18.pth", num_classes=5)
    _flax_step_off_on_calls(monkeypatch, set(range(1, 100)))
    status, out, err = _verify(
        [tmp_path / "r18.pth", *TRAIN, "--train-steps", "2", "--optimizer", "adam"]
    )
    assert status == 1 and err.count("\n") == 1, err
    assert (
        err.startswith("error: adam float64 step 1 param/") and "differs from torch float64" in err
    )
    assert "float64 training steps: " in out and " FAILED" in out


def test_verify_train_steps_fail_on_a_mismatched_optimizer(tmp_path, monkeypatch):
    """torch's SGD (float32 and float64) steps 1% further than Flax's: step 1 must fail."""
    _trained_checkpoint(tmp_path / "r18.pth", num_classes=5)
    sgd = torch.optim.SGD
    monkeypatch.setattr(
        torch.optim,
        "SGD",
        lambda params, lr, momentum: sgd(params, lr=lr * 1.01, momentum=momentum),
    )
    status, out, err = _verify(
        [tmp_path / "r18.pth", *TRAIN, "--train-steps", "1", "--optimizer", "sgd"]
    )
    assert status == 1  # float64 differs from step 1: a port error, not float32 rounding
    assert err.count("\n") == 1 and err.startswith("error: sgd float64 step 1 param/"), err
    assert "differs from torch float64: " in err
    assert "training steps: " in out and " FAILED" in out  # the full report is printed
    row = out.split("sgd (lr 0.001, momentum 0.9): ")[1].splitlines()[2]
    assert row.endswith("FAIL (2 retries)"), row  # a port error fails on the spare batches too


def test_verify_names_the_first_diverging_layer(tmp_path, monkeypatch):
    """A Flax port with one weight 0.1% off fails the rule; the layer report names the layer."""
    from train.pytorch import port

    _checkpoint(tmp_path / "r18.pth", num_classes=5)
    from_torch = port.from_torch

    def off_by_a_bit(state_dict, *args, **kwargs):
        state_dict = dict(state_dict)
        state_dict["layer2.0.conv2.weight"] = state_dict["layer2.0.conv2.weight"] * 1.001
        return from_torch(state_dict, *args, **kwargs)

    monkeypatch.setattr(port, "from_torch", off_by_a_bit)
    status, out, err = _verify([tmp_path / "r18.pth", "--model", "resnet18", "--image-size", "32"])
    assert status == 1
    assert "within the float64-reference rule: no (" in out
    assert "layers (eval mode): " in out  # the per-layer report
    assert err.count("\n") == 1 and err.startswith(
        "error: the Flax logits fail the float64-reference rule (first diverging: "
        "layer layer2.0.conv2, max |diff| "
    ), err


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
