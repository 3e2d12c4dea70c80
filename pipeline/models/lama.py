"""LaMa (Suvorov et al., "Resolution-robust Large Mask Inpainting with Fourier Convolutions", WACV 2022):
the FFC-ResNet generator, in the layout of the published Big-LaMa checkpoint.

Adapted from advimman/lama (Apache-2.0), saicinpainting/training/modules/ffc.py at commit
f92ceab7626d060ffb90e0ec1d25484995e3914f (FFCResNetGenerator and its blocks; identical in the later
5a67a02ad5047c33326695acf3bff8f9f44f19ac apart from an opt-in JIT FFT path). The Big-LaMa generator
config is configs/training/big-lama.yaml at c28320c521a14db48337253dd1c82f748504f0ef, whose generator
block matches the config.yaml shipped in the published big-lama.zip (run b18_ffc075_batch8x15).

The state-dict layout is derived from that code, not from a dump of the real checkpoint's keys: none
was found. Independent evidence that it matches: chaiNNer-org/spandrel loads the released weights
(renaming ``generator.model.*``) into a copy of the same module tree, and a third-party port counts
51,057,179 parameter + buffer elements for Big-LaMa, which is what this module builds.

``best.ckpt`` is a PyTorch Lightning checkpoint: ``state_dict`` holds ``generator.*`` next to the
discriminator's and the losses' weights; extract_state_dict keeps the generator only. Training calls
save_hyperparameters on an omegaconf config (and upstream loads with weights_only=False), so the file
very likely holds pickled objects that torch.load(weights_only=True) refuses; convert it once with
``python -m pipeline.models.lama big-lama/models/best.ckpt models/big-lama`` (no omegaconf needed).
"""
from __future__ import annotations

import copy
import pickle
import sys
import types
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pipeline.models.lama_ffc import ConcatTupleLayer, FFC_BN_ACT, FFCResnetBlock

ARCHITECTURE = "lama"
# The download advimman/lama's README names; the weights are big-lama/models/best.ckpt inside the zip.
PUBLISHED_WEIGHTS = "https://huggingface.co/smartywu/big-lama/resolve/main/big-lama.zip"

_BIG_LAMA_RATIO = 0.75  # share of bottleneck channels on the global (Fourier) path
PUBLISHED_CONFIGS: dict[str, dict[str, Any]] = {
    # big-lama.yaml's generator block with its ${...} interpolations resolved.
    "big-lama": {
        "input_nc": 4,
        "output_nc": 3,
        "ngf": 64,
        "n_downsampling": 3,
        "n_blocks": 18,
        "add_out_act": "sigmoid",
        "init_conv_kwargs": {"ratio_gin": 0, "ratio_gout": 0, "enable_lfu": False},
        "downsample_conv_kwargs": {"ratio_gin": 0, "ratio_gout": 0, "enable_lfu": False},
        "resnet_conv_kwargs": {"ratio_gin": _BIG_LAMA_RATIO, "ratio_gout": _BIG_LAMA_RATIO, "enable_lfu": False},
    },
}

_GENERATOR_PREFIX = "generator."


def tiny_config() -> dict[str, Any]:
    """Same code paths as Big-LaMa (local + Fourier branches, sigmoid head), a few thousand times smaller."""
    config = copy.deepcopy(PUBLISHED_CONFIGS["big-lama"])
    config.update(ngf=8, n_downsampling=2, n_blocks=2)
    return config


def extract_state_dict(checkpoint: dict) -> dict[str, Tensor]:
    """Lightning ``{"state_dict": {"generator.model...": ...}}`` or a flat generator state dict."""
    state = checkpoint.get("state_dict", checkpoint)
    if any(key.startswith(_GENERATOR_PREFIX) for key in state):
        return {key[len(_GENERATOR_PREFIX):]: value for key, value in state.items()
                if key.startswith(_GENERATOR_PREFIX)}
    return state


def _output_activation(kind: bool | str) -> list[nn.Module]:
    if kind is False:
        return []
    if kind is True or kind == "tanh":
        return [nn.Tanh()]
    if kind == "sigmoid":
        return [nn.Sigmoid()]
    raise ValueError(f"unknown add_out_act {kind!r}; expected 'sigmoid', 'tanh', True or False")


