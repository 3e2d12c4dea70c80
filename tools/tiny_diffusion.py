"""Tiny, untrained diffusers/transformers folders with the real architectures (tests and demo).

Everything is built locally (no network): hand-written tokenizer vocabularies, seeded random
weights, ``save_pretrained`` into the same folder layout the published weights use, so the
production loading code is what reads them back. Colors and captions are meaningless.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import torch

# A few whole words so short prompts tokenize to whole-word tokens (otherwise only bytes).
_CLIP_WORDS = ("a", "photo", "of", "man", "woman", "dog", "street", "house", "tree", "sky", "old",
               "color", "colorful", "natural", "colors", "black", "white", "portrait", "city", "car")
_BLIP_WORDS = ("a", "an", "the", "of", "in", "on", "with", "and", "man", "woman", "people", "dog",
               "street", "house", "tree", "sky", "car", "old", "black", "white", "photo", "picture",
               "standing", "sitting", "front", "group", "arafed", "wearing", "hat", "1920s", "city", ".", ",",
               "photography", "bw", "historic", "circa", "1935")  # the caption condition and cleanup words
_CLIP_SPECIALS = ("<|startoftext|>", "<|endoftext|>")


class TinyDiffusion(NamedTuple):
    """Where a tiny build went: the pipeline folder, and the ControlNet folder if separate."""
    pipeline: Path
    controlnet: Path | None


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-level alphabet: every byte gets a printable character."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    codes, extra = printable[:], 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes)))


def write_clip_tokenizer_files(directory: Path) -> int:
    """CLIP-style ``vocab.json`` + ``merges.txt``; returns the vocabulary size."""
    alphabet = list(_bytes_to_unicode().values())
    vocab = {token: index for index, token in enumerate(alphabet + [c + "</w>" for c in alphabet])}
    merges: list[str] = []
    for word in _CLIP_WORDS:  # merge left to right: c,a -> ca; ca,r</w> -> car</w>
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            pair = f"{pieces[0]} {pieces[1]}"
            pieces = [pieces[0] + pieces[1]] + pieces[2:]
            if pair not in merges:
                merges.append(pair)
                vocab.setdefault(pieces[0], len(vocab))
    for special in _CLIP_SPECIALS:
        vocab[special] = len(vocab)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return len(vocab)


def _clip_text_parts(directory: Path, *, projection: bool):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    vocab_size = write_clip_tokenizer_files(directory / "_tokenizer_source")
    tokenizer = CLIPTokenizer.from_pretrained(directory / "_tokenizer_source", local_files_only=True,
                                              model_max_length=77)  # CLIP's context length
    config = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, projection_dim=32, max_position_embeddings=77, hidden_act="gelu",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    encoder = (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)
    return tokenizer, encoder


def _remove_tokenizer_source(directory: Path) -> None:
    source = directory / "_tokenizer_source"
    for path in source.iterdir():
        path.unlink()
    source.rmdir()


# Five blocks: the latent is 16x smaller than the image (SD/SDXL: 8x), so a 512 px generation,
# the published recipe's size, costs about a second on a CPU; the ControlNet's condition
# embedding downsamples as much.
_VAE_CHANNELS = (16, 16, 32, 32, 32)
_VAE_GROUPS = 16
_CONDITION_CHANNELS = (8, 8, 16, 16, 32)


def _tiny_vae():
    from diffusers import AutoencoderKL

    blocks = len(_VAE_CHANNELS)
    return AutoencoderKL(block_out_channels=_VAE_CHANNELS, in_channels=3, out_channels=3, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * blocks,
                         up_block_types=("UpDecoderBlock2D",) * blocks, norm_num_groups=_VAE_GROUPS, sample_size=64)


def _scheduler():
    """stabilityai/stable-diffusion-xl-base-1.0's scheduler_config.json: Euler, "leading" spacing."""
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                  num_train_timesteps=1000, prediction_type="epsilon", steps_offset=1,
                                  timestep_spacing="leading", interpolation_type="linear", use_karras_sigmas=False)


def _tiny_sd_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=32)


