"""PyTorch reference ResNets with the parameter names of the checkpoints `train.pytorch.port` reads.

This module imports torch at the top: only `train.pytorch.verify` and the parity tests import it,
and
only when they run (torch is a test/verification dependency, not one of the trainer's). Two layouts:

- `ResNet` / `BasicBlock`: torchvision's `resnet.py` (BasicBlock only: ResNet-18/34) written out,
  same attribute names and layer order (`conv1, bn1, relu, maxpool, layer1..4, avgpool, fc`; blocks
  `conv1, bn1, conv2, bn2, downsample.0/1`), so `ResNet((2, 2, 2, 2))` loads a torchvision
  `resnet18` state_dict with `strict=True`. `width` (default 64) and `in_channels` (default 3)
  generalise it for tiny tests.
- `CifarResNet` / `ResidualBlock`: seed 004 (004_1e0f039da5020c04.txt) as written: a `base`
  Sequential (3x3 conv, BN, ReLU), `layer1..4` of `ResidualBlock` whose `conv_block` Sequential
  holds conv, BN, ReLU, conv, BN (indices 0, 1, 3, 4 carry weights), `downsample` (0, 1) when the
  stride or width changes, `gap = AvgPool2d(4)` and `fc`. `AvgPool2d(4)` is a global average pool
  only for
  32x32 inputs (4x4 after three stride-2 stages), the size the seed trains on; the Flax
  `CifarResNet` pools globally at every size. `width` generalises the seed's hard-coded 64.

Examples:
  >>> model = ResNet((2, 2, 2, 2), num_classes=10, width=4)
  >>> model.eval()(torch.zeros(1, 3, 32, 32)).shape
  torch.Size([1, 10])
  >>> [k for k in model.state_dict() if k.startswith("layer2.0.downsample")][:2]
  ['layer2.0.downsample.0.weight', 'layer2.0.downsample.1.weight']
  >>> sorted({k.split(".")[3] for k in CifarResNet((1, 1, 1, 1), width=4).state_dict()
  ...         if k.startswith("layer2.0.conv_block")})
  ['0', '1', '3', '4']
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from train.names import RESNET_DEPTHS

__all__ = ["BasicBlock", "CifarResNet", "DEPTHS", "ResNet", "ResidualBlock", "build"]

DEPTHS = RESNET_DEPTHS  # train.names: the one definition


class BasicBlock(nn.Module):
    """torchvision's `BasicBlock` (expansion 1)."""

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The torch forward pass of NCHW `x`."""
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision's `ResNet` with `BasicBlock` (ResNet-18 depths (2, 2, 2, 2), 34 (3, 4, 6, 3))."""

    def __init__(
        self,
        depths: tuple[int, ...],
        num_classes: int = 1000,
        *,
        width: int = 64,
        in_channels: int = 3,
    ):
        super().__init__()
        self.inplanes = width
        self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(width, depths[0])
        self.layer2 = self._make_layer(width * 2, depths[1], stride=2)
        self.layer3 = self._make_layer(width * 4, depths[2], stride=2)
        self.layer4 = self._make_layer(width * 8, depths[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(width * 8, num_classes)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The torch forward pass of NCHW `x`."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class ResidualBlock(nn.Module):
    """Seed 004's `ResidualBlock` (`conv_block` Sequential, optional `downsample`)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.stride = stride
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.conv_block = nn.Sequential(
            nn.Conv2d(
                in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False
            ),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        if self.stride != 1 or self.in_channels != self.out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The torch forward pass of NCHW `x`."""
        out = self.conv_block(x)
        if self.stride != 1 or self.in_channels != self.out_channels:
            x = self.downsample(x)
        return F.relu(x + out)


class CifarResNet(nn.Module):
    """Seed 004's `ResNet(num_blocks, num_classes=10)` (`width` replaces its hard-coded 64)."""

    def __init__(
        self,
        num_blocks: tuple[int, ...],
        num_classes: int = 10,
        *,
        width: int = 64,
        in_channels: int = 3,
    ):
        super().__init__()
        self.in_channels = width
        self.base = nn.Sequential(
            nn.Conv2d(in_channels, width, kernel_size=3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        )
        self.layer1 = self._make_layer(width, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(width * 2, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(width * 4, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(width * 8, num_blocks[3], stride=2)
        self.gap = nn.AvgPool2d(4)
        self.fc = nn.Linear(width * 8, num_classes)

    def _make_layer(self, out_channels: int, num_blocks: int, stride: int) -> nn.Sequential:
        strides = [stride] + [1] * (num_blocks - 1)
        layers = []
        for s in strides:
            layers.append(ResidualBlock(self.in_channels, out_channels, s))
            self.in_channels = out_channels
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The torch forward pass of NCHW `x`."""
        out = self.base(x)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = self.gap(out)
        out = out.view(out.size(0), -1)
        return self.fc(out)


def build(name: str, *, num_classes: int, width: int = 64, in_channels: int = 3) -> nn.Module:
    """The torch model for a `train.models` name (`resnet18`, `resnet34`, `*_cifar`).

    Examples:
      >>> type(build("resnet34_cifar", num_classes=3, width=2)).__name__
      'CifarResNet'
    """
    base = name.removesuffix("_cifar")
    if base not in DEPTHS:
        raise ValueError(
            f"no torch reference for {name=}; choose one of "
            f"{sorted(DEPTHS) + [n + '_cifar' for n in sorted(DEPTHS)]}"
        )
    cls = CifarResNet if name.endswith("_cifar") else ResNet
    return cls(DEPTHS[base], num_classes, width=width, in_channels=in_channels)
