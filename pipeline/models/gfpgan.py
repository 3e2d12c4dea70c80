"""GFPGAN v1.3 / v1.4 face restorer (GFPGANv1Clean: U-Net encoder + StyleGAN2 decoder with SFT).

Port of TencentARC/GFPGAN gfpgan/archs/gfpganv1_clean_arch.py (Apache-2.0).
Module and parameter names mirror upstream exactly so the published `params_ema` loads with strict=True.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from pipeline.models.stylegan2_clean import StyleGAN2GeneratorClean, stylegan_channels

ARCHITECTURE = "gfpgan"

_CLEAN_ARCH_CONFIG: dict[str, Any] = {
    "out_size": 512,
    "num_style_feat": 512,
    "channel_multiplier": 2,
    "decoder_load_path": None,
    "fix_decoder": False,
    "num_mlp": 8,
    "input_is_latent": True,
    "different_w": True,
    "narrow": 1,
    "sft_half": True,
}
# GFPGANer(arch="clean", channel_multiplier=2): v1.3 and v1.4 share architecture and constructor.
PUBLISHED_CONFIGS: dict[str, dict[str, Any]] = {
    "GFPGANv1.4": dict(_CLEAN_ARCH_CONFIG),
    "GFPGANv1.3": dict(_CLEAN_ARCH_CONFIG),
}


def tiny_config() -> dict[str, Any]:
    """Same code paths as the published model (different_w, sft_half, latent input) at ~0.3 MB, for tests."""
    return {
        **_CLEAN_ARCH_CONFIG,
        "out_size": 64,
        "num_style_feat": 32,
        "channel_multiplier": 1,
        "num_mlp": 2,
        "narrow": 0.0625,
    }


def extract_state_dict(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Unwrap a GFPGAN checkpoint the way GFPGANer does: "params_ema", else "params", else a flat state dict."""
    if not isinstance(checkpoint, Mapping):
        raise TypeError(f"expected a checkpoint mapping, got {type(checkpoint).__name__}")
    for key in ("params_ema", "params"):
        if key in checkpoint:
            nested = checkpoint[key]
            if not isinstance(nested, Mapping):
                raise TypeError(f'checkpoint["{key}"] is {type(nested).__name__}, expected a state dict')
            return dict(nested)
    non_tensors = [k for k, v in checkpoint.items() if not isinstance(v, torch.Tensor)]
    if non_tensors:
        raise ValueError(
            f"checkpoint has neither 'params_ema' nor 'params' and is not a flat state dict "
            f"(non-tensor entries: {non_tensors[:5]})"
        )
    return dict(checkpoint)