def build_tiny_sd_controlnet(directory: Path, seed: int = 0) -> TinyDiffusion:
    """A tiny SD-1.x-style ``StableDiffusionControlNetPipeline`` folder, controlnet/ inside."""
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    directory = Path(directory)
    torch.manual_seed(seed)
    tokenizer, text_encoder = _clip_text_parts(directory, projection=False)
    unet = _tiny_sd_unet()
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=_CONDITION_CHANNELS)
    pipeline = StableDiffusionControlNetPipeline(
        vae=_tiny_vae(), text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, controlnet=controlnet,
        scheduler=_scheduler(), safety_checker=None, feature_extractor=None, image_encoder=None,
        requires_safety_checker=False)
    pipeline.save_pretrained(directory, safe_serialization=True)
    _remove_tokenizer_source(directory)
    return TinyDiffusion(directory, None)


def build_tiny_sdxl_controlnet(directory: Path, seed: int = 0) -> TinyDiffusion:
    """Tiny SDXL laid out like the published weights: a base ``StableDiffusionXLPipeline`` folder
    (two text encoders, text_time UNet) in base/ and a separate ControlNet folder in controlnet/."""
    from diffusers import ControlNetModel, StableDiffusionXLPipeline, UNet2DConditionModel

    directory = Path(directory) / "base"
    controlnet_directory = directory.parent / "controlnet"
    torch.manual_seed(seed)
    tokenizer, text_encoder = _clip_text_parts(directory, projection=False)
    tokenizer_2, text_encoder_2 = _clip_text_parts(directory, projection=True)
    time_embed_dim = 8
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, transformer_layers_per_block=(1, 2),
        addition_embed_type="text_time", addition_time_embed_dim=time_embed_dim,
        # 6 micro-conditioning numbers (original size, crop, target size) + the pooled text embedding.
        projection_class_embeddings_input_dim=6 * time_embed_dim + text_encoder_2.config.projection_dim,
        # Hidden states of both encoders are concatenated.
        cross_attention_dim=text_encoder.config.hidden_size + text_encoder_2.config.hidden_size,
        norm_num_groups=32)
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=_CONDITION_CHANNELS)
    pipeline = StableDiffusionXLPipeline(
        vae=_tiny_vae(), text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer_2, unet=unet, scheduler=_scheduler(), add_watermarker=False)
    pipeline.save_pretrained(directory, safe_serialization=True)
    controlnet.save_pretrained(controlnet_directory, safe_serialization=True)
    _remove_tokenizer_source(directory)
    return TinyDiffusion(directory, controlnet_directory)


def build_tiny_blip(directory: Path, seed: int = 0) -> Path:
    """A tiny BLIP captioner folder (``BlipForConditionalGeneration`` + ``BlipProcessor``)."""
    from transformers import (BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor,
                              BlipProcessor, BlipTextConfig, BlipVisionConfig)

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
    vocab_file = directory / "vocab.txt"
    vocab_file.write_text("\n".join(specials + list(_BLIP_WORDS)) + "\n")
    # Like Salesforce/blip-image-captioning-*: BERT tokenizer with [DEC] as the decoder's start token.
    tokenizer = BertTokenizer(vocab=str(vocab_file), bos_token="[DEC]", extra_special_tokens=["[DEC]"])
    ids = tokenizer.convert_tokens_to_ids
    image_size = 32
    text = BlipTextConfig(
        vocab_size=len(specials) + len(_BLIP_WORDS), hidden_size=32, encoder_hidden_size=32, intermediate_size=37,
        projection_dim=32, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64,
        bos_token_id=ids("[DEC]"), eos_token_id=ids("[SEP]"), sep_token_id=ids("[SEP]"), pad_token_id=ids("[PAD]"))
    vision = BlipVisionConfig(hidden_size=32, intermediate_size=37, projection_dim=32, num_hidden_layers=2,
                              num_attention_heads=4, image_size=image_size, patch_size=8)
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(BlipConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                                                    projection_dim=32))
    image_processor = BlipImageProcessor(size={"height": image_size, "width": image_size})
    BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(directory)
    model.save_pretrained(directory, safe_serialization=True)
    return directory


class TinyOriginalControlNet(NamedTuple):
    checkpoint: Path       # .ckpt: {"state_dict": {"control_model.<ldm name>": tensor, ...}}
    safetensors: Path      # the same tensors as .safetensors
    original_config: Path  # the ControlLDM yaml that describes them
    reference: Path        # the same weights as a diffusers ControlNet folder


