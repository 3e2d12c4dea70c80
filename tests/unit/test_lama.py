"""LaMa: Big-LaMa checkpoint layout, strict loading, LamaInpainter pre/post-processing and batching,
and ScratchRepairer with LaMa plugged in. Tiny random-weight generators: outputs are not meaningful
fills, only their shapes, where they land and how batching treats them are checked."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from skimage import data

from pipeline.stages.inpainting import LamaInpainter
from pipeline.models import lama, model_class
from pipeline.models.lama import FFCResNetGenerator, extract_state_dict, tiny_config
from pipeline.models.lama_ffc import FourierUnit
from pipeline.weights.loading import ModelSpec, load_model
from pipeline.stages.scratch_repair import ScratchRepairer

pytestmark = pytest.mark.timeout(60)

# configs/training/big-lama.yaml (and the published big-lama/config.yaml), ${...} resolved by hand.
BIG_LAMA_YAML_GENERATOR = {
    "input_nc": 4, "output_nc": 3, "ngf": 64, "n_downsampling": 3, "n_blocks": 18, "add_out_act": "sigmoid",
    "init_conv_kwargs": {"ratio_gin": 0, "ratio_gout": 0, "enable_lfu": False},
    "downsample_conv_kwargs": {"ratio_gin": 0, "ratio_gout": 0, "enable_lfu": False},
    "resnet_conv_kwargs": {"ratio_gin": 0.75, "ratio_gout": 0.75, "enable_lfu": False},
}


def _expected_big_lama_sizes() -> tuple[int, int, int]:
    """(parameters, state-dict elements, state-dict keys) worked out from the upstream code by hand."""
    def bn(c: int) -> tuple[int, int, int]:  # weight+bias, + running mean/var + num_batches_tracked, 5 keys
        return 2 * c, 4 * c + 1, 5

    convs = [(4 * 64 * 49, 1), (64 * 128 * 9, 1), (128 * 256 * 9, 1), (256 * 128 * 9 + 256 * 384 * 9, 2)]
    norms = [64, 128, 256, 128, 384]
    # one FFC_BN_ACT of a resnet block: 128 local / 384 global channels
    block_convs = [(128 * 128 * 9, 1), (128 * 384 * 9, 1), (384 * 128 * 9, 1),  # l2l, l2g, g2l
                   (384 * 192, 1), (384 * 384, 1), (192 * 384, 1)]  # g2g: conv1.0, fu.conv_layer, conv2
    block_norms = [192, 384, 128, 384]  # conv1.1, fu.bn, bn_l, bn_g
    convs += block_convs * 36
    norms += block_norms * 36
    convs += [(512 * 256 * 9 + 256, 2), (256 * 128 * 9 + 128, 2), (128 * 64 * 9 + 64, 2), (64 * 3 * 49 + 3, 2)]
    norms += [256, 128, 64]
    params = sum(n for n, _ in convs) + sum(bn(c)[0] for c in norms)
    elements = params + sum(bn(c)[1] - bn(c)[0] for c in norms)
    keys = sum(k for _, k in convs) + 5 * len(norms)
    return params, elements, keys


def _tiny(seed: int = 0) -> FFCResNetGenerator:
    torch.manual_seed(seed)
    model = FFCResNetGenerator(**tiny_config())
    for module in model.modules():  # non-trivial BN statistics, so every path shapes the output
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _image(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _mask(height: int, width: int, seed: int) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    rng = np.random.default_rng(seed)
    y, x = int(rng.integers(0, height - 8)), int(rng.integers(0, width - 8))
    mask[y : y + 8, x : x + 6] = 255
    mask[:, width // 2] = 255  # a one-pixel vertical scratch
    return mask


def test_big_lama_state_dict_matches_the_published_layout() -> None:
    assert lama.PUBLISHED_CONFIGS["big-lama"] == BIG_LAMA_YAML_GENERATOR
    assert model_class("lama") is FFCResNetGenerator
    with torch.device("meta"):
        model = FFCResNetGenerator(**lama.PUBLISHED_CONFIGS["big-lama"])
    state = model.state_dict()
    params = sum(p.numel() for p in model.parameters())
    elements = sum(v.numel() for v in state.values())
    print(f"Big-LaMa generator: {params:,} parameters, {elements:,} state-dict elements, {len(state)} keys")
    assert (params, elements, len(state)) == _expected_big_lama_sizes() == (50_975_875, 51_057_179, 989)
    shapes = {key: tuple(value.shape) for key, value in state.items()}
    assert shapes["model.1.ffc.convl2l.weight"] == (64, 4, 7, 7)
    assert shapes["model.4.ffc.convl2l.weight"] == (128, 256, 3, 3)
    assert shapes["model.4.ffc.convl2g.weight"] == (384, 256, 3, 3)
    assert shapes["model.4.bn_g.running_var"] == (384,)
    assert shapes["model.5.conv1.ffc.convg2l.weight"] == (128, 384, 3, 3)
    assert shapes["model.22.conv2.ffc.convg2g.conv1.0.weight"] == (192, 384, 1, 1)
    assert shapes["model.22.conv2.ffc.convg2g.conv1.1.num_batches_tracked"] == ()
    assert shapes["model.22.conv2.ffc.convg2g.fu.conv_layer.weight"] == (384, 384, 1, 1)
    assert shapes["model.22.conv2.ffc.convg2g.conv2.weight"] == (384, 192, 1, 1)
    assert shapes["model.24.weight"] == (512, 256, 3, 3) and shapes["model.24.bias"] == (256,)
    assert shapes["model.31.running_mean"] == (64,)
    assert shapes["model.34.weight"] == (3, 64, 7, 7) and shapes["model.34.bias"] == (3,)
    # Sequential indices with state: input conv, 3 downsamplers, 18 blocks, 3x (ConvT, BN), output conv.
    indices = {int(key.split(".")[1]) for key in state}
    assert indices == {*range(1, 23), 24, 25, 27, 28, 30, 31, 34}
    assert not any("lfu" in key or "gate" in key for key in state)  # enable_lfu false, no gating


def test_fourier_unit_interleaves_real_and_imaginary_parts_per_channel() -> None:
    unit = FourierUnit(2, 2).eval()
    swap = torch.zeros(4, 4, 1, 1)
    for c in range(2):  # channel 2c is channel c's real part, 2c+1 its imaginary part
        swap[2 * c, 2 * c + 1] = swap[2 * c + 1, 2 * c] = 1
    unit.conv_layer.weight.data.copy_(swap)
    x = torch.randn(1, 2, 6, 10)
    spectrum = torch.fft.rfftn(x, dim=(-2, -1), norm="ortho")
    scale = (1 + unit.bn.eps) ** -0.5
    expected_spectrum = torch.complex(spectrum.imag.relu(), spectrum.real.relu()) * scale
    expected = torch.fft.irfftn(expected_spectrum, s=(6, 10), dim=(-2, -1), norm="ortho")
    assert torch.allclose(unit(x), expected, atol=1e-5)


def test_fourier_path_gives_a_global_receptive_field() -> None:
    model = _tiny()
    x = torch.rand(1, 4, 128, 128)
    nudged = x.clone()
    nudged[..., 0, 0] += 1.0
    with torch.no_grad():
        far_corner = (model(nudged) - model(x))[..., -8:, -8:]
    assert far_corner.abs().max() > 1e-6  # 127 px away: far beyond what the 3x3/7x7 convs reach


def test_strict_round_trip_flat_and_lightning_wrapped(tmp_path: Path) -> None:
    source, target = _tiny(seed=1), _tiny(seed=2)
    flat = source.state_dict()
    lightning = {"state_dict": {**{f"generator.{k}": v for k, v in flat.items()},
                                "discriminator.model0.0.weight": torch.zeros(4, 3, 3, 3),
                                "loss_resnet_pl.impl.conv1.weight": torch.zeros(2)},
                 "epoch": 7, "global_step": 123}
    torch.save(flat, tmp_path / "flat.pth")
    torch.save(lightning, tmp_path / "best.ckpt")
    x = torch.rand(2, 4, 32, 48)
    for name in ("flat.pth", "best.ckpt"):
        target.load_state_dict(extract_state_dict(torch.load(tmp_path / name, weights_only=True)), strict=True)
        with torch.no_grad():
            assert torch.equal(target(x), source(x)), name


_UNPICKLED: list[str] = []


def _record(tag: str) -> str:
    _UNPICKLED.append(tag)
    return tag


class _TrainingConfig:
    """Stands for the omegaconf objects pickled into best.ckpt; unpickling it would run _record."""

    def __reduce__(self) -> tuple:
        return (_record, ("config was unpickled",))


def test_lightning_checkpoint_converts_without_running_pickled_objects(tmp_path: Path) -> None:
    source = _tiny(seed=3)
    checkpoint = {"state_dict": {f"generator.{k}": v for k, v in source.state_dict().items()},
                  "hyper_parameters": _TrainingConfig()}
    torch.save(checkpoint, tmp_path / "best.ckpt")
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(tmp_path / "best.ckpt", weights_only=True)  # why a converter is needed
    state = lama.read_lightning_checkpoint(tmp_path / "best.ckpt")
    assert not _UNPICKLED and set(state) == set(source.state_dict())
    constructor = tiny_config()
    model = FFCResNetGenerator(**constructor)
    model.load_state_dict(state, strict=True)
    from pipeline.weights.loading import save_model
    save_model(model, tmp_path / "lama", constructor)
    loaded = load_model(ModelSpec("lama", tmp_path / "lama"))
    x = torch.rand(1, 4, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), source(x))


@pytest.fixture(scope="module")
def inpainter() -> LamaInpainter:
    return LamaInpainter(_tiny())


@pytest.mark.parametrize("size", [(37, 53), (40, 56), (9, 11), (64, 17)])
def test_odd_sizes_are_padded_and_cropped_back(inpainter: LamaInpainter, size: tuple[int, int]) -> None:
    image, mask = _image(*size, seed=1), _mask(*size, seed=2)
    seen: list[tuple[int, ...]] = []
    hook = inpainter.generator.register_forward_hook(lambda _m, inputs, _o: seen.append(tuple(inputs[0].shape)))
    try:
        [result] = inpainter.inpaint_batch([image], [mask])
    finally:
        hook.remove()
    padded = tuple(max(16, -(-side // 8) * 8) for side in size)
    assert seen == [(1, 4, *padded)]
    assert result.shape == image.shape and result.dtype == np.uint8


def test_network_input_follows_upstream_preprocessing(inpainter: LamaInpainter) -> None:
    image, mask = _image(37, 53, seed=3), _mask(37, 53, seed=4)
    captured: list[torch.Tensor] = []
    hook = inpainter.generator.register_forward_hook(lambda _m, inputs, _o: captured.append(inputs[0].clone()))
    try:
        inpainter.inpaint_batch([image], [mask // 255 * 7])  # any non-zero value is a hole, as upstream
    finally:
        hook.remove()
    [x] = captured[0].numpy()
    pixels = np.pad(image.transpose(2, 0, 1) / np.float32(255), ((0, 0), (0, 3), (0, 3)), mode="symmetric")
    hole = np.pad(mask > 0, ((0, 3), (0, 3)), mode="symmetric")
    assert np.array_equal(x[3], hole.astype(np.float32))
    assert np.array_equal(x[:3], (pixels * ~hole).astype(np.float32))
    assert np.array_equal(x[:3, 37:, :53], x[:3, 36:33:-1, :53])  # bottom rows mirror, edge row repeated


def test_only_masked_pixels_change(inpainter: LamaInpainter) -> None:
    image, mask = _image(37, 53, seed=5), _mask(37, 53, seed=6)
    [result] = inpainter.inpaint_batch([image], [mask])
    hole = mask > 0
    assert np.array_equal(result[~hole], image[~hole])  # bit-exact, not recomposed in float
    assert (result[hole] != image[hole]).any()
    [prediction] = inpainter.predict([image], [hole], (40, 56))
    assert np.array_equal(result[hole], prediction[hole])
    [untouched] = inpainter.inpaint_batch([image], [np.zeros_like(mask)])
    assert np.array_equal(untouched, image)


def test_batch_matches_singles_with_one_forward_per_size_group(inpainter: LamaInpainter) -> None:
    sizes = [(37, 53), (64, 48), (40, 56), (33, 49), (64, 48)]  # pads to 40x56 (x3) and 64x48 (x2)
    images = [_image(*s, seed=10 + i) for i, s in enumerate(sizes)]
    masks = [_mask(*s, seed=20 + i) for i, s in enumerate(sizes)]
    calls: list[int] = []
    hook = inpainter.generator.register_forward_hook(lambda _m, inputs, _o: calls.append(len(inputs[0])))
    try:
        batch = inpainter.inpaint_batch(images, masks)
    finally:
        hook.remove()
    assert sorted(calls) == [2, 3]
    singles = [inpainter.inpaint_batch([image], [mask])[0] for image, mask in zip(images, masks)]
    for from_batch, single in zip(batch, singles):
        # uint8: equal to within 1 level (float noise can cross a truncation boundary); measured: equal
        assert np.abs(from_batch.astype(np.int16) - single.astype(np.int16)).max() <= 1
    # float: the generator itself, batched vs alone
    x = torch.rand(3, 4, 40, 56)
    with torch.no_grad():
        together = inpainter.generator(x)
        alone = torch.cat([inpainter.generator(x[i : i + 1]) for i in range(3)])
    assert torch.allclose(together, alone, atol=1e-5)


def test_rejects_mismatched_inputs(inpainter: LamaInpainter) -> None:
    with pytest.raises(ValueError, match="masks"):
        inpainter.inpaint_batch([_image(20, 20, 0)], [])
    with pytest.raises(ValueError, match="mask 0"):
        inpainter.inpaint_batch([_image(20, 20, 0)], [np.zeros((20, 21), np.uint8)])
    with pytest.raises(ValueError, match="image 0"):
        inpainter.inpaint_batch([np.zeros((20, 20), np.uint8)], [np.zeros((20, 20), np.uint8)])


def test_scratch_repairer_uses_the_lama_inpainter_inside_the_mask_only(inpainter: LamaInpainter) -> None:
    clean = np.ascontiguousarray(np.stack([cv2.resize(data.camera(), (192, 192))] * 3, axis=-1))
    damaged = clean.copy()
    cv2.line(damaged, (20, 10), (170, 180), (250, 250, 250), 1)
    calls: list[int] = []

    def counting_inpainter(images: list[np.ndarray], masks: list[np.ndarray]) -> list[np.ndarray]:
        calls.append(len(images))
        return inpainter(images, masks)

    with_lama = ScratchRepairer(inpainter=counting_inpainter)
    with_cv2 = ScratchRepairer()
    mask = with_cv2.detect(damaged) > 0
    scratch = np.abs(damaged.astype(np.int16) - clean.astype(np.int16)).max(axis=2) > 32
    assert mask[scratch].mean() > 0.7  # the detector found most of the scratch (measured 0.78)
    repaired = with_lama.run_batch([damaged, clean[:8, :8].copy(), damaged])
    assert calls == [2]  # one call for the damaged images; the too-small one never reaches it
    assert np.array_equal(repaired[1], clean[:8, :8])
    assert np.array_equal(repaired[0], repaired[2])
    cv2_repaired = with_cv2.repair(damaged)
    differs = (repaired[0] != cv2_repaired).any(axis=2)
    assert differs.any() and not differs[~mask].any()
    assert np.array_equal(repaired[0][~mask], damaged[~mask])
    assert np.array_equal(with_lama.repair(damaged), repaired[0])
