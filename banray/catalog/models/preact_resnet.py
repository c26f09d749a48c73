"""Pre-activation ResNets for 32×32 inputs (He et al., *Identity Mappings in Deep Residual Networks*, ECCV 2016)."""

from __future__ import annotations

from typing import Literal

from torch import nn

from banray.catalog.models.layers import PreActBlock, with_preact_head
from banray.catalog.models.registry import MODELS, Scale, at_least

def _basic(in_channels: int, planes: int, stride: int) -> PreActBlock:
    """3×3 conv, BN-ReLU-3×3 conv; outputs `planes` channels."""
    return PreActBlock(
        in_channels,
        planes,
        stride,
        [
            nn.Conv2d(in_channels, planes, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(planes),
            nn.ReLU(inplace=True),
            nn.Conv2d(planes, planes, 3, padding=1, bias=False),
        ],
    )


def _bottleneck(in_channels: int, planes: int, stride: int) -> PreActBlock:
    """1×1 conv to `planes`, BN-ReLU-3×3 conv, BN-ReLU-1×1 conv to 4·`planes` channels.

    The stride sits on the first 1×1 conv, as the reference `bottleneck` (KaimingHe/resnet-1k-layers,
    resnet-pre-act.lua), not on the 3×3.
    """
    out_channels = 4 * planes  # the expansion of He et al.
    return PreActBlock(
        in_channels,
        out_channels,
        stride,
        [
            nn.Conv2d(in_channels, planes, 1, stride=stride, bias=False),
            nn.BatchNorm2d(planes),
            nn.ReLU(inplace=True),
            nn.Conv2d(planes, planes, 3, padding=1, bias=False),
            nn.BatchNorm2d(planes),
            nn.ReLU(inplace=True),
            nn.Conv2d(planes, out_channels, 1, bias=False),
        ],
    )


@MODELS.register("preact_resnet", revision=2)  # 2: the bottleneck strides in its first 1×1 conv
def preact_resnet(
    *,
    num_classes: int,
    input_shape: tuple[int, ...],
    depth: at_least(8) = 164,
    block: Literal["basic", "bottleneck"] = "bottleneck",
    width: Scale = 1.0,
) -> nn.Module:
    """Pre-activation ResNet-`depth` for CIFAR.

    A 3×3 conv to 16 channels, then three stages with strides 1, 2, 2 of n pre-activation blocks each, then
    BN-ReLU, global average pooling and a linear classifier. `block="basic"`: n = (depth − 2) / 6 blocks of
    two 3×3 convs, stage widths 16, 32, 64. `block="bottleneck"`: n = (depth − 2) / 9 blocks of 1×1, 3×3, 1×1
    convs, inner widths 16, 32, 64 and outputs 64, 128, 256. A 1×1 conv shortcut projects where the shape
    changes. `width` multiplies every channel count (the Born-Again paper's Table 5 uses 1 and 0.5).
    Reference: He et al., ECCV 2016 (github.com/KaimingHe/resnet-1k-layers).
    """
    # depth = 2 + (convs per block) × 3 stages × n, counting the first conv and the classifier.
    if block == "basic":
        make_block, layers_per_n, allowed = _basic, 6, "8, 14, 20, 32, 44, 56, 110, ..."
    elif block == "bottleneck":
        make_block, layers_per_n, allowed = _bottleneck, 9, "11, 20, 29, ..., 164, 1001"
    else:
        raise ValueError(f"preact_resnet block must be 'basic' or 'bottleneck', got {block!r}")
    blocks, remainder = divmod(depth - 2, layers_per_n)
    if remainder or blocks < 1:
        raise ValueError(
            f"preact_resnet depth with {block} blocks must be {layers_per_n}n + 2 with n ≥ 1 ({allowed}), "
            f"got {depth}"
        )
    if width <= 0:
        raise ValueError(f"preact_resnet width must be positive, got {width}")

    def scaled(channels: int) -> int:
        return max(1, round(channels * width))

    channels = scaled(16)
    layers: list[nn.Module] = [nn.Conv2d(input_shape[0], channels, 3, padding=1, bias=False)]
    for planes, stride in ((scaled(16), 1), (scaled(32), 2), (scaled(64), 2)):
        for index in range(blocks):
            unit = make_block(channels, planes, stride if index == 0 else 1)
            layers.append(unit)
            channels = unit.out_channels
    return with_preact_head(layers, channels, num_classes)
