"""train.models vs a PyTorch torchvision-layout ResNet with the same weights (eval and train mode).

The torch reference (`torch_models.TorchResNet`) is torchvision's `resnet.py` BasicBlock/ResNet
written out (torchvision is not installed here), with a configurable width. Weights are copied from
the NNX model by name, the same key mapping a torchvision state_dict import uses:
`conv.kernel (H, W, I, O)` -> `conv.weight (O, I, H, W)`, `bn.scale/bias/mean/var` ->
`bn.weight/bias/running_mean/running_var`, `fc.kernel (I, O)` -> `fc.weight (O, I)`, and
`downsample[0]`/`downsample[1]` -> `downsample.0`/`downsample.1`.
Tolerance: 1e-4 absolute on logits of magnitude ~1 (float32, different convolution algorithms).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from torch_models import TorchResNet

from train import models

ATOL = 1e-4


def _torch_key(path):
    *mods, leaf = [str(p) for p in path]
    name = {
        "kernel": "weight",
        "scale": "weight",
        "bias": "bias",
        "mean": "running_mean",
        "var": "running_var",
    }[leaf]
    return ".".join([*mods, name])


def _to_torch(value, leaf):
    value = np.asarray(value)
    if leaf == "kernel" and value.ndim == 4:
        value = value.transpose(3, 2, 0, 1)  # HWIO -> OIHW
    elif leaf == "kernel":
        value = value.T  # (in, out) -> (out, in)
    return torch.from_numpy(np.array(value))  # a writable copy


def _randomise_batch_stats(state, rng):
    return jax.tree.map(
        lambda v: jnp.asarray(rng.uniform(0.5, 1.5, v.shape), v.dtype) if v.ndim else v, state
    )


@pytest.mark.parametrize(
    "name,cifar,size",
    [("resnet18", False, 33), ("resnet18", False, 32), ("resnet18_cifar", True, 8)],
)
def test_eval_and_train_forward_match_torch(name, cifar, size):
    width, classes = 4, 5
    model = nnx.jit(
        lambda k: models.create_model(
            name, num_classes=classes, image_shape=(size, size, 3), width=width, rngs=nnx.Rngs(k)
        )
    )(jax.random.key(0, impl="rbg"))
    graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    rng = np.random.default_rng(0)
    # non-trivial running statistics and BN affine parameters
    stats = _randomise_batch_stats(stats, rng)
    params = jax.tree.map(
        lambda v: v + jnp.asarray(rng.normal(0, 0.1, v.shape), v.dtype) if v.ndim == 1 else v,
        params,
    )
    torch_model = TorchResNet((2, 2, 2, 2), classes, width, cifar).double()
    sd = {}
    for path, var in nnx.to_flat_state(nnx.merge_state(params, stats)):
        sd[_torch_key(path)] = _to_torch(var[...], str(path[-1])).double()
    missing = torch_model.load_state_dict(sd, strict=False)
    assert missing.unexpected_keys == []
    assert [k for k in missing.missing_keys if not k.endswith("num_batches_tracked")] == []

    x = rng.normal(size=(3, size, size, 3)).astype(np.float32)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2)).double()

    @functools.partial(jax.jit, static_argnames="train")
    def forward(params, stats, x, train):
        m = nnx.merge(graphdef, params, stats)
        return m(x, train=train), nnx.state(m, nnx.BatchStat)

    torch_model.eval()
    with torch.no_grad():
        expected = torch_model(xt).numpy()
    out, _ = forward(params, stats, x, train=False)
    np.testing.assert_allclose(np.asarray(out), expected, atol=ATOL, rtol=0)

    torch_model.train()
    with torch.no_grad():
        expected = torch_model(xt).numpy()
    out, new_stats = forward(params, stats, x, train=True)
    np.testing.assert_allclose(np.asarray(out), expected, atol=ATOL, rtol=0)
    # running mean: torch momentum 0.1 == flax momentum 0.9
    got_mean = np.asarray(new_stats["bn1"]["mean"][...])
    np.testing.assert_allclose(got_mean, torch_model.bn1.running_mean.numpy(), atol=1e-5)
    # running var: torch keeps the unbiased batch variance, flax the biased one (n = B*H*W)
    n = x.shape[0] * (size if cifar else (size + 1) // 2) ** 2
    old_var = np.asarray(stats["bn1"]["var"][...])
    batch_var_flax = (np.asarray(new_stats["bn1"]["var"][...]) - 0.9 * old_var) / 0.1
    batch_var_torch = (torch_model.bn1.running_var.numpy() - 0.9 * old_var) / 0.1
    np.testing.assert_allclose(batch_var_flax * n / (n - 1), batch_var_torch, rtol=1e-4)
