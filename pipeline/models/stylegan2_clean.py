"""StyleGAN2 generator, "clean" variant (no custom CUDA ops), as used by GFPGAN v1.3/v1.4.

Port of TencentARC/GFPGAN gfpgan/archs/stylegan2_clean_arch.py (Apache-2.0).
Module and parameter names mirror upstream exactly so published checkpoints load strictly.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def init_linear_kaiming(module: nn.Module, *, bias_fill: float, negative_slope: float, nonlinearity: str) -> None:
    """Kaiming-normal init of every nn.Linear inside `module` (upstream's basicsr default_init_weights, scale=1).

    Only matters for untrained (test) instances; real weights overwrite it.
    """
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.kaiming_normal_(layer.weight, a=negative_slope, mode="fan_in", nonlinearity=nonlinearity)
            if layer.bias is not None:
                nn.init.constant_(layer.bias, bias_fill)


class NormStyleCode(nn.Module):
    """Pixel-norm of the style codes, (b, c) -> (b, c)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(torch.mean(x**2, dim=1, keepdim=True) + 1e-8)


class ModulatedConv2d(nn.Module):
    """StyleGAN2 modulated convolution (no bias); the per-sample weights run as one grouped conv."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        num_style_feat: int,
        demodulate: bool = True,
        sample_mode: str | None = None,
        eps: float = 1e-8,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.demodulate = demodulate
        self.sample_mode = sample_mode
        self.eps = eps
        self.modulation = nn.Linear(num_style_feat, in_channels, bias=True)
        # bias_fill=1 so an untrained modulation starts as identity scaling, as upstream.
        init_linear_kaiming(self.modulation, bias_fill=1.0, negative_slope=0.0, nonlinearity="linear")
        shape = (1, out_channels, in_channels, kernel_size, kernel_size)
        self.weight = nn.Parameter(torch.randn(*shape) / math.sqrt(in_channels * kernel_size**2))
        self.padding = kernel_size // 2

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        b, c, _, _ = x.shape
        style = self.modulation(style).view(b, 1, c, 1, 1)
        weight = self.weight * style  # (b, c_out, c_in, k, k)
        if self.demodulate:
            demod = torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + self.eps)
            weight = weight * demod.view(b, self.out_channels, 1, 1, 1)
        weight = weight.view(b * self.out_channels, c, self.kernel_size, self.kernel_size)

        if self.sample_mode == "upsample":
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        elif self.sample_mode == "downsample":
            x = F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False)

        b, c, h, w = x.shape
        out = F.conv2d(x.reshape(1, b * c, h, w), weight, padding=self.padding, groups=b)
        return out.view(b, self.out_channels, *out.shape[2:4])


class StyleConv(nn.Module):
    """Modulated conv + noise injection + bias + LeakyReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        num_style_feat: int,
        demodulate: bool = True,
        sample_mode: str | None = None,
    ) -> None:
        super().__init__()
        self.modulated_conv = ModulatedConv2d(
            in_channels, out_channels, kernel_size, num_style_feat, demodulate=demodulate, sample_mode=sample_mode
        )
        self.weight = nn.Parameter(torch.zeros(1))  # noise strength
        self.bias = nn.Parameter(torch.zeros(1, out_channels, 1, 1))
        self.activate = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x: torch.Tensor, style: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        out = self.modulated_conv(x, style) * 2**0.5  # gain that upstream calls "for conversion"
        if noise is None:
            b, _, h, w = out.shape
            noise = out.new_empty(b, 1, h, w).normal_()
        out = out + self.weight * noise
        out = out + self.bias
        return self.activate(out)


class ToRGB(nn.Module):
    """Features -> RGB (1x1 modulated conv, no demodulation), added onto the upsampled skip image."""

    def __init__(self, in_channels: int, num_style_feat: int, upsample: bool = True) -> None:
        super().__init__()
        self.upsample = upsample
        self.modulated_conv = ModulatedConv2d(
            in_channels, 3, kernel_size=1, num_style_feat=num_style_feat, demodulate=False, sample_mode=None
        )
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, style: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        out = self.modulated_conv(x, style) + self.bias
        if skip is not None:
            if self.upsample:
                skip = F.interpolate(skip, scale_factor=2, mode="bilinear", align_corners=False)
            out = out + skip
        return out


class ConstantInput(nn.Module):
    """Learned 4x4 constant the synthesis starts from."""

    def __init__(self, num_channel: int, size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, num_channel, size, size))

    def forward(self, batch: int) -> torch.Tensor:
        return self.weight.repeat(batch, 1, 1, 1)


def stylegan_channels(channel_multiplier: float, narrow: float) -> dict[str, int]:
    """Channel count per resolution (keys are resolutions as strings, as upstream)."""
    wide = 512 * narrow
    return {
        "4": int(wide),
        "8": int(wide),
        "16": int(wide),
        "32": int(wide),
        "64": int(256 * channel_multiplier * narrow),
        "128": int(128 * channel_multiplier * narrow),
        "256": int(64 * channel_multiplier * narrow),
        "512": int(32 * channel_multiplier * narrow),
        "1024": int(16 * channel_multiplier * narrow),
    }


