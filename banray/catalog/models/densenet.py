"""DenseNet-BC for 32×32 inputs (Huang et al., *Densely Connected Convolutional Networks*, CVPR 2017)."""

from __future__ import annotations

import math

import torch
from torch import nn

from banray.catalog.models.layers import with_preact_head
from banray.catalog.models.registry import MODELS, Count, Dropout, Share, at_least


class _DenseUnit(nn.Module):
    """BN-ReLU-1×1 conv to `bottleneck_width`·k channels, BN-ReLU-3×3 conv to k channels, appended to the input."""

    def __init__(self, in_channels: int, growth_rate: int, bottleneck_width: int, drop_rate: float):
        super().__init__()
        inner = bottleneck_width * growth_rate
        self.body = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, inner, 1, bias=False),
            nn.Dropout(drop_rate),
            nn.BatchNorm2d(inner),
            nn.ReLU(inplace=True),
            nn.Conv2d(inner, growth_rate, 3, padding=1, bias=False),
            nn.Dropout(drop_rate),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.body(x)], dim=1)


def _transition(in_channels: int, out_channels: int, drop_rate: float) -> nn.Sequential:
    return nn.Sequential(
        nn.BatchNorm2d(in_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(in_channels, out_channels, 1, bias=False),
        nn.Dropout(drop_rate),
        nn.AvgPool2d(2),
    )


@MODELS.register("densenet_bc", revision=1)
def densenet_bc(
    *,
    num_classes: int,
    input_shape: tuple[int, ...],
    depth: at_least(10) = 100,
    growth_rate: Count = 12,
    compression: Share = 0.5,
    bottleneck_width: Count = 4,
    block_units: Count | None = None,
    drop_rate: Dropout = 0.0,
) -> nn.Module:
    """DenseNet-BC-`depth`-`growth_rate` for CIFAR.

    A 3×3 conv to 2k channels (k = `growth_rate`), then three dense blocks of bottleneck units
    (BN-ReLU-1×1 conv to `bottleneck_width`·k, BN-ReLU-3×3 conv to k, concatenated to the input), with a
    transition (BN-ReLU-1×1 conv to ⌊`compression`·channels⌋, 2×2 average pooling) between blocks, then
    BN-ReLU, global average pooling and a linear classifier. `drop_rate` is dropout after every conv.

    Each block has (depth − 4) // 6 units unless `block_units` says otherwise; depths where depth − 4 is not
    a multiple of 6 round down (the Born-Again paper's DenseNet-90-60 gets 14 units per block, the same as
    depth 88). Reference: Huang et al., CVPR 2017, and their Torch code (github.com/liuzhuang13/DenseNet).
    """
    units = (depth - 4) // 6 if block_units is None else block_units
    if units < 1:
        raise ValueError(
            f"densenet_bc needs at least 1 unit per dense block: depth must be ≥ 10 or block_units ≥ 1 "
            f"(got depth={depth}, block_units={block_units})"
        )
    if not 0 < compression <= 1:
        raise ValueError(f"densenet_bc compression must be in (0, 1], got {compression}")

    channels = 2 * growth_rate
    layers: list[nn.Module] = [nn.Conv2d(input_shape[0], channels, 3, padding=1, bias=False)]
    for block in range(3):
        for _ in range(units):
            layers.append(_DenseUnit(channels, growth_rate, bottleneck_width, drop_rate))
            channels += growth_rate
        if block < 2:
            reduced = math.floor(compression * channels)
            layers.append(_transition(channels, reduced, drop_rate))
            channels = reduced
    return with_preact_head(layers, channels, num_classes)
