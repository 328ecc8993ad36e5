"""PyTorch reference models of the parity tests.

The torchvision-layout ResNet (`ResNet`, `BasicBlock`) and seed 004's CIFAR ResNet (`CifarResNet`,
`ResidualBlock`, as 004_1e0f039da5020c04.txt writes it) live in the package,
`train/pytorch/models.py`, because `jaxloss-verify` needs them too; they are re-exported here.
`TorchResNet` is the torchvision-layout ResNet with an optional CIFAR stem (3x3 stride-1 `conv1`,
no max-pool) under torchvision's names: the reference of the Flax `CifarResNet` with the Flax
side's own names (`test_train_models_parity.py`).
"""

from __future__ import annotations

import torch

from train.pytorch.models import DEPTHS, BasicBlock, CifarResNet, ResidualBlock, ResNet, build

__all__ = ["DEPTHS", "BasicBlock", "CifarResNet", "ResNet", "ResidualBlock", "TorchResNet", "build"]


class TorchResNet(ResNet):
    """`ResNet(depths, num_classes, width=width)`; `cifar=True`: 3x3 stride-1 stem, no max-pool."""

    def __init__(self, depths, num_classes, width, cifar):
        super().__init__(tuple(depths), num_classes, width=width)
        self.cifar = cifar
        if cifar:
            self.conv1 = torch.nn.Conv2d(3, width, 3, 1, 1, bias=False)
            self.maxpool = torch.nn.Identity()


def randomise_batch_norm(
    model: torch.nn.Module, *, bias: bool = False, tracked: int | None = None
) -> torch.nn.Module:
    """Random BatchNorm statistics and scales (torch's global RNG), in place.

    ``bias``: also a random shift; ``tracked``: every ``num_batches_tracked`` (None: as is).
    """
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                if bias:
                    m.bias.normal_(0, 0.1)
                if tracked is not None:
                    m.num_batches_tracked.fill_(tracked)
    return model