class StyleGAN2GeneratorClean(nn.Module):
    """StyleGAN2 synthesis network: style MLP, constant input, 2 style convs + ToRGB per resolution."""

    def __init__(
        self,
        out_size: int,
        num_style_feat: int = 512,
        num_mlp: int = 8,
        channel_multiplier: float = 2,
        narrow: float = 1,
    ) -> None:
        super().__init__()
        self.num_style_feat = num_style_feat
        style_mlp_layers: list[nn.Module] = [NormStyleCode()]
        for _ in range(num_mlp):
            style_mlp_layers.extend(
                [nn.Linear(num_style_feat, num_style_feat, bias=True), nn.LeakyReLU(negative_slope=0.2, inplace=True)]
            )
        self.style_mlp = nn.Sequential(*style_mlp_layers)
        init_linear_kaiming(self.style_mlp, bias_fill=0.0, negative_slope=0.2, nonlinearity="leaky_relu")

        channels = stylegan_channels(channel_multiplier, narrow)
        self.channels = channels
        self.constant_input = ConstantInput(channels["4"], size=4)
        self.style_conv1 = StyleConv(channels["4"], channels["4"], 3, num_style_feat, demodulate=True)
        self.to_rgb1 = ToRGB(channels["4"], num_style_feat, upsample=False)

        self.log_size = int(math.log(out_size, 2))
        self.num_layers = (self.log_size - 2) * 2 + 1
        self.num_latent = self.log_size * 2 - 2

        self.style_convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        # Persistent buffers: published checkpoints contain them and are loaded strictly.
        self.noises = nn.Module()
        for layer_idx in range(self.num_layers):
            resolution = 2 ** ((layer_idx + 5) // 2)
            self.noises.register_buffer(f"noise{layer_idx}", torch.randn(1, 1, resolution, resolution))

        in_channels = channels["4"]
        for i in range(3, self.log_size + 1):
            out_channels = channels[f"{2**i}"]
            self.style_convs.append(
                StyleConv(in_channels, out_channels, 3, num_style_feat, demodulate=True, sample_mode="upsample")
            )
            self.style_convs.append(StyleConv(out_channels, out_channels, 3, num_style_feat, demodulate=True))
            self.to_rgbs.append(ToRGB(out_channels, num_style_feat, upsample=True))
            in_channels = out_channels

    def stored_noise(self) -> list[torch.Tensor]:
        """The checkpoint's fixed noise maps, one per style conv (makes the forward deterministic)."""
        return [getattr(self.noises, f"noise{i}") for i in range(self.num_layers)]

    def resolve_latent(
        self,
        styles: list[torch.Tensor],
        input_is_latent: bool,
        truncation: float,
        truncation_latent: torch.Tensor | None,
    ) -> torch.Tensor:
        """Style codes -> per-layer latents (b, num_latent, num_style_feat). Style mixing is not supported."""
        if len(styles) != 1:
            raise ValueError(f"expected one style tensor (style mixing is training-only), got {len(styles)}")
        style = styles[0] if input_is_latent else self.style_mlp(styles[0])
        if truncation < 1:
            if truncation_latent is None:
                raise ValueError("truncation < 1 needs truncation_latent")
            style = truncation_latent + truncation * (style - truncation_latent)
        if style.ndim < 3:  # one latent shared by all layers
            return style.unsqueeze(1).repeat(1, self.num_latent, 1)
        return style  # encoder already produced one latent per layer

    def noise_list(self, noise: list[torch.Tensor] | None, randomize_noise: bool) -> list[torch.Tensor | None]:
        if noise is not None:
            return list(noise)
        return [None] * self.num_layers if randomize_noise else list(self.stored_noise())

    def forward(
        self,
        styles: list[torch.Tensor],
        input_is_latent: bool = False,
        noise: list[torch.Tensor] | None = None,
        randomize_noise: bool = True,
        truncation: float = 1,
        truncation_latent: torch.Tensor | None = None,
        return_latents: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.synthesize(styles, [], input_is_latent, noise, randomize_noise, truncation,
                               truncation_latent, return_latents)

    def condition(self, out: torch.Tensor, conditions: list[torch.Tensor], level: int) -> torch.Tensor:
        """Hook after each level's first conv: plain StyleGAN2 has none (GFPGAN's SFT does)."""
        return out

    def synthesize(self, styles: list[torch.Tensor], conditions: list[torch.Tensor], input_is_latent: bool,
                   noise: list[torch.Tensor] | None, randomize_noise: bool, truncation: float,
                   truncation_latent: torch.Tensor | None, return_latents: bool,
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
        latent = self.resolve_latent(styles, input_is_latent, truncation, truncation_latent)
        noises = self.noise_list(noise, randomize_noise)
        out = self.constant_input(latent.shape[0])
        out = self.style_conv1(out, latent[:, 0], noise=noises[0])
        skip = self.to_rgb1(out, latent[:, 1])
        i = 1
        for conv1, conv2, noise1, noise2, to_rgb in zip(
            self.style_convs[::2], self.style_convs[1::2], noises[1::2], noises[2::2], self.to_rgbs
        ):
            out = self.condition(conv1(out, latent[:, i], noise=noise1), conditions, i)
            out = conv2(out, latent[:, i + 1], noise=noise2)
            skip = to_rgb(out, latent[:, i + 2], skip)
            i += 2
        return skip, (latent if return_latents else None)
