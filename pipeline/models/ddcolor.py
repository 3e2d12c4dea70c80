# Adapted from piddnad/DDColor ddcolor/model.py (Apache-2.0, https://github.com/piddnad/DDColor).
"""DDColor (ICCV 2023) photo colourisation: ConvNeXt encoder + dual (pixel / colour-query) decoder.

The module tree reproduces upstream's so the published checkpoints (DDColor-T
``ddcolor_paper_tiny``, DDColor-L ``ddcolor_paper`` / ``ddcolor_modelscope`` /
``ddcolor_artistic``) load with ``strict=True``. Differences from upstream, none of
which change the state-dict layout or the published models' outputs:

* decoder channel counts are computed from the encoder dims instead of running a
  dummy forward pass at construction (so the model can be built on the ``meta`` device);
* skip features are passed explicitly instead of through forward hooks (re-entrant);
* the colour decoder's width is configurable (keyword-only, upstream values by default)
  and an extra ``"convnext-tiny-test"`` encoder exists, only to build tiny test models.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from pipeline.models.ddcolor_convnext import ConvNeXt
from pipeline.color.lab import AB_MAX, AB_MIN
from pipeline.color.lab_torch import grey_rgb_from_lightness
from pipeline.models.ddcolor_transformer import MultiScaleColorDecoder
from pipeline.models.ddcolor_unet import (
    CustomPixelShuffleICNR,
    NormType,
    UnetBlockWide,
    converge_spectral_norms_,
    custom_conv_layer,
    norm_type_from_name,
)

ARCHITECTURE = "ddcolor"

# encoder name -> (stage depths, stage widths). The first two are upstream's.
ENCODER_SPECS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "convnext-t": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "convnext-l": ((3, 3, 27, 3), (192, 384, 768, 1536)),
    "convnext-tiny-test": ((1, 1, 1, 1), (16, 32, 64, 128)),
}

_PUBLISHED_COMMON: dict[str, Any] = {
    "decoder_name": "MultiScaleColorDecoder",
    "input_size": (512, 512),
    "num_output_channels": 2,
    "last_norm": "Spectral",
    "do_normalize": False,
    "num_queries": 100,
    "num_scales": 3,
    "dec_layers": 9,
}

# Constructor kwargs of the published weights (HF piddnad/<name>, config.json).
PUBLISHED_CONFIGS: dict[str, dict[str, Any]] = {
    "ddcolor_paper_tiny": {"encoder_name": "convnext-t", **_PUBLISHED_COMMON},
    "ddcolor_paper": {"encoder_name": "convnext-l", **_PUBLISHED_COMMON},
}

# Keys some pre-2023-08 checkpoints still carry (a ConvNeXt classification head that
# upstream deleted); upstream loads with strict=False, which silently drops them.
_OBSOLETE_KEY_PREFIXES = ("encoder.arch.head_cls.",)

# Every feature map is downsampled 32x by the encoder before being upsampled back.
_SIZE_MULTIPLE = 32
# Valid a/b range of 8-bit Lab; the model's raw output is unbounded.


def tiny_config(input_size: int = 64) -> dict[str, Any]:
    """Constructor kwargs of a tiny DDColor (~0.5 M params, 2 MB) on the same code paths as the real ones."""
    return {
        "encoder_name": "convnext-tiny-test",
        "decoder_name": "MultiScaleColorDecoder",
        "input_size": (input_size, input_size),
        "nf": 64,
        "num_output_channels": 2,
        "last_norm": "Spectral",
        "do_normalize": False,
        "num_queries": 8,
        "num_scales": 3,
        "dec_layers": 3,
        "decoder_hidden_dim": 32,
        "decoder_ffn_dim": 64,
        "decoder_heads": 4,
    }


def build_tiny_model(input_size: int = 64, seed: int = 0) -> "DDColor":
    """A randomly initialised tiny DDColor in eval mode, deterministic for a given seed.

    Spectral norms are converged so outputs have a sane scale (not a trained model:
    its colours are meaningless). The global RNG state is left untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DDColor(**tiny_config(input_size))
    converge_spectral_norms_(model)
    return model.eval()


