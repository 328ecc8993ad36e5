"""Verify your own port: a torch loss and model, their JAX / Flax NNX ports, checked with parity.

A template to copy. The torch side is what you wrote in PyTorch (here a soft Dice loss and a small
CNN); the JAX side is your port. `jaxloss.parity` checks them and prints a report for each:

1. the loss: values and gradients, float32 and float64, several random draws (`parity.compare`);
2. the model layer by layer, eval mode and train mode (`parity.compare_layers`);
3. five training steps of model + loss with SGD (momentum 0.9) against a float64 torch loop:
   loss, parameters, momentum buffers, BatchNorm running statistics (`parity.compare_steps`).

Then two lessons, ports that look right and are not:

4. flax's own `nnx.BatchNorm` updates its running variance with the biased batch variance
   (torch: unbiased): the same five steps flag ``running_var`` at step 1;
5. `optax.adam` computes its bias correction ``1 - b2**t`` in float32 from ``b2 = 0.999``
   rounded to float32 (1.3e-5 off), torch in Python floats: its updates differ from torch's by
   7e-6 (relative), tens of times torch's own float32 rounding, and the report says where.
   (`train.adam.scale_by_torch_adam` computes it as torch does; the trainer uses it.)

The Reference rule (float32) needs no tolerance: JAX's error against float64 torch must be no
worse than twice torch float32's own. Exit status 0 when checks 1-3 pass and lesson 4 is flagged.

    python examples/verify_your_port.py [--quick] [--outdir DIR]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from collections.abc import Sequence

import _common  # noqa: F401 - makes `train` importable from a plain clone
import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import torch.nn.functional as F
from flax import nnx

from jaxloss import parity
from train.batch_norm import BatchNorm  # torch's BatchNorm (unbiased running_var, counter) in NNX


# --- Your torch code: replace dice_loss_torch and TorchNet with yours. ---------------------------
def dice_loss_torch(logits, labels, smooth=1.0):
    """Soft Dice, mean over classes: logits (N, C, ...) and integer labels (N, ...)."""
    probs = torch.softmax(logits, dim=1)
    onehot = F.one_hot(labels, logits.shape[1]).movedim(-1, 1).to(probs.dtype)
    dims = (0, *range(2, logits.ndim))  # every axis but the class axis
    inter, total = (probs * onehot).sum(dims), probs.sum(dims) + onehot.sum(dims)
    return (1 - (2 * inter + smooth) / (total + smooth)).mean()


class TorchNet(torch.nn.Module):
    # No conv bias before a BatchNorm (torchvision's habit): its gradient is exactly zero, so its
    # float32 value is rounding noise that no rule can compare fairly (Adam steps it by lr).
    def __init__(self, in_channels=3, width=8, classes=4, p=0.5):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(width)
        self.conv2 = torch.nn.Conv2d(width, 2 * width, 3, padding=1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(2 * width)
        self.dropout = torch.nn.Dropout(p)
        self.fc = torch.nn.Linear(2 * width, classes)

    def forward(self, x):  # NCHW
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(self.dropout(x.mean((2, 3))))


# --- Your port: the same attribute names, so torch_to_nnx maps the weights with no rename. -------
def dice_loss(logits, labels, smooth=1.0):
    """Soft Dice, mean over classes: logits (N, ..., C) (channels last) and labels (N, ...)."""
    probs = jax.nn.softmax(logits, axis=-1)
    onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=probs.dtype)
    axes = tuple(range(logits.ndim - 1))
    inter, total = (probs * onehot).sum(axes), probs.sum(axes) + onehot.sum(axes)
    return (1 - (2 * inter + smooth) / (total + smooth)).mean()


class NnxNet(nnx.Module):
    def __init__(self, in_channels=3, width=8, classes=4, p=0.5, *, norm=BatchNorm, rngs):
        self.conv1 = nnx.Conv(in_channels, width, (3, 3), padding=1, use_bias=False, rngs=rngs)
        self.bn1 = norm(width, rngs=rngs)
        self.conv2 = nnx.Conv(width, 2 * width, (3, 3), padding=1, use_bias=False, rngs=rngs)
        self.bn2 = norm(2 * width, rngs=rngs)
        self.dropout = nnx.Dropout(p, rngs=rngs)
        self.fc = nnx.Linear(2 * width, classes, rngs=rngs)

    def __call__(self, x, *, train=False):  # NHWC
        x = nnx.relu(self.bn1(self.conv1(x), use_running_average=not train))
        x = nnx.max_pool(x, (2, 2), strides=(2, 2))
        x = nnx.relu(self.bn2(self.conv2(x), use_running_average=not train))
        return self.fc(self.dropout(x.mean((1, 2)), deterministic=not train))


def flax_batch_norm(num_features, *, rngs):
    """Lesson 4: flax's BatchNorm, set up like torch's (flax momentum 0.9 = torch's 0.1)."""
    return nnx.BatchNorm(num_features, momentum=0.9, epsilon=1e-5, use_fast_variance=False,
                         rngs=rngs)  # fmt: skip


def port(torch_model, p, norm=BatchNorm):
    """The NNX model holding the torch model's weights and running statistics."""
    # Any key will do, the weights come from torch; "rbg" keys compile much faster on a CPU.
    model = NnxNet(p=p, norm=norm, rngs=nnx.Rngs(jax.random.key(0, impl="rbg")))
    parity.torch_to_nnx(torch_model.state_dict(), model)  # rename={...} where names differ
    return model


# --- Training loops: one optimizer step per batch, returning the state that is compared. --------
def torch_loop(model, make_optimizer, dtype):
    model = copy.deepcopy(model).to(dtype).train()
    opt = make_optimizer(model.parameters())

    def step(batch):
        x, y = batch
        opt.zero_grad()
        loss = dice_loss_torch(model(torch.tensor(x, dtype=dtype)), torch.tensor(y))
        loss.backward()
        opt.step()
        return parity.torch_training_state(model, opt, loss=loss)

    return step


def jax_loop(model, tx):
    model = nnx.clone(model)
    opt_state = tx.init(nnx.state(model, nnx.Param))

    @nnx.jit
    def train_step(model, opt_state, x, y):
        loss, grads = nnx.value_and_grad(lambda m: dice_loss(m(x, train=True), y))(model)
        params = nnx.state(model, nnx.Param)
        updates, opt_state = tx.update(grads, opt_state, params)
        nnx.update(model, optax.apply_updates(params, updates))
        return loss, opt_state

    def step(batch):
        nonlocal opt_state
        x, y = batch
        x = jnp.asarray(parity.layout.nchw_to_nhwc(x), jnp.float32)
        loss, opt_state = train_step(model, opt_state, x, jnp.asarray(y))
        return parity.nnx_training_state(model, opt_state, loss=loss)

    return step


# The same optimizer twice: (optax, torch.optim given the parameters).
SGD = (optax.sgd(0.1, momentum=0.9), lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9))
ADAM = (optax.adam(0.01), lambda ps: torch.optim.Adam(ps, lr=0.01))