class StyleGAN2GeneratorCSFT(StyleGAN2GeneratorClean):
    """StyleGAN2 decoder whose first conv at each resolution is modulated by spatial (SFT) scale/shift maps."""

    def __init__(
        self,
        out_size: int,
        num_style_feat: int = 512,
        num_mlp: int = 8,
        channel_multiplier: float = 2,
        narrow: float = 1,
        sft_half: bool = False,
    ) -> None:
        super().__init__(
            out_size,
            num_style_feat=num_style_feat,
            num_mlp=num_mlp,
            channel_multiplier=channel_multiplier,
            narrow=narrow,
        )
        self.sft_half = sft_half

    def apply_sft(self, out: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        if not self.sft_half:
            return out * scale + shift
        # sft_half: the first half of the channels passes through untouched.
        out_same, out_sft = torch.split(out, int(out.size(1) // 2), dim=1)
        return torch.cat([out_same, out_sft * scale + shift], dim=1)

    def condition(self, out: torch.Tensor, conditions: list[torch.Tensor], level: int) -> torch.Tensor:
        # conditions = [scale0, shift0, scale1, shift1, ...]; may cover fewer levels than the decoder has
        return self.apply_sft(out, conditions[level - 1], conditions[level]) if level < len(conditions) else out

    def forward(  # type: ignore[override]
        self,
        styles: list[torch.Tensor],
        conditions: list[torch.Tensor],
        input_is_latent: bool = False,
        noise: list[torch.Tensor] | None = None,
        randomize_noise: bool = True,
        truncation: float = 1,
        truncation_latent: torch.Tensor | None = None,
        return_latents: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.synthesize(styles, conditions, input_is_latent, noise, randomize_noise, truncation,
                               truncation_latent, return_latents)


class ResBlock(nn.Module):
    """Residual block with bilinear down- (x0.5) or up- (x2) sampling."""

    def __init__(self, in_channels: int, out_channels: int, mode: str = "down") -> None:
        super().__init__()
        if mode not in ("down", "up"):
            raise ValueError(f"mode must be 'down' or 'up', got {mode!r}")
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, 1, 1)
        self.conv2 = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.scale_factor = 0.5 if mode == "down" else 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.leaky_relu_(self.conv1(x), negative_slope=0.2)
        out = F.interpolate(out, scale_factor=self.scale_factor, mode="bilinear", align_corners=False)
        out = F.leaky_relu_(self.conv2(out), negative_slope=0.2)
        x = F.interpolate(x, scale_factor=self.scale_factor, mode="bilinear", align_corners=False)
        return out + self.skip(x)


def _sft_branch(channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, 1, 1), nn.LeakyReLU(0.2, True), nn.Conv2d(channels, out_channels, 3, 1, 1)
    )


class GFPGANv1Clean(nn.Module):
    """GFPGAN: U-Net degradation-removal encoder feeding latents + SFT conditions into a StyleGAN2 decoder."""

    def __init__(
        self,
        out_size: int,
        num_style_feat: int = 512,
        channel_multiplier: float = 1,
        decoder_load_path: str | None = None,
        fix_decoder: bool = True,
        num_mlp: int = 8,
        input_is_latent: bool = False,
        different_w: bool = False,
        narrow: float = 1,
        sft_half: bool = False,
    ) -> None:
        super().__init__()
        if decoder_load_path:
            # Upstream loads a pretrained StyleGAN2 here (training only); inference loads the full checkpoint.
            raise ValueError("decoder_load_path is a training-time option; load the full GFPGAN checkpoint instead")
        if out_size < 8 or 2 ** int(math.log(out_size, 2)) != out_size:
            raise ValueError(f"out_size must be a power of two >= 8, got {out_size}")
        self.out_size = out_size
        self.input_is_latent = input_is_latent
        self.different_w = different_w
        self.num_style_feat = num_style_feat

        channels = stylegan_channels(channel_multiplier, narrow * 0.5)  # the U-Net uses half the decoder width
        self.log_size = int(math.log(out_size, 2))
        self.conv_body_first = nn.Conv2d(3, channels[f"{out_size}"], 1)

        in_channels = channels[f"{out_size}"]
        self.conv_body_down = nn.ModuleList()
        for i in range(self.log_size, 2, -1):
            out_channels = channels[f"{2 ** (i - 1)}"]
            self.conv_body_down.append(ResBlock(in_channels, out_channels, mode="down"))
            in_channels = out_channels
        self.final_conv = nn.Conv2d(in_channels, channels["4"], 3, 1, 1)

        in_channels = channels["4"]
        self.conv_body_up = nn.ModuleList()
        for i in range(3, self.log_size + 1):
            out_channels = channels[f"{2**i}"]
            self.conv_body_up.append(ResBlock(in_channels, out_channels, mode="up"))
            in_channels = out_channels

        # Intermediate RGB heads: only used for training losses, but part of the published checkpoint.
        self.toRGB = nn.ModuleList(nn.Conv2d(channels[f"{2**i}"], 3, 1) for i in range(3, self.log_size + 1))

        num_latents = self.log_size * 2 - 2
        linear_out_channel = num_latents * num_style_feat if different_w else num_style_feat
        self.final_linear = nn.Linear(channels["4"] * 4 * 4, linear_out_channel)

        self.stylegan_decoder = StyleGAN2GeneratorCSFT(
            out_size=out_size,
            num_style_feat=num_style_feat,
            num_mlp=num_mlp,
            channel_multiplier=channel_multiplier,
            narrow=narrow,
            sft_half=sft_half,
        )
        if fix_decoder:
            self.stylegan_decoder.requires_grad_(False)

        self.condition_scale = nn.ModuleList()
        self.condition_shift = nn.ModuleList()
        for i in range(3, self.log_size + 1):
            out_channels = channels[f"{2**i}"]
            sft_out_channels = out_channels if sft_half else out_channels * 2
            self.condition_scale.append(_sft_branch(out_channels, sft_out_channels))
            self.condition_shift.append(_sft_branch(out_channels, sft_out_channels))

    def forward(
        self,
        x: torch.Tensor,
        return_latents: bool = False,
        return_rgb: bool = True,
        randomize_noise: bool = True,
        **unused_kwargs: Any,  # GFPGANer passes weight=0.5, which the clean arch ignores
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        conditions: list[torch.Tensor] = []
        unet_skips: list[torch.Tensor] = []
        out_rgbs: list[torch.Tensor] = []

        feat = F.leaky_relu_(self.conv_body_first(x), negative_slope=0.2)
        for i in range(self.log_size - 2):
            feat = self.conv_body_down[i](feat)
            unet_skips.insert(0, feat)
        feat = F.leaky_relu_(self.final_conv(feat), negative_slope=0.2)

        style_code = self.final_linear(feat.reshape(feat.size(0), -1))  # reshape: channels-last input is fine
        if self.different_w:
            style_code = style_code.view(style_code.size(0), -1, self.num_style_feat)

        for i in range(self.log_size - 2):
            feat = feat + unet_skips[i]
            feat = self.conv_body_up[i](feat)
            conditions.append(self.condition_scale[i](feat))
            conditions.append(self.condition_shift[i](feat))
            if return_rgb:
                out_rgbs.append(self.toRGB[i](feat))

        image, _ = self.stylegan_decoder(
            [style_code],
            conditions,
            return_latents=return_latents,
            input_is_latent=self.input_is_latent,
            randomize_noise=randomize_noise,
        )
        return image, out_rgbs

    @torch.inference_mode()
    def restore(self, faces: torch.Tensor) -> torch.Tensor:
        """Restore aligned faces: (N, 3, out_size, out_size) RGB in [0, 1] -> same shape and range.

        Uses the checkpoint's stored noise maps instead of fresh random noise (GFPGANer's default), so the
        result is deterministic and each face is independent of the others in the batch.
        """
        expected = (3, self.out_size, self.out_size)
        if faces.ndim != 4 or tuple(faces.shape[1:]) != expected:
            raise ValueError(f"faces must be (N, {', '.join(map(str, expected))}), got {tuple(faces.shape)}")
        param = next(self.parameters())
        x = (faces.to(device=param.device, dtype=param.dtype).contiguous() - 0.5) / 0.5
        image, _ = self(x, return_rgb=False, randomize_noise=False)
        return ((image.clamp(-1, 1) + 1) / 2).to(faces.dtype)

