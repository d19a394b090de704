"""The compressed generator: the MRFM decoder's coarse-to-fine layout with depthwise-separable convolutions.

A 3x3 convolution from C to C' channels costs 9 C C' MACs per pixel; a depthwise 3x3 plus a pointwise 1x1
costs 9 C + C C'. With a narrower width too, the decoder shrinks by an order of magnitude. It takes the
same encoder taps and the same AdaIN_SD statistics as the studio's full generator, from which it is distilled.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fedgai.config import FedgaiConfig
from fedgai.models import CoarseToFineGenerator, Encoder


def separable_block(cin: int, cout: int, slope: float = 0.01) -> nn.Sequential:
    """Reflection pad + depthwise 3x3 + pointwise 1x1 + BatchNorm + LeakyReLU."""
    return nn.Sequential(
        nn.ReflectionPad2d(1),
        nn.Conv2d(cin, cin, 3, groups=cin, bias=False),
        nn.Conv2d(cin, cout, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.LeakyReLU(slope),
    )


class LiteFusion(nn.Module):
    """MRFM's fusion, lightened: upsample the coarse map, concatenate the finer tap, one separable block."""

    def __init__(self, fine_ch: int, coarse_ch: int, out_ch: int):
        super().__init__()
        self.fuse = separable_block(fine_ch + coarse_ch, out_ch)

    def forward(self, fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([F.interpolate(coarse, scale_factor=2, mode="nearest"), fine], 1))


class CompressedGenerator(CoarseToFineGenerator):
    """The full generator's layout and AdaIN_SD statistics with separable stages and light fusion blocks."""

    def __init__(self, channels: tuple[int, ...], finest_stride: int, width: int):
        super().__init__(channels, finest_stride, width, separable_block, LiteFusion)


def build_compressed(cfg: FedgaiConfig, encoder: Encoder) -> CompressedGenerator:
    return CompressedGenerator(encoder.channels, encoder.strides[0], cfg.edge.width)
