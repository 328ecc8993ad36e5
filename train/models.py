"""Flax NNX image classifiers: CIFAR and torchvision ResNets, the seed-004 small CNN, LeNet.

Every model takes NHWC float32 images of shape `(batch, height, width, channels)` and returns
float32 logits of shape `(batch, num_classes)`. Parameters are float32; `dtype` selects the compute
dtype (`jnp.bfloat16` on GPU; `jnp.float64` with float64 parameters, under `jax_enable_x64`,
gives float64 logits: `jaxloss-verify --train-steps` runs the trainer's step so against torch
float64). Mode is explicit: `model(x, train=True, dropout_key=key)` uses batch statistics (and
updates the running ones) and drops out; `train=False` (the default) uses the running statistics
and no dropout. Nothing mode-related is stored on the module, so one graphdef serves both.

BatchNorm is `train.batch_norm.BatchNorm`, torch's (momentum 0.1, eps 1e-5, the unbiased running
variance, `num_batches_tracked`); convolutions pad explicitly like torch (`'SAME'` pads stride-2
convolutions asymmetrically). Convolution kernels use torchvision's Kaiming-normal `fan_out`
initialisation.

References:
  He et al., "Deep Residual Learning for Image Recognition" (2016); torchvision's `resnet.py`;
  seed 004_1e0f039da5020c04.txt (CIFAR ResNet-18, small CNN with BatchNorm and Dropout 0.5).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from train import names
from train.batch_norm import BatchNorm
from train.names import RESNET_DEPTHS

__all__ = [
    "MODELS",
    "BasicBlock",
    "CifarResNet",
    "LeNet",
    "SmallCNN",
    "TorchvisionResNet",
    "create_model",
    "register_model",
]

_BN_MOMENTUM = 0.1  # torch's convention and default (Flax `momentum=0.9`)
_BN_EPSILON = 1e-5
_CONV_INIT = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


def _conv(
    cin: int,
    cout: int,
    kernel: int,
    stride: int,
    pad: int,
    *,
    dtype: Any,
    rngs: nnx.Rngs,
    use_bias: bool = False,
) -> nnx.Conv:
    return nnx.Conv(
        cin,
        cout,
        (kernel, kernel),
        (stride, stride),
        padding=((pad, pad), (pad, pad)),
        use_bias=use_bias,
        dtype=dtype,
        kernel_init=_CONV_INIT,
        rngs=rngs,
    )


def _bn(features: int, *, dtype: Any, rngs: nnx.Rngs) -> BatchNorm:
    return BatchNorm(features, momentum=_BN_MOMENTUM, epsilon=_BN_EPSILON, dtype=dtype, rngs=rngs)


class BasicBlock(nnx.Module):
    """ResNet basic block: two 3x3 conv+BN, identity or 1x1 conv+BN shortcut, ReLU after the sum.

    Attribute names mirror torchvision's `BasicBlock` (`conv1, bn1, conv2, bn2, downsample`).

    Examples:
      >>> block = nnx.eval_shape(lambda: BasicBlock(4, 8, stride=2, rngs=nnx.Rngs(0)))
      >>> nnx.eval_shape(lambda m, x: m(x), block, jnp.ones((2, 6, 6, 4))).shape
      (2, 3, 3, 8)
    """

    def __init__(
        self, cin: int, cout: int, stride: int = 1, *, dtype: Any = jnp.float32, rngs: nnx.Rngs
    ):
        self.conv1 = _conv(cin, cout, 3, stride, 1, dtype=dtype, rngs=rngs)
        self.bn1 = _bn(cout, dtype=dtype, rngs=rngs)
        self.conv2 = _conv(cout, cout, 3, 1, 1, dtype=dtype, rngs=rngs)
        self.bn2 = _bn(cout, dtype=dtype, rngs=rngs)
        if stride != 1 or cin != cout:
            # torchvision's `downsample` is Sequential(conv1x1, bn): keys `downsample.0`, `.1`.
            self.downsample = nnx.List(
                [
                    _conv(cin, cout, 1, stride, 0, dtype=dtype, rngs=rngs),
                    _bn(cout, dtype=dtype, rngs=rngs),
                ]
            )
        else:
            self.downsample = None

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Logits (or block outputs) of NHWC `x`; `train` selects batch statistics and dropout."""
        ura = not train
        y = nnx.relu(self.bn1(self.conv1(x), use_running_average=ura))
        y = self.bn2(self.conv2(y), use_running_average=ura)
        if self.downsample is None:
            shortcut = x
        else:
            conv, bn = self.downsample
            shortcut = bn(conv(x), use_running_average=ura)
        return nnx.relu(y + shortcut)