class FFCResNetGenerator(nn.Module):
    """(N, input_nc, H, W) -> (N, output_nc, H, W); H and W must be multiples of 2**n_downsampling.

    ``self.model`` is one nn.Sequential, as upstream: [0] reflection pad, [1] 7x7 input FFC,
    [2 .. 1+n_downsampling] strided FFCs, then n_blocks FFC resnet blocks, a concat layer, and per
    upsampling step (ConvTranspose2d, BatchNorm2d, ReLU), then reflection pad, 7x7 conv, activation.
    """

    def __init__(self, input_nc: int, output_nc: int, ngf: int = 64, n_downsampling: int = 3, n_blocks: int = 9,
                 padding_type: str = "reflect", init_conv_kwargs: dict | None = None,
                 downsample_conv_kwargs: dict | None = None, resnet_conv_kwargs: dict | None = None,
                 add_out_act: bool | str = True, max_features: int = 1024) -> None:
        super().__init__()
        if n_blocks < 0:
            raise ValueError(f"n_blocks must be >= 0, got {n_blocks}")
        init_conv_kwargs = dict(init_conv_kwargs or {})
        downsample_conv_kwargs = dict(downsample_conv_kwargs or {})
        resnet_conv_kwargs = dict(resnet_conv_kwargs or {})
        self.n_downsampling = n_downsampling
        width = lambda mult: min(max_features, int(ngf * mult))  # noqa: E731

        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            FFC_BN_ACT(input_nc, ngf, kernel_size=7, padding=0, activation_layer=nn.ReLU, **init_conv_kwargs),
        ]
        for i in range(n_downsampling):
            kwargs = dict(downsample_conv_kwargs)
            if i == n_downsampling - 1:  # the last one already splits channels the way the resnet blocks do
                kwargs["ratio_gout"] = resnet_conv_kwargs.get("ratio_gin", 0)
            layers.append(FFC_BN_ACT(width(2**i), width(2**i * 2), kernel_size=3, stride=2, padding=1,
                                     activation_layer=nn.ReLU, **kwargs))
        bottleneck = width(2**n_downsampling)
        layers += [FFCResnetBlock(bottleneck, padding_type=padding_type, norm_layer=nn.BatchNorm2d,
                                  activation_layer=nn.ReLU, **resnet_conv_kwargs) for _ in range(n_blocks)]
        layers.append(ConcatTupleLayer())
        for i in range(n_downsampling):
            mult = 2 ** (n_downsampling - i)
            layers += [nn.ConvTranspose2d(width(mult), width(mult / 2), kernel_size=3, stride=2, padding=1,
                                          output_padding=1),
                       nn.BatchNorm2d(width(mult / 2)), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, kernel_size=7, padding=0)]
        layers += _output_activation(add_out_act)
        self.model = nn.Sequential(*layers)

    @property
    def size_multiple(self) -> int:
        return 2**self.n_downsampling

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)



class _Inert:
    """Stands in for every non-tensor object of a checkpoint; nothing of it is imported or run."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


_TENSOR_GLOBALS = {("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
                   ("collections", "OrderedDict")}


class _TensorOnlyUnpickler(pickle.Unpickler):
    # torch.load resolves storage classes itself before asking us; anything else not listed is inert.
    def find_class(self, module: str, name: str) -> Any:
        return super().find_class(module, name) if (module, name) in _TENSOR_GLOBALS else _Inert


_tensor_only_pickle = types.ModuleType("tensor_only_pickle")
_tensor_only_pickle.Unpickler = _TensorOnlyUnpickler  # type: ignore[attr-defined]
_tensor_only_pickle.load = lambda file, **kw: _TensorOnlyUnpickler(file, **kw).load()  # type: ignore[attr-defined]


def read_lightning_checkpoint(path: Path) -> dict[str, Tensor]:
    """The generator weights of a LaMa training checkpoint, without omegaconf/Lightning installed and
    without running any pickled code: only tensor-rebuilding globals are resolved."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_tensor_only_pickle)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict", checkpoint), dict):
        raise ValueError(f"{path} does not hold a state dict")
    state = extract_state_dict(checkpoint)
    return {key: value for key, value in state.items() if isinstance(value, Tensor)}


def convert_lightning_checkpoint(path: Path, directory: Path, config: str = "big-lama") -> None:
    """best.ckpt -> config.json + model.safetensors that pipeline.weights.loading loads strictly."""
    from pipeline.weights.loading import save_model

    constructor = copy.deepcopy(PUBLISHED_CONFIGS[config])
    model = FFCResNetGenerator(**constructor)
    model.load_state_dict(read_lightning_checkpoint(Path(path)), strict=True)
    save_model(model, Path(directory), constructor)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m pipeline.models.lama BEST_CKPT OUTPUT_DIRECTORY")
    convert_lightning_checkpoint(Path(sys.argv[1]), Path(sys.argv[2]))