def steps(torch_model, optimizer, batches, norm=BatchNorm, drop=()):
    """compare_steps from one start, a float64 torch loop as the reference; keys in drop skipped."""
    tx, make_optimizer = optimizer

    def keep(step):
        return lambda b: {k: v for k, v in step(b).items() if not any(d in k for d in drop)}

    return parity.compare_steps(
        keep(jax_loop(port(torch_model, 0.0, norm), tx)),
        keep(torch_loop(torch_model, make_optimizer, torch.float32)),
        batches,
        reference_step=keep(torch_loop(torch_model, make_optimizer, torch.float64)),
    )


def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes, 2 trials (seconds)")
    p.add_argument("--outdir", default=None, help="also write the printed text to DIR/...txt")
    args = p.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is faster (many times so on a busy CPU)
    try:
        return run(args)
    finally:
        torch.set_num_threads(threads)


def run(args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    batch, side, trials = (8, 8, 2) if args.quick else (16, 16, 5)
    lines = []

    def say(text):
        print(text)
        lines.append(str(text))

    # 1. The loss on random logits and labels, classification (N, C) and segmentation
    # (N, H, W, C) shapes; torch takes the class axis first: move it there.
    logits, labels = parity.normal((batch, 4), scale=3.0), parity.integers((batch,), high=4)
    seg_logits = parity.normal((2, side, side, 4), scale=3.0)
    seg_labels = parity.integers((2, side, side), high=4)
    loss_report = parity.Report.merge([
        parity.compare(jax.jit(dice_loss), dice_loss_torch, [logits, labels], trials=trials,
                       names=["logits", "labels"]),
        parity.compare(jax.jit(dice_loss), lambda x, y: dice_loss_torch(x.movedim(-1, 1), y),
                       [seg_logits, seg_labels], trials=trials, names=["logits", "labels"]),
    ], title="1. Dice loss")  # fmt: skip
    say(loss_report)

    # 2. The layers. Eval mode (dropout off): a "trained" model, load yours instead. Train mode:
    # torch and JAX draw different dropout masks, so a fresh model is built with p=0.
    torch.manual_seed(0)
    torch_model = TorchNet(p=0.5)
    with torch.no_grad():  # BatchNorm as if trained, not the identity it starts as
        for bn in (torch_model.bn1, torch_model.bn2):
            bn.weight.uniform_(0.5, 1.5), bn.bias.normal_(0, 0.5)
            bn.running_mean.normal_(0, 0.5), bn.running_var.uniform_(0.5, 2.0)
    x = np.random.default_rng(0).normal(size=(batch, 3, side, side)).astype(np.float32)
    eval_report = parity.compare_layers(torch_model, port(torch_model, 0.5), x)
    torch_p0 = TorchNet(p=0.0)
    train_report = parity.compare_layers(torch_p0, port(torch_p0, 0.0), x, train=True,
                                         jax_call=lambda m, v: m(v, train=True))  # fmt: skip
    say(f"\n2. {eval_report}\n\n2. {train_report}")

    # 3. Five SGD steps of the fresh p=0 model; float64 torch is the reference.
    rng = np.random.default_rng(1)
    batches = [(rng.normal(size=(batch, 3, side, side)), rng.integers(0, 4, batch))
               for _ in range(5)]  # fmt: skip
    steps_report = steps(torch_p0, SGD, batches)
    say(f"\n3. SGD momentum 0.9: {steps_report}")

    # 4. Lesson: flax's nnx.BatchNorm. It keeps no num_batches_tracked: drop torch's counters.
    bn_report = steps(torch_p0, SGD, batches, flax_batch_norm, drop=["num_batches_tracked"])
    # 5. Lesson: optax.adam against torch.optim.Adam.
    adam_report = steps(torch_p0, ADAM, batches)
    flagged = {}
    for name, report in (("4. flax nnx.BatchNorm", bn_report), ("5. optax.adam", adam_report)):
        first = report.first_failure
        flagged[name[3:]] = first.name if first else None
        say(f"\n{name}: {report}\n\n{name}: first failure: "
            + (f"{first.name}: {first.verdict.reason}" if first else "none"))  # fmt: skip

    checks = {"loss": loss_report.ok, "layers eval": eval_report.ok,
              "layers train": train_report.ok, "steps SGD": steps_report.ok}  # fmt: skip
    ok = all(checks.values()) and "running_var" in (flagged["flax nnx.BatchNorm"] or "")
    seconds = time.perf_counter() - start
    say("\nsummary: " + ", ".join(f"{k} {'ok' if v else 'FAILED'}" for k, v in checks.items())
        + "; flagged: " + ", ".join(f"{k} at {v}" for k, v in flagged.items())
        + f"; {'PASSED' if ok else 'FAILED'} ({seconds:.0f} s)")  # fmt: skip
    if args.outdir:
        os.makedirs(args.outdir, exist_ok=True)
        with open(os.path.join(args.outdir, "verify_your_port.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
    return dict(checks=checks, flagged=flagged, ok=ok, seconds=seconds)


if __name__ == "__main__":
    sys.exit(0 if main(sys.argv[1:])["ok"] else 1)
