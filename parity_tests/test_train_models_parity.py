"""train.models vs a PyTorch torchvision-layout ResNet with the same weights (eval and train mode).

The torch reference (`torch_models.TorchResNet`) is torchvision's `resnet.py` BasicBlock/ResNet
written out (torchvision is not installed here), with a configurable width. Weights are copied from
the NNX model by name, the same key mapping a torchvision state_dict import uses:
`conv.kernel (H, W, I, O)` -> `conv.weight (O, I, H, W)`, `bn.scale/bias/mean/var` ->
`bn.weight/bias/running_mean/running_var`, `fc.kernel (I, O)` -> `fc.weight (O, I)`, and
`downsample[0]`/`downsample[1]` -> `downsample.0`/`downsample.1`, `num_batches_tracked` as is.
The weights go through `jaxloss.parity.nnx_to_torch` (the harness's mapping by layer type).
Tolerance: 1e-4 absolute on logits of magnitude ~1 (float32, different convolution algorithms),
and `jaxloss.parity.compare_layers` on every layer in eval and train mode under the harness's
float64-reference rule (JAX float32 no further from torch float64 than twice torch float32).
After a train-mode forward every BatchNorm's running mean and running variance (torch's unbiased
update, compared directly) are within `atol=1e-5, rtol=1e-4` of the float64 torch model's, and
every `num_batches_tracked` has grown by one.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from torch_models import TorchResNet

from jaxloss import parity
from train import models

ATOL = 1e-4


def _randomise_batch_stats(state, rng):
    return jax.tree.map(  # running statistics in [0.5, 1.5], counters 3
        lambda v: jnp.asarray(rng.uniform(0.5, 1.5, v.shape) if v.ndim else 3, v.dtype), state
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
    # the weight mapping of jaxloss.parity (by layer type), which train.pytorch.port agrees with
    sd = parity.nnx_to_torch(nnx.merge(graphdef, params, stats))
    torch_model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
    torch_model.double()

    # 8 examples: layer4 is 1x1, and train-mode BatchNorm over 3 values per channel amplified
    # float32 rounding past the float64-reference rule with 2 torch threads
    x = rng.normal(size=(8, size, size, 3)).astype(np.float32)
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
    # every BatchNorm's statistics, as torch updates them (unbiased running variance, counter)
    want = torch_model.state_dict()
    got = parity.nnx_to_torch(nnx.merge(graphdef, params, new_stats))
    assert sorted(got) == sorted(want)
    for key, value in got.items():
        if key.endswith("num_batches_tracked"):
            assert value.dtype == np.int32 and int(value) == int(want[key]) == 4, key
        elif "running" in key:
            np.testing.assert_allclose(value, want[key].numpy(), atol=1e-5, rtol=1e-4, err_msg=key)

    # layer by layer, in float32 against torch float32, judged by the float64-reference rule
    torch_model.float()
    torch_model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
    port = nnx.merge(graphdef, params, stats)
    xt32 = x.transpose(0, 3, 1, 2)
    for train in (False, True):
        report = parity.compare_layers(
            torch_model, port, xt32, train=train, jax_call=lambda m, v, t=train: m(v, train=t)
        )
        assert report.ok, report
        # every conv, BatchNorm and block (and the head) was compared
        assert sum(e.name.startswith("layer ") for e in report.entries) >= 4 * 2 * 5 + 2
