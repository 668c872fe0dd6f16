"""The classic U-Net (Ronneberger et al., 2015): the prototype's 31M-parameter model.

Four 2x2 max-pool downsamplings, each stage two 3x3 conv + BN + ReLU blocks, transposed-conv
upsampling and skip concatenation. Unlike the paper, the convolutions are padded ("same") so the
output has the input's size; the input must be a multiple of 16, which ``zoo.PaddedModel`` ensures.
With ``base_channels=64`` this is ~31.0M parameters; small widths (e.g. 8) make test-sized models.
"""
from __future__ import annotations

import torch
from torch import nn


def double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class Up(nn.Module):
    """Double the resolution, concatenate the encoder's skip, then a double conv."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cin // 2, kernel_size=2, stride=2)
        self.conv = double_conv(cin // 2 + cout, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNet(nn.Module):
    multiple = 16  # four poolings: H and W must divide by 2**4

    def __init__(self, num_classes: int = 19, in_channels: int = 3, base_channels: int = 64):
        super().__init__()
        c = [base_channels * 2 ** i for i in range(5)]  # 64, 128, 256, 512, 1024
        self.inc = double_conv(in_channels, c[0])
        self.downs = nn.ModuleList(nn.Sequential(nn.MaxPool2d(2), double_conv(c[i], c[i + 1]))
                                   for i in range(4))
        self.ups = nn.ModuleList(Up(c[i + 1], c[i]) for i in reversed(range(4)))
        self.head = nn.Conv2d(c[0], num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        x = skips.pop()
        for up in self.ups:
            x = up(x, skips.pop())
        return self.head(x)