_LDM_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
               "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_LDM_FIXED = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
              "conv_in": "input_blocks.0.0", "controlnet_cond_embedding.conv_in": "input_hint_block.0",
              "controlnet_cond_embedding.conv_out": "input_hint_block.14", "controlnet_mid_block": "middle_block_out.0"}


def _ldm_controlnet_name(key: str, layers_per_block: int) -> str:
    """diffusers ControlNet parameter name -> lllyasviel/ControlNet (cldm) name."""
    import re

    module, _, param = key.rpartition(".")
    if module in _LDM_FIXED:
        return f"{_LDM_FIXED[module]}.{param}"
    if match := re.fullmatch(r"controlnet_cond_embedding\.blocks\.(\d+)", module):
        return f"input_hint_block.{2 * int(match[1]) + 2}.{param}"
    if match := re.fullmatch(r"controlnet_down_blocks\.(\d+)", module):
        return f"zero_convs.{match[1]}.0.{param}"
    if match := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions|downsamplers)\.(\d+)\.(.+)", key):
        block, kind, layer, rest = int(match[1]), match[2], int(match[3]), match[4]
        index = 1 + block * (layers_per_block + 1) + (layers_per_block if kind == "downsamplers" else layer)
        if kind == "downsamplers":
            return f"input_blocks.{index}.0.op.{param}"
        if kind == "attentions":
            return f"input_blocks.{index}.1.{rest}"
        name, _, param = rest.rpartition(".")
        return f"input_blocks.{index}.0.{_LDM_RESNET[name]}.{param}"
    if match := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(\w+)\.(\w+)", key):
        return f"middle_block.{2 * int(match[1])}.{_LDM_RESNET[match[2]]}.{match[3]}"
    if match := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
        return f"middle_block.1.{match[1]}"
    raise KeyError(f"no original-format name for {key}")


def build_tiny_original_controlnet(directory: Path, seed: int = 0) -> TinyOriginalControlNet:
    """A tiny ControlNet saved the way lllyasviel/ControlNet-based models (ColorizeNet) ship: an
    original-format ControlLDM checkpoint + yaml, for testing ``tools.convert_controlnet``.
    The standard 8x hint encoder (16, 32, 96, 256) is kept: the converter assumes that layout."""
    import yaml
    from diffusers import ControlNetModel
    from safetensors.torch import save_file

    directory = Path(directory)
    torch.manual_seed(seed)
    controlnet = ControlNetModel.from_unet(_tiny_sd_unet())
    controlnet.save_pretrained(directory / "reference", safe_serialization=True)
    layers = controlnet.config.layers_per_block
    state = {f"control_model.{_ldm_controlnet_name(key, layers)}": value.contiguous()
             for key, value in controlnet.state_dict().items()}
    state["model.diffusion_model.out.2.bias"] = torch.zeros(4)  # the locked SD UNet lives beside it
    save_file(state, directory / "tiny_controlnet.safetensors")
    torch.save({"state_dict": state, "global_step": 1}, directory / "tiny_controlnet.ckpt")
    network = {"image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 32,
               "attention_resolutions": [2], "num_res_blocks": layers, "channel_mult": [1, 2], "num_heads": 4,
               "use_spatial_transformer": True, "transformer_depth": 1, "context_dim": 32, "legacy": False}
    original = {"model": {"target": "cldm.cldm.ControlLDM", "params": {
        "control_stage_config": {"target": "cldm.cldm.ControlNet", "params": {**network, "hint_channels": 3}},
        "unet_config": {"target": "cldm.cldm.ControlledUnetModel", "params": network},
        "first_stage_config": {"target": "ldm.models.autoencoder.AutoencoderKL",
                               "params": {"embed_dim": 4, "ddconfig": {"ch": 32, "ch_mult": [1, 2]}}}}}}
    (directory / "cldm_tiny.yaml").write_text(yaml.safe_dump(original))
    return TinyOriginalControlNet(directory / "tiny_controlnet.ckpt", directory / "tiny_controlnet.safetensors",
                                  directory / "cldm_tiny.yaml", directory / "reference")
