# Adapted from piddnad/DDColor basicsr/archs/ddcolor_arch_utils/convnext.py (Apache-2.0; ConvNeXt by Meta, MIT).
"""ConvNeXt backbone as DDColor uses it: four stages, each with an extra LayerNorm tap.

Attribute names (downsample_layers, stages, norm0..norm3, norm) match upstream so the
published state dicts load strictly.
"""

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm(nn.Module):
    """LayerNorm over channels for (N,H,W,C) ("channels_last") or (N,C,H,W) ("channels_first")."""

    def __init__(self, num_channels: int, eps: float = 1e-6, data_format: str = "channels_last") -> None:
        super().__init__()
        if data_format not in ("channels_last", "channels_first"):
            raise ValueError(f"data_format must be channels_last or channels_first, got {data_format!r}")
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps
        self.data_format = data_format
        self.normalized_shape = (num_channels,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.data_format == "channels_last":
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        mean = x.mean(1, keepdim=True)
        variance = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(variance + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class ConvNeXtBlock(nn.Module):
    """DwConv7x7 -> LayerNorm -> Linear(4x) -> GELU -> Linear -> layer scale, plus residual."""

    def __init__(self, dim: int, layer_scale_init_value: float = 1e-6) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(layer_scale_init_value * torch.ones(dim))
        # Upstream's DropPath has rate 0 for DDColor (identity), so it is omitted.

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x
        x = self.dwconv(x).permute(0, 2, 3, 1)
        x = self.pwconv2(self.act(self.pwconv1(self.norm(x))))
        x = (self.gamma * x).permute(0, 3, 1, 2)
        return residual + x


class ConvNeXt(nn.Module):
    """ConvNeXt trunk returning the four LayerNorm'd stage outputs (strides 4, 8, 16, 32)."""

    def __init__(
        self,
        in_chans: int = 3,
        depths: tuple[int, ...] = (3, 3, 9, 3),
        dims: tuple[int, ...] = (96, 192, 384, 768),
        layer_scale_init_value: float = 1e-6,
    ) -> None:
        super().__init__()
        if len(depths) != 4 or len(dims) != 4:
            raise ValueError(f"ConvNeXt needs 4 depths and 4 dims, got {depths} and {dims}")
        stem = nn.Sequential(
            nn.Conv2d(in_chans, dims[0], kernel_size=4, stride=4),
            LayerNorm(dims[0], eps=1e-6, data_format="channels_first"),
        )
        self.downsample_layers = nn.ModuleList([stem])
        for i in range(3):
            self.downsample_layers.append(
                nn.Sequential(
                    LayerNorm(dims[i], eps=1e-6, data_format="channels_first"),
                    nn.Conv2d(dims[i], dims[i + 1], kernel_size=2, stride=2),
                )
            )
        self.stages = nn.ModuleList(
            nn.Sequential(*[ConvNeXtBlock(dims[i], layer_scale_init_value) for _ in range(depths[i])])
            for i in range(4)
        )
        for i in range(4):
            self.add_module(f"norm{i}", LayerNorm(dims[i], eps=1e-6, data_format="channels_first"))
        # Classification-path norm: unused by DDColor's output but present in the checkpoints.
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.trunc_normal_(module.weight, std=0.02)
            nn.init.constant_(module.bias, 0)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for i in range(4):
            x = self.stages[i](self.downsample_layers[i](x))
            # Upstream quirk kept on purpose: the normalised map only feeds the decoder
            # (via a hook); the trunk continues with the un-normalised x.
            features.append(getattr(self, f"norm{i}")(x))
        # Upstream then computes norm(x.mean((-2, -1))) and discards it; skipped here.
        return features
