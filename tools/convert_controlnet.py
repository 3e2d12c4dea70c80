"""Convert an original-format ControlNet (lllyasviel/ControlNet layout, e.g. ColorizeNet) to diffusers.

    python -m tools.convert_controlnet colorizenet.ckpt models/colorizenet-controlnet \\
        --original-config cldm_v21.yaml            # the yaml the model was trained with, or
        --config models/controlnet-sd21-any        # any diffusers ControlNet folder of that architecture

Offline only (diffusers' single-file loader with ``local_files_only``). Only the ``control_model.*``
tensors are kept: a full ControlLDM checkpoint also holds the SD UNet, VAE and text encoder,
which were frozen during ControlNet training and come from the base diffusers pipeline instead.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from pipeline.errors import ModelLoadError

CONTROL_PREFIX = "control_model."


def read_control_tensors(checkpoint: Path, *, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The ``control_model.*`` tensors of a .safetensors or .ckpt/.pt/.pth file."""
    if checkpoint.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(checkpoint, framework="pt") as handle:  # reads only the tensors asked for
            keys = [key for key in handle.keys() if key.startswith(CONTROL_PREFIX)] or list(handle.keys())
            return {key: handle.get_tensor(key) for key in keys}
    try:
        # weights_only refuses arbitrary pickled objects (code execution); training checkpoints with
        # optimizer or callback objects need --trust-pickle, for files from a trusted source only.
        state = torch.load(checkpoint, map_location="cpu", weights_only=not trust_pickle, mmap=True)
    except Exception as error:
        hint = "" if trust_pickle else " (if it holds pickled training objects and you trust it: --trust-pickle)"
        raise ModelLoadError(f"cannot read {checkpoint}: {error}{hint}") from error
    while isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    control = {key: value for key, value in state.items() if key.startswith(CONTROL_PREFIX)}
    return control or state  # a bare ControlNet file (no prefix) is also accepted by diffusers


def convert_controlnet(checkpoint: Path, output: Path, *, config: Path | None = None,
                       original_config: Path | None = None, dtype: torch.dtype = torch.float32,
                       trust_pickle: bool = False) -> Path:
    """Write ``output`` as a diffusers ControlNet folder (config.json + safetensors)."""
    from diffusers import ControlNetModel

    if (config is None) == (original_config is None):
        raise ValueError("pass exactly one of config (a diffusers ControlNet folder) or original_config (yaml)")
    tensors = read_control_tensors(Path(checkpoint), trust_pickle=trust_pickle)
    with tempfile.TemporaryDirectory() as scratch:
        if config is None:
            config = Path(scratch)
            (config / "config.json").write_text(json.dumps(config_from_original(Path(original_config), tensors)))
        config = Path(config)
        nested = (config / "controlnet" / "config.json").is_file()  # a whole ControlNet pipeline folder
        try:
            model = ControlNetModel.from_single_file(tensors, config=str(config), local_files_only=True, dtype=dtype,
                                                     subfolder="controlnet" if nested else None)
        except (OSError, ValueError, KeyError, RuntimeError) as error:
            raise ModelLoadError(f"cannot convert {checkpoint}: {error}") from error
    model.save_pretrained(output, safe_serialization=True)
    return Path(output)


def config_from_original(original_config: Path, tensors: dict[str, torch.Tensor]) -> dict:
    """ControlNetModel config from a ControlLDM yaml. diffusers 0.42.1's own path for this
    (``original_config=``) raises TypeError (it drops the ``checkpoint`` argument), so this is
    its mapping with the call fixed."""
    import yaml
    from diffusers.loaders.single_file_utils import create_unet_diffusers_config_from_ldm

    original = yaml.safe_load(original_config.read_text())
    unet = create_unet_diffusers_config_from_ldm(original, tensors)
    hint_channels = original["model"]["params"]["control_stage_config"]["params"]["hint_channels"]
    keep = ("in_channels", "down_block_types", "block_out_channels", "layers_per_block", "cross_attention_dim",
            "attention_head_dim", "use_linear_projection", "class_embed_type", "addition_embed_type",
            "addition_time_embed_dim", "projection_class_embeddings_input_dim", "transformer_layers_per_block")
    return {"_class_name": "ControlNetModel", "conditioning_channels": hint_channels,
            **{key: unet[key] for key in keep}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="original-format .ckpt / .safetensors")
    parser.add_argument("output", type=Path, help="diffusers ControlNet folder to write")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--original-config", type=Path, help="the ControlLDM yaml (e.g. cldm_v21.yaml)")
    source.add_argument("--config", type=Path, help="a diffusers ControlNet folder with the same architecture")
    parser.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    parser.add_argument("--trust-pickle", action="store_true", help="allow arbitrary pickles in .ckpt (trusted files)")
    args = parser.parse_args(argv)
    written = convert_controlnet(args.checkpoint, args.output, config=args.config,
                                 original_config=args.original_config, dtype=getattr(torch, args.dtype),
                                 trust_pickle=args.trust_pickle)
    print(f"wrote {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