def extract_state_dict(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Return the model state dict from a published checkpoint object.

    Accepts the flat dict of HF ``pytorch_model.bin`` / safetensors files and the
    ``{"params": state_dict, ...}`` form of the ``.pth`` release files; drops the
    obsolete ``encoder.arch.head_cls.*`` keys so the result loads with ``strict=True``.
    """
    if not isinstance(checkpoint, Mapping):
        raise TypeError(f"checkpoint must be a dict, got {type(checkpoint).__name__}")
    state = checkpoint.get("params", checkpoint)
    if not isinstance(state, Mapping):
        raise TypeError(f"checkpoint['params'] must be a dict, got {type(state).__name__}")
    tensors = {
        key: value
        for key, value in state.items()
        if isinstance(value, torch.Tensor) and not key.startswith(_OBSOLETE_KEY_PREFIXES)
    }
    if "mean" not in tensors or not any(key.startswith("encoder.arch.") for key in tensors):
        raise ValueError(
            "checkpoint does not look like a DDColor state dict (no 'mean' / 'encoder.arch.*' "
            f"tensors); top-level keys: {list(checkpoint)[:8]}"
        )
    return tensors


class ImageEncoder(nn.Module):
    """Holds the ConvNeXt under ``arch`` (checkpoint keys ``encoder.arch.*``)."""

    def __init__(self, encoder_name: str) -> None:
        super().__init__()
        if encoder_name not in ENCODER_SPECS:
            raise ValueError(f"unknown encoder_name {encoder_name!r}; expected one of {sorted(ENCODER_SPECS)}")
        depths, dims = ENCODER_SPECS[encoder_name]
        self.arch = ConvNeXt(depths=depths, dims=dims)
        self.encoder_name = encoder_name
        self.channels = dims

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.arch(x)


class DuelDecoder(nn.Module):
    """Pixel decoder (3 U-Net blocks + x4 shuffle) feeding the multi-scale colour decoder.

    (Upstream's spelling of "dual" is kept: nothing depends on it, but it eases comparison.)
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        nf: int = 512,
        blur: bool = True,
        last_norm: str = "Spectral",
        num_queries: int = 100,
        num_scales: int = 3,
        dec_layers: int = 9,
        hidden_dim: int = 256,
        ffn_dim: int = 2048,
        heads: int = 8,
    ) -> None:
        super().__init__()
        # Deepest map is upsampled through the stride-16, -8, -4 skips; the last block halves nf.
        skip_channels = list(encoder_channels[-2::-1])
        out_channels = [nf] * (len(skip_channels) - 1) + [nf // 2]
        in_channels = [encoder_channels[-1]] + out_channels[:-1]
        self.layers = nn.Sequential(
            *[
                UnetBlockWide(c_in, c_skip, c_out, blur=blur, norm_type=NormType.Spectral)
                for c_in, c_skip, c_out in zip(in_channels, skip_channels, out_channels)
            ]
        )
        embed_dim = nf // 2
        self.last_shuf = CustomPixelShuffleICNR(
            embed_dim, embed_dim, blur=blur, norm_type=norm_type_from_name(last_norm), scale=4
        )
        # Upstream hard-codes in_channels=[512, 512, 256] and color_embed_dim=256: the same
        # values as below when nf=512, which every published model uses.
        self.color_decoder = MultiScaleColorDecoder(
            in_channels=out_channels,
            hidden_dim=hidden_dim,
            num_queries=num_queries,
            nheads=heads,
            dim_feedforward=ffn_dim,
            dec_layers=dec_layers,
            color_embed_dim=embed_dim,
            num_scales=num_scales,
        )

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        out0 = self.layers[0](features[3], features[2])
        out1 = self.layers[1](out0, features[1])
        out2 = self.layers[2](out1, features[0])
        out3 = self.last_shuf(out2)
        return self.color_decoder([out0, out1, out2], out3)


class DDColor(nn.Module):
    """RGB in [0,1] (N,3,H,W) -> predicted Lab ab (N,2,H,W); H and W multiples of 32."""

    def __init__(
        self,
        encoder_name: str = "convnext-l",
        decoder_name: str = "MultiScaleColorDecoder",
        num_input_channels: int = 3,
        input_size: int | Sequence[int] = (512, 512),
        nf: int = 512,
        num_output_channels: int = 2,
        last_norm: str = "Spectral",
        do_normalize: bool = False,
        num_queries: int = 100,
        num_scales: int = 3,
        dec_layers: int = 9,
        *,
        decoder_hidden_dim: int = 256,
        decoder_ffn_dim: int = 2048,
        decoder_heads: int = 8,
    ) -> None:
        super().__init__()
        if decoder_name != "MultiScaleColorDecoder":
            raise ValueError(f"only decoder_name='MultiScaleColorDecoder' is supported, got {decoder_name!r}")
        if num_input_channels != 3:
            raise ValueError(f"DDColor takes RGB input (num_input_channels=3), got {num_input_channels}")
        if num_scales != 3:
            raise ValueError(f"the pixel decoder yields exactly 3 scales, got num_scales={num_scales}")
        self.input_size = _square_side(input_size)

        self.encoder = ImageEncoder(encoder_name)
        self.decoder = DuelDecoder(
            self.encoder.channels,
            nf=nf,
            last_norm=last_norm,
            num_queries=num_queries,
            num_scales=num_scales,
            dec_layers=dec_layers,
            hidden_dim=decoder_hidden_dim,
            ffn_dim=decoder_ffn_dim,
            heads=decoder_heads,
        )
        self.refine_net = nn.Sequential(
            custom_conv_layer(
                num_queries + 3,
                num_output_channels,
                kernel_size=1,
                norm_type=NormType.Spectral,
                use_activation=False,
            )
        )
        self.do_normalize = do_normalize
        # ImageNet statistics; persistent buffers, so they are part of the checkpoints.
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def normalize(self, img: torch.Tensor) -> torch.Tensor:
        return (img - self.mean) / self.std

    def denormalize(self, img: torch.Tensor) -> torch.Tensor:
        return img * self.std + self.mean

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[-2] % _SIZE_MULTIPLE or x.shape[-1] % _SIZE_MULTIPLE:
            raise ValueError(
                f"DDColor expects (N,3,H,W) with H and W multiples of {_SIZE_MULTIPLE}, "
                f"got {tuple(x.shape)}"
            )
        if x.shape[1] == 3:
            x = self.normalize(x)
        query_maps = self.decoder(self.encoder(x))
        # The refine conv sees the normalised input next to the per-query colour maps.
        out = self.refine_net(torch.cat([query_maps, x], dim=1))
        if self.do_normalize:
            out = self.denormalize(out)
        return out

    @torch.no_grad()
    def predict_ab(self, lightness: torch.Tensor) -> torch.Tensor:
        """Lab L (N,1,S,S) in [0,100], S = ``input_size`` -> predicted ab (N,2,S,S) in [-128,127].

        Builds the grey RGB input as upstream inference does (L with a=b=0, Lab->RGB), on the
        model's device and dtype; returns float32 on the model's device. Call ``.eval()``
        first: in training mode BatchNorm and spectral norm update their state.
        """
        expected = (self.input_size, self.input_size)
        if lightness.dim() != 4 or lightness.shape[1] != 1 or tuple(lightness.shape[-2:]) != expected:
            raise ValueError(
                f"predict_ab expects lightness of shape (N,1,{self.input_size},{self.input_size}), "
                f"got {tuple(lightness.shape)}"
            )
        grey_rgb = grey_rgb_from_lightness(lightness.to(self.mean.device)).to(self.mean.dtype)
        return self(grey_rgb).float().clamp(AB_MIN, AB_MAX)


def _square_side(input_size: int | Sequence[int]) -> int:
    if isinstance(input_size, int):
        height = width = input_size
    else:
        height, width = (int(v) for v in input_size)
    if height != width:
        raise ValueError(f"only square input sizes are supported, got {tuple(input_size)}")
    if height <= 0 or height % _SIZE_MULTIPLE:
        raise ValueError(f"input size must be a positive multiple of {_SIZE_MULTIPLE}, got {height}")
    return height
