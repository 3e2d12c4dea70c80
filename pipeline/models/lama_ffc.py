"""Fast Fourier Convolution blocks of LaMa's generator (see pipeline/models/lama.py for provenance).

Adapted from advimman/lama saicinpainting/training/modules/ffc.py (Apache-2.0). Attribute names and
registration order follow upstream exactly, because they are the checkpoint's state-dict keys.
Only the options Big-LaMa's generator uses are kept (no gating, SE, spatial transform, spectral
position encoding, 3-D FFT). Upstream passes an int 0 for an absent local/global branch; None is
used here, which adds the same nothing.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

Branches = tuple[Tensor, "Tensor | None"]  # (local, global) feature maps; global absent when ratio is 0


def _add(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    if a is None:
        return b
    return a if b is None else a + b


class FourierUnit(nn.Module):
    """1x1 conv + BN + ReLU in the frequency domain: a global receptive field in one layer."""

    def __init__(self, in_channels: int, out_channels: int, groups: int = 1, fft_norm: str = "ortho") -> None:
        super().__init__()
        self.conv_layer = nn.Conv2d(in_channels * 2, out_channels * 2, kernel_size=1, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels * 2)
        self.relu = nn.ReLU(inplace=True)
        self.fft_norm = fft_norm

    def forward(self, x: Tensor) -> Tensor:
        batch, dtype, size = x.shape[0], x.dtype, x.shape[-2:]
        # FFTs run in float32: half-precision FFTs only accept power-of-two sizes.
        ffted = torch.fft.rfftn(x.float(), dim=(-2, -1), norm=self.fft_norm)
        # Channels become (c0.real, c0.imag, c1.real, ...): the order the checkpoint's 1x1 conv expects.
        ffted = torch.stack((ffted.real, ffted.imag), dim=-1).permute(0, 1, 4, 2, 3).contiguous()
        ffted = ffted.view(batch, -1, *ffted.shape[3:]).to(dtype)
        ffted = self.relu(self.bn(self.conv_layer(ffted))).float()
        ffted = ffted.view(batch, -1, 2, *ffted.shape[2:]).permute(0, 1, 3, 4, 2).contiguous()
        spectrum = torch.complex(ffted[..., 0], ffted[..., 1])
        return torch.fft.irfftn(spectrum, s=size, dim=(-2, -1), norm=self.fft_norm).to(dtype)


class SpectralTransform(nn.Module):
    """Global-to-global path: 1x1 reduce, Fourier unit (+ optional local Fourier unit), 1x1 expand."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, groups: int = 1,
                 enable_lfu: bool = True) -> None:
        super().__init__()
        self.enable_lfu = enable_lfu
        self.downsample = nn.AvgPool2d(kernel_size=(2, 2), stride=2) if stride == 2 else nn.Identity()
        hidden = out_channels // 2
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, hidden, kernel_size=1, groups=groups, bias=False),
                                   nn.BatchNorm2d(hidden), nn.ReLU(inplace=True))
        self.fu = FourierUnit(hidden, hidden, groups)
        if enable_lfu:
            self.lfu = FourierUnit(hidden, hidden, groups)
        self.conv2 = nn.Conv2d(hidden, out_channels, kernel_size=1, groups=groups, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(self.downsample(x))
        output = self.fu(x)
        local = 0
        if self.enable_lfu:  # quarter of the channels, 2x2 tiles stacked as channels, FFT'd, tiled back
            split = x.shape[-2] // 2
            tiles = torch.cat(torch.split(x[:, : x.shape[1] // 4], split, dim=-2), dim=1).contiguous()
            tiles = torch.cat(torch.split(tiles, split, dim=-1), dim=1).contiguous()
            local = self.lfu(tiles).repeat(1, 1, 2, 2).contiguous()
        return self.conv2(x + output + local)


class FFC(nn.Module):
    """Splits channels into local (spatial conv) and global (spectral) parts and mixes all four ways."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, ratio_gin: float, ratio_gout: float,
                 stride: int = 1, padding: int = 0, dilation: int = 1, groups: int = 1, bias: bool = False,
                 enable_lfu: bool = True, padding_type: str = "reflect") -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        in_cg = int(in_channels * ratio_gin)
        in_cl = in_channels - in_cg
        out_cg = int(out_channels * ratio_gout)
        out_cl = out_channels - out_cg
        self.ratio_gin, self.ratio_gout = ratio_gin, ratio_gout
        self.global_in_num = in_cg

        def conv(cin: int, cout: int) -> nn.Module:
            if cin == 0 or cout == 0:
                return nn.Identity()
            return nn.Conv2d(cin, cout, kernel_size, stride, padding, dilation, groups, bias, padding_mode=padding_type)

        self.convl2l = conv(in_cl, out_cl)
        self.convl2g = conv(in_cl, out_cg)
        self.convg2l = conv(in_cg, out_cl)
        self.convg2g = (nn.Identity() if in_cg == 0 or out_cg == 0 else
                        SpectralTransform(in_cg, out_cg, stride, 1 if groups == 1 else groups // 2, enable_lfu))
        self.gate = nn.Identity()  # upstream's `gated` option, off in every published LaMa
        self._paths = {name: cin > 0 and cout > 0 for name, cin, cout in (
            ("l2l", in_cl, out_cl), ("l2g", in_cl, out_cg), ("g2l", in_cg, out_cl), ("g2g", in_cg, out_cg))}

    def forward(self, x: Tensor | Branches) -> Branches:
        x_l, x_g = x if isinstance(x, tuple) else (x, None)
        out_l = out_g = None
        if self.ratio_gout != 1:
            out_l = _add(self.convl2l(x_l) if self._paths["l2l"] else None,
                         self.convg2l(x_g) if self._paths["g2l"] else None)
        if self.ratio_gout != 0:
            out_g = _add(self.convl2g(x_l) if self._paths["l2g"] else None,
                         self.convg2g(x_g) if self._paths["g2g"] else None)
        return out_l, out_g  # type: ignore[return-value]


class FFC_BN_ACT(nn.Module):  # noqa: N801 - upstream's name, kept so the structure reads like the paper's code
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, ratio_gin: float, ratio_gout: float,
                 stride: int = 1, padding: int = 0, dilation: int = 1, groups: int = 1, bias: bool = False,
                 norm_layer: type[nn.Module] = nn.BatchNorm2d, activation_layer: type[nn.Module] = nn.Identity,
                 padding_type: str = "reflect", enable_lfu: bool = True) -> None:
        super().__init__()
        self.ffc = FFC(in_channels, out_channels, kernel_size, ratio_gin, ratio_gout, stride, padding, dilation,
                       groups, bias, enable_lfu, padding_type)
        global_channels = int(out_channels * ratio_gout)
        # Decided by the ratio, not the channel count, exactly as upstream (it fixes which keys exist).
        self.bn_l = nn.Identity() if ratio_gout == 1 else norm_layer(out_channels - global_channels)
        self.bn_g = nn.Identity() if ratio_gout == 0 else norm_layer(global_channels)
        self.act_l = nn.Identity() if ratio_gout == 1 else activation_layer(inplace=True)
        self.act_g = nn.Identity() if ratio_gout == 0 else activation_layer(inplace=True)

    def forward(self, x: Tensor | Branches) -> Branches:
        x_l, x_g = self.ffc(x)
        x_l = None if x_l is None else self.act_l(self.bn_l(x_l))
        x_g = None if x_g is None else self.act_g(self.bn_g(x_g))
        return x_l, x_g  # type: ignore[return-value]


class FFCResnetBlock(nn.Module):
    def __init__(self, dim: int, padding_type: str, norm_layer: type[nn.Module],
                 activation_layer: type[nn.Module] = nn.ReLU, dilation: int = 1, **conv_kwargs) -> None:
        super().__init__()
        common = dict(kernel_size=3, padding=dilation, dilation=dilation, norm_layer=norm_layer,
                      activation_layer=activation_layer, padding_type=padding_type, **conv_kwargs)
        self.conv1 = FFC_BN_ACT(dim, dim, **common)
        self.conv2 = FFC_BN_ACT(dim, dim, **common)

    def forward(self, x: Tensor | Branches) -> Branches:
        id_l, id_g = x if isinstance(x, tuple) else (x, None)
        x_l, x_g = self.conv2(self.conv1((id_l, id_g)))
        return _add(id_l, x_l), _add(id_g, x_g)  # type: ignore[return-value]


class ConcatTupleLayer(nn.Module):
    def forward(self, x: Branches) -> Tensor:
        x_l, x_g = x
        return x_l if x_g is None else torch.cat((x_l, x_g), dim=1)
