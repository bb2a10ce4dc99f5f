"""Segmentation networks, written with torch alone (no torchvision).

Both output three channels of logits: background, ground-glass opacity (GGO),
consolidation. "Lesion" is GGO + consolidation.

* :class:`UNet` - Ronneberger et al., MICCAI 2015, with batch norm.
* :class:`DeepLabV3Plus` - Chen et al., ECCV 2018: a residual encoder at output
  stride 8, atrous spatial pyramid pooling (ASPP) and a decoder that fuses the
  stride-4 features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NUM_CLASSES = 3


def _conv_bn_relu(cin: int, cout: int, k: int = 3, dilation: int = 1, stride: int = 1) -> nn.Sequential:
    pad = dilation * (k // 2)
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=stride, padding=pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class _DoubleConv(nn.Sequential):
    def __init__(self, cin: int, cout: int, dropout: float = 0.0):
        layers = [_conv_bn_relu(cin, cout), _conv_bn_relu(cout, cout)]
        if dropout:
            layers.insert(1, nn.Dropout2d(dropout))
        super().__init__(*layers)


class UNet(nn.Module):
    """2-D UNet with ``len(channels)`` resolution levels.

    Parameters
    ----------
    channels : tuple of int
        Feature channels per level, from full resolution down.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = NUM_CLASSES,
                 channels: tuple[int, ...] = (16, 32, 64, 128, 256), dropout: float = 0.1):
        super().__init__()
        self.config = {"in_channels": in_channels, "num_classes": num_classes,
                       "channels": list(channels), "dropout": dropout}
        self.enc = nn.ModuleList()
        c_prev = in_channels
        for i, c in enumerate(channels):
            self.enc.append(_DoubleConv(c_prev, c, dropout if i == len(channels) - 1 else 0.0))
            c_prev = c
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for c in reversed(channels[:-1]):
            self.up.append(nn.ConvTranspose2d(c_prev, c, 2, stride=2))
            self.dec.append(_DoubleConv(2 * c, c))
            c_prev = c
        self.head = nn.Conv2d(c_prev, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.enc):
            if i:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        skips.pop()
        for up, dec in zip(self.up, self.dec):
            x = up(x)
            x = dec(torch.cat([x, skips.pop()], dim=1))
        return self.head(x)

    def cam_layers(self) -> dict[str, nn.Module]:
        """Layers Grad-CAM can target, the default first.

        ``decoder1`` is the full-resolution stage (the default: with HiResCAM of the predicted
        region its maps kept 99 % of their mass in the lung on P001 and peaked on the lesion on
        every slice, ``benchmarks/explanations.py``), ``decoder{n}`` the deepest.
        """
        n = len(self.dec)
        layers = {f"decoder{n - i}": d for i, d in reversed(list(enumerate(self.dec)))}
        layers["bottleneck"] = self.enc[-1]
        return layers


class _ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.c1 = _conv_bn_relu(cin, cout, 3, dilation=dilation, stride=stride)
        self.c2 = nn.Sequential(
            nn.Conv2d(cout, cout, 3, padding=dilation, dilation=dilation, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.skip = None
        if stride != 1 or cin != cout:
            self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x if self.skip is None else self.skip(x)
        return F.relu(self.c2(self.c1(x)) + s, inplace=True)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (DeepLabv3): parallel dilated convs + image pooling."""

    def __init__(self, cin: int, cout: int, rates: tuple[int, ...] = (3, 6, 9), dropout: float = 0.1):
        super().__init__()
        self.branches = nn.ModuleList([_conv_bn_relu(cin, cout, 1)] +
                                      [_conv_bn_relu(cin, cout, 3, dilation=r) for r in rates])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1, bias=False), nn.ReLU(inplace=True))
        self.project = nn.Sequential(_conv_bn_relu(cout * (len(rates) + 2), cout, 1), nn.Dropout2d(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        feats = [b(x) for b in self.branches]
        feats.append(F.interpolate(self.pool(x), size=(h, w), mode="bilinear", align_corners=False))
        return self.project(torch.cat(feats, dim=1))


class DeepLabV3Plus(nn.Module):
    """DeepLabv3+ with a small residual encoder (output stride 8) trained from scratch."""

    def __init__(self, in_channels: int = 1, num_classes: int = NUM_CLASSES,
                 widths: tuple[int, int, int, int] = (32, 64, 128, 192), aspp_channels: int = 128,
                 rates: tuple[int, ...] = (3, 6, 9)):
        super().__init__()
        self.config = {"in_channels": in_channels, "num_classes": num_classes, "widths": list(widths),
                       "aspp_channels": aspp_channels, "rates": list(rates)}
        w1, w2, w3, w4 = widths
        self.stem = nn.Sequential(_conv_bn_relu(in_channels, w1 // 2, 3, stride=2), _conv_bn_relu(w1 // 2, w1, 3))  # /2
        self.layer1 = nn.Sequential(_ResBlock(w1, w2, stride=2), _ResBlock(w2, w2))           # /4 (low-level)
        self.layer2 = nn.Sequential(_ResBlock(w2, w3, stride=2), _ResBlock(w3, w3))           # /8
        self.layer3 = nn.Sequential(_ResBlock(w3, w4, dilation=2), _ResBlock(w4, w4, dilation=4))  # /8 dilated
        self.aspp = ASPP(w4, aspp_channels, rates)
        self.low_proj = _conv_bn_relu(w2, 48, 1)
        self.decoder = nn.Sequential(_conv_bn_relu(aspp_channels + 48, 96), _conv_bn_relu(96, 96))
        self.head = nn.Conv2d(96, num_classes, 1)
        # full-resolution refinement so thin lesion borders are not lost at stride 4
        self.refine = nn.Sequential(_conv_bn_relu(num_classes + in_channels, 16), nn.Conv2d(16, num_classes, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        low = self.layer1(self.stem(x))
        high = self.aspp(self.layer3(self.layer2(low)))
        high = F.interpolate(high, size=low.shape[-2:], mode="bilinear", align_corners=False)
        y = self.head(self.decoder(torch.cat([high, self.low_proj(low)], dim=1)))
        y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
        return y + self.refine(torch.cat([y, x], dim=1))

    def cam_layers(self) -> dict[str, nn.Module]:
        """Layers Grad-CAM can target, the ASPP stage first (the default)."""
        return {"aspp": self.aspp, "decoder": self.decoder, "layer3": self.layer3, "layer2": self.layer2}


ARCHS = {"unet": UNet, "deeplab": DeepLabV3Plus}


def build(arch: str, config: dict | None = None) -> nn.Module:
    """Build a network by architecture name with an optional saved config."""
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {sorted(ARCHS)}")
    cfg = dict(config or {})
    for k in ("channels", "widths", "rates"):
        if k in cfg:
            cfg[k] = tuple(cfg[k])
    return ARCHS[arch](**cfg)
