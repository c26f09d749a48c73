"""Wide residual networks for 32×32 inputs (Zagoruyko & Komodakis, *Wide Residual Networks*, BMVC 2016)."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from banray.catalog.models.layers import PreActBlock, with_preact_head
from banray.catalog.models.registry import MODELS, Count, Dropout, at_least


def _wide_block(in_channels: int, out_channels: int, stride: int, dropout: float) -> PreActBlock:
    """Pre-activation basic block: BN-ReLU-3×3 conv, BN-ReLU-dropout-3×3 conv, plus the shortcut.

    Dropout order as the reference `wide_basic` (szagoruyko/wide-residual-networks, models/wide-resnet.lua).
    """
    block = PreActBlock(in_channels, out_channels, stride, [])
    # Names keep the keys of the earlier conv-dropout-BN-ReLU-conv order (body.0, body.2, body.4): dropout
    # has no parameters, so saved state dicts load unchanged, and eval-mode outputs are the same.
    block.body = nn.Sequential(
        OrderedDict(
            [
                ("0", nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)),
                ("2", nn.BatchNorm2d(out_channels)),
                ("3", nn.ReLU(inplace=True)),
                ("1", nn.Dropout(dropout)),
                ("4", nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)),
            ]
        )
    )
    return block


@MODELS.register("wrn", revision=2)  # 2: dropout after the second BN-ReLU, not the first conv
def wrn(
    *, num_classes: int, input_shape: tuple[int, ...], depth: at_least(10) = 28, widen_factor: Count = 10,
    dropout: Dropout = 0.0,
) -> nn.Module:
    """WRN-`depth`-`widen_factor` for CIFAR.

    A 3×3 conv to 16 channels, then three groups of n = (depth − 4) / 6 pre-activation basic blocks of widths
    16k, 32k, 64k (k = `widen_factor`) with strides 1, 2, 2 and a 1×1 conv shortcut where the shape changes,
    then BN-ReLU, global average pooling and a linear classifier. `dropout` sits between the second BN-ReLU
    and the second conv of each block. Reference: Zagoruyko & Komodakis, BMVC 2016
    (github.com/szagoruyko/wide-residual-networks).
    """
    blocks, remainder = divmod(depth - 4, 6)
    if remainder or blocks < 1:
        raise ValueError(f"wrn depth must be 6n + 4 with n ≥ 1 (10, 16, 22, 28, 34, 40, ...), got {depth}")

    layers: list[nn.Module] = [nn.Conv2d(input_shape[0], 16, 3, padding=1, bias=False)]
    channels = 16
    for width, stride in ((16 * widen_factor, 1), (32 * widen_factor, 2), (64 * widen_factor, 2)):
        for index in range(blocks):
            layers.append(_wide_block(channels, width, stride if index == 0 else 1, dropout))
            channels = width
    return with_preact_head(layers, channels, num_classes)
