# Adapted from piddnad/DDColor basicsr/archs/ddcolor_arch_utils/unet.py (Apache-2.0; fastai/DeOldify lineage).
"""U-Net decoder blocks of DDColor's pixel decoder.

Module nesting and attribute names follow upstream exactly so published checkpoints
load with ``strict=True``. Unlike upstream, skip features are passed explicitly instead
of being read from forward hooks, so one module can serve concurrent calls.
"""

from enum import Enum

import torch
from torch import nn
from torch.nn.utils.spectral_norm import SpectralNorm


class NormType(Enum):
    Batch = 1
    BatchZero = 2
    Weight = 3
    Spectral = 4


def norm_type_from_name(name: str) -> NormType:
    try:
        return NormType[name]
    except KeyError:
        raise ValueError(
            f"unknown last_norm {name!r}; expected one of {[n.name for n in NormType]}"
        ) from None


def batchnorm_2d(num_features: int, norm_type: NormType = NormType.Batch) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(num_features)
    with torch.no_grad():
        bn.bias.fill_(1e-3)
        bn.weight.fill_(0.0 if norm_type == NormType.BatchZero else 1.0)
    return bn


def icnr_(weight: torch.Tensor, scale: int = 2) -> None:
    """ICNR init: every sub-pixel of a PixelShuffle group starts with the same kernel (no checkerboard)."""
    out_channels, in_channels, height, width = weight.shape
    base_out = out_channels // (scale**2)
    kernel = nn.init.kaiming_normal_(torch.zeros(base_out, in_channels, height, width))
    kernel = kernel.transpose(0, 1).contiguous().view(in_channels, base_out, -1)
    kernel = kernel.repeat(1, 1, scale**2)
    kernel = kernel.contiguous().view(in_channels, out_channels, height, width).transpose(0, 1)
    with torch.no_grad():
        weight.copy_(kernel)


def custom_conv_layer(
    in_channels: int,
    out_channels: int,
    kernel_size: int = 3,
    norm_type: NormType = NormType.Batch,
    use_activation: bool = True,
    extra_bn: bool = False,
) -> nn.Sequential:
    """Conv (optionally weight/spectral normalised) -> ReLU? -> BatchNorm?, as upstream.

    The Sequential indices (conv at 0, BatchNorm at 1 or 2) are part of the checkpoint keys.
    """
    use_bn = norm_type in (NormType.Batch, NormType.BatchZero) or extra_bn
    conv = nn.Conv2d(
        in_channels,
        out_channels,
        kernel_size=kernel_size,
        padding=(kernel_size - 1) // 2,
        bias=not use_bn,
    )
    nn.init.kaiming_normal_(conv.weight)
    if conv.bias is not None:
        with torch.no_grad():
            conv.bias.zero_()
    # Legacy (hook-based) wrappers on purpose: they store weight_orig/_u/_v (or weight_g/_v),
    # which is the key layout of the published checkpoints.
    if norm_type == NormType.Weight:
        conv = nn.utils.weight_norm(conv)
    elif norm_type == NormType.Spectral:
        conv = nn.utils.spectral_norm(conv)
    layers: list[nn.Module] = [conv]
    if use_activation:
        layers.append(nn.ReLU(True))
    if use_bn:
        layers.append(nn.BatchNorm2d(out_channels))
    return nn.Sequential(*layers)


class CustomPixelShuffleICNR(nn.Module):
    """1x1 conv to out*scale^2 channels, ReLU, PixelShuffle, then a 2x2 blur (anti-checkerboard)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        scale: int = 2,
        blur: bool = True,
        norm_type: NormType = NormType.Spectral,
        extra_bn: bool = False,
    ) -> None:
        super().__init__()
        self.conv = custom_conv_layer(
            in_channels,
            out_channels * scale**2,
            kernel_size=1,
            norm_type=norm_type,
            use_activation=False,
            extra_bn=extra_bn,
        )
        # As upstream: with spectral norm conv[0].weight shares storage with weight_orig, so
        # this initialises the stored parameter (with weight norm it is a no-op, as upstream).
        # Upstream also leaves icnr at its default scale=2 even for scale=4; kept as is.
        icnr_(self.conv[0].weight)
        self.shuf = nn.PixelShuffle(scale)
        self.do_blur = blur
        self.pad = nn.ReplicationPad2d((1, 0, 1, 0))
        self.blur = nn.AvgPool2d(2, stride=1)
        self.relu = nn.ReLU(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.shuf(self.relu(self.conv(x)))
        return self.blur(self.pad(x)) if self.do_blur else x


class UnetBlockWide(nn.Module):
    """Upsample the deeper map x2, concatenate the BatchNorm'd skip feature, fuse with a 3x3 conv."""

    def __init__(
        self,
        up_in_channels: int,
        skip_channels: int,
        out_channels: int,
        blur: bool = False,
        norm_type: NormType = NormType.Spectral,
    ) -> None:
        super().__init__()
        self.shuf = CustomPixelShuffleICNR(
            up_in_channels, out_channels, blur=blur, norm_type=norm_type, extra_bn=True
        )
        self.bn = batchnorm_2d(skip_channels)
        self.conv = custom_conv_layer(
            out_channels + skip_channels, out_channels, norm_type=norm_type, extra_bn=True
        )
        self.relu = nn.ReLU()

    def forward(self, up_in: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up_out = self.shuf(up_in)
        return self.conv(self.relu(torch.cat([up_out, self.bn(skip)], dim=1)))


@torch.no_grad()
def converge_spectral_norms_(model: nn.Module, iterations: int = 20) -> int:
    """Run power iterations on every legacy spectral-norm wrapper; returns how many were found.

    Freshly initialised u/v vectors are random, so sigma = u.Wv is near zero (or negative)
    and an untrained model's outputs explode. Training converges them one step per forward;
    this does it up front for randomly initialised test/demo models. Loaded checkpoints
    already carry converged u/v, so they never need this.
    """
    wrapped = 0
    for module in model.modules():
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, SpectralNorm):
                for _ in range(iterations):
                    hook.compute_weight(module, do_power_iteration=True)
                wrapped += 1
    return wrapped