def _stages(width: int, depths: tuple[int, ...], *, dtype: Any, rngs: nnx.Rngs) -> list[nnx.List]:
    layers = []
    cin = width
    for i, depth in enumerate(depths):
        cout = width * 2**i
        blocks = []
        for j in range(depth):
            stride = 2 if (i > 0 and j == 0) else 1
            blocks.append(BasicBlock(cin, cout, stride, dtype=dtype, rngs=rngs))
            cin = cout
        layers.append(nnx.List(blocks))
    return layers


def _logits_dtype(dtype: Any) -> Any:
    """float32 logits for float32 and half compute dtypes; float64 for float64."""
    return jnp.promote_types(dtype, jnp.float32)


def _head(x: jax.Array, fc: nnx.Linear, dtype: Any) -> jax.Array:
    pooled = jnp.mean(x.astype(_logits_dtype(x.dtype)), axis=(1, 2)).astype(dtype)
    return fc(pooled).astype(_logits_dtype(dtype))


class _ResNet(nnx.Module):
    """The ResNet both layouts share: stem conv + BN + ReLU, [max-pool], 4 stages, pool, `fc`.

    Subclasses set the stem (`_STEM = (kernel, stride, padding)`) and whether a 3x3 stride-2
    max-pool follows it; attribute names are torchvision's, so `train.pytorch.port` maps both.
    """

    _STEM: tuple[int, int, int]
    _MAX_POOL: bool

    def __init__(
        self,
        depths: tuple[int, ...],
        *,
        num_classes: int,
        in_channels: int = 3,
        width: int = 64,
        dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.dtype = dtype
        self.conv1 = _conv(in_channels, width, *self._STEM, dtype=dtype, rngs=rngs)
        self.bn1 = _bn(width, dtype=dtype, rngs=rngs)
        stages = _stages(width, depths, dtype=dtype, rngs=rngs)
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nnx.Linear(width * 8, num_classes, dtype=dtype, rngs=rngs)

    def __call__(
        self, x: jax.Array, *, train: bool = False, dropout_key: jax.Array | None = None
    ) -> jax.Array:
        """Logits (or block outputs) of NHWC `x`; `train` selects batch statistics and dropout."""
        del dropout_key  # no dropout
        x = nnx.relu(self.bn1(self.conv1(x.astype(self.dtype)), use_running_average=not train))
        if self._MAX_POOL:
            x = nnx.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage:
                x = block(x, train=train)
        return _head(x, self.fc, self.dtype)


class CifarResNet(_ResNet):
    """CIFAR-style ResNet (seed 004): 3x3 stride-1 stem, no max-pool, 4 stages, global average pool.

    Stage widths are `width * (1, 2, 4, 8)` (64-128-256-512 at the default width 64).

    Examples:
      >>> m = nnx.eval_shape(lambda: CifarResNet((1, 1, 1, 1), num_classes=3, in_channels=1,
      ...                                        width=4, rngs=nnx.Rngs(0)))
      >>> nnx.eval_shape(lambda m, x: m(x), m, jnp.ones((2, 8, 8, 1))).shape
      (2, 3)
    """

    _STEM = (3, 1, 1)
    _MAX_POOL = False


class TorchvisionResNet(_ResNet):
    """torchvision-layout ResNet: 7x7 stride-2 stem, 3x3 stride-2 max-pool, 4 stages, `fc`.

    Attribute paths mirror torchvision's state_dict keys (`conv1`, `bn1`, `layer1[0].conv1`, ...,
    `layer2[0].downsample[0]`, `fc`) so pretrained weights can be mapped.

    Examples:
      >>> m = nnx.eval_shape(lambda: TorchvisionResNet((1, 1, 1, 1), num_classes=5, width=4,
      ...                                              rngs=nnx.Rngs(0)))
      >>> nnx.eval_shape(lambda m, x: m(x), m, jnp.ones((1, 32, 32, 3))).shape
      (1, 5)
      >>> m.layer2[0].downsample[0].kernel.shape  # torchvision `layer2.0.downsample.0.weight`
      (1, 1, 4, 8)
    """

    _STEM = (7, 2, 3)
    _MAX_POOL = True


def _conv_out(size: int, kernel: int, pad: int) -> int:
    return size + 2 * pad - kernel + 1


class SmallCNN(nnx.Module):
    """Seed 004's small CNN: conv 6@5x5, BN, ReLU, pool, conv 16@5x5, BN, ReLU, pool, FC 120-64.

    Convolutions are unpadded (torch default), pools 2x2; dropout 0.5 after the first FC layer. The
    first FC layer's input size follows from `image_shape` (400 for 32x32 inputs).

    Examples:
      >>> m = nnx.eval_shape(lambda: SmallCNN(num_classes=10, image_shape=(32, 32, 3),
      ...                                     rngs=nnx.Rngs(0)))
      >>> m.fc1.in_features
      400
    """

    def __init__(
        self,
        *,
        num_classes: int,
        image_shape: tuple[int, int, int],
        width: int = 6,
        dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        h, w, c = image_shape
        side = min(h, w)
        if (_conv_out(side, 5, 0) // 2) < 5:
            raise ValueError(
                f"small_cnn needs images of at least 14x14 pixels, got {image_shape=} "
                "(resize them, e.g. --image-size 32)"
            )
        c2 = width * 16 // 6
        self.dtype = dtype
        self.conv1 = _conv(c, width, 5, 1, 0, dtype=dtype, rngs=rngs, use_bias=True)
        self.bn1 = _bn(width, dtype=dtype, rngs=rngs)
        self.conv2 = _conv(width, c2, 5, 1, 0, dtype=dtype, rngs=rngs, use_bias=True)
        self.bn2 = _bn(c2, dtype=dtype, rngs=rngs)
        oh = (_conv_out(_conv_out(h, 5, 0) // 2, 5, 0)) // 2
        ow = (_conv_out(_conv_out(w, 5, 0) // 2, 5, 0)) // 2
        self.fc1 = nnx.Linear(c2 * oh * ow, 120, dtype=dtype, rngs=rngs)
        self.dropout = nnx.Dropout(0.5)
        self.fc2 = nnx.Linear(120, 64, dtype=dtype, rngs=rngs)
        self.fc3 = nnx.Linear(64, num_classes, dtype=dtype, rngs=rngs)

    def __call__(
        self, x: jax.Array, *, train: bool = False, dropout_key: jax.Array | None = None
    ) -> jax.Array:
        """Logits (or block outputs) of NHWC `x`; `train` selects batch statistics and dropout."""
        ura = not train
        x = nnx.relu(self.bn1(self.conv1(x.astype(self.dtype)), use_running_average=ura))
        x = nnx.max_pool(x, (2, 2), (2, 2))
        x = nnx.relu(self.bn2(self.conv2(x), use_running_average=ura))
        x = nnx.max_pool(x, (2, 2), (2, 2))
        x = x.reshape(x.shape[0], -1)
        x = nnx.relu(self.fc1(x))
        x = self.dropout(x, deterministic=not train, rngs=dropout_key)
        x = nnx.relu(self.fc2(x))
        return self.fc3(x).astype(_logits_dtype(self.dtype))


class LeNet(nnx.Module):
    """LeNet-5 style network for small inputs (MNIST 28x28, digits 8x8): no BatchNorm, no dropout.

    conv 6@5x5 (pad 2), ReLU, 2x2 max-pool, conv 16@5x5 (pad 2, so 8x8 inputs still fit), ReLU,
    2x2 max-pool, FC 120, ReLU, FC 84, ReLU, FC `num_classes`.

    Examples:
      >>> m = nnx.eval_shape(lambda: LeNet(num_classes=10, image_shape=(8, 8, 1),
      ...                                  rngs=nnx.Rngs(0)))
      >>> nnx.eval_shape(lambda m, x: m(x), m, jnp.ones((3, 8, 8, 1))).shape, m.fc1.in_features
      ((3, 10), 64)
    """

    def __init__(
        self,
        *,
        num_classes: int,
        image_shape: tuple[int, int, int],
        width: int = 6,
        dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        h, w, c = image_shape
        if min(h, w) < 4:
            raise ValueError(f"lenet needs images of at least 4x4 pixels, got {image_shape=}")
        c2 = width * 16 // 6
        self.dtype = dtype
        self.conv1 = _conv(c, width, 5, 1, 2, dtype=dtype, rngs=rngs, use_bias=True)
        self.conv2 = _conv(width, c2, 5, 1, 2, dtype=dtype, rngs=rngs, use_bias=True)
        self.fc1 = nnx.Linear(c2 * (h // 2 // 2) * (w // 2 // 2), 120, dtype=dtype, rngs=rngs)
        self.fc2 = nnx.Linear(120, 84, dtype=dtype, rngs=rngs)
        self.fc3 = nnx.Linear(84, num_classes, dtype=dtype, rngs=rngs)

    def __call__(
        self, x: jax.Array, *, train: bool = False, dropout_key: jax.Array | None = None
    ) -> jax.Array:
        """Logits (or block outputs) of NHWC `x`; `train` selects batch statistics and dropout."""
        del train, dropout_key
        x = nnx.max_pool(nnx.relu(self.conv1(x.astype(self.dtype))), (2, 2), (2, 2))
        x = nnx.max_pool(nnx.relu(self.conv2(x)), (2, 2), (2, 2))
        x = x.reshape(x.shape[0], -1)
        x = nnx.relu(self.fc1(x))
        x = nnx.relu(self.fc2(x))
        return self.fc3(x).astype(_logits_dtype(self.dtype))


def _resnet(cls: type, depths: tuple[int, ...]) -> Callable[..., nnx.Module]:
    def build(*, num_classes, image_shape, width=None, dtype=jnp.float32, rngs):
        width = 64 if width is None else width
        kw = dict(num_classes=num_classes, width=width, dtype=dtype, rngs=rngs)
        return cls(depths, in_channels=image_shape[-1], **kw)

    return build


def _plain(cls: type) -> Callable[..., nnx.Module]:
    def build(*, num_classes, image_shape, width=None, dtype=jnp.float32, rngs):
        width = 6 if width is None else width
        return cls(
            num_classes=num_classes, image_shape=image_shape, width=width, dtype=dtype, rngs=rngs
        )

    return build


MODELS: dict[str, Callable[..., nnx.Module]] = {
    **{f"{name}_cifar": _resnet(CifarResNet, depths) for name, depths in RESNET_DEPTHS.items()},
    **{name: _resnet(TorchvisionResNet, depths) for name, depths in RESNET_DEPTHS.items()},
    "small_cnn": _plain(SmallCNN),
    "lenet": _plain(LeNet),
}
"""Registry: `train.names.MODELS` -> builder."""


def register_model(name: str, builder: Callable[..., nnx.Module]) -> None:
    """Adds a model to `MODELS` and its name to `train.names.MODELS` (which `Config` checks).

    `builder(*, num_classes, image_shape, width, dtype, rngs)` returns the module. Registering
    the same builder twice is a no-op; another builder under a taken name is a `ValueError`.
    """
    if MODELS.get(name, builder) is not builder:
        raise ValueError(f"model {name!r} is already registered")
    MODELS[name] = builder
    if name not in names.MODELS:
        names.MODELS = (*names.MODELS, name)


def create_model(
    name: str,
    *,
    num_classes: int,
    image_shape: tuple[int, int, int],
    rngs: nnx.Rngs,
    dtype: Any = jnp.float32,
    width: int | None = None,
) -> nnx.Module:
    """Builds a registered model.

    Args:
      name: a key of `MODELS`.
      num_classes: number of output logits.
      image_shape: `(height, width, channels)` of the input images.
      rngs: parameter initialisation keys.
      dtype: compute dtype (parameters stay float32; logits are float32).
      width: base width (ResNets: first stage channels, default 64; small_cnn/lenet: first conv
        channels, default 6). `None` takes the model's default.

    Returns:
      The NNX module; call it as `model(images, train=..., dropout_key=...)`.

    Examples:
      >>> m = nnx.eval_shape(lambda: create_model("resnet18_cifar", num_classes=10,
      ...                    image_shape=(8, 8, 1), width=4, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)))
      >>> nnx.eval_shape(lambda m, x: m(x), m, jnp.zeros((2, 8, 8, 1))).dtype
      dtype('float32')
      >>> m.fc.kernel.dtype
      dtype('float32')
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes=}")
    if len(image_shape) != 3 or min(image_shape) < 1:
        raise ValueError(f"image_shape must be (height, width, channels), got {image_shape=}")
    if width is not None and width < 1:
        raise ValueError(f"width must be >= 1, got {width=}")
    return MODELS[name](
        num_classes=num_classes, image_shape=tuple(image_shape), width=width, dtype=dtype, rngs=rngs
    )
