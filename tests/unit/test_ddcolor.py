"""DDColor: published checkpoint layouts, strict loading, forward behaviour, Lab->RGB parity with cv2."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from pipeline.models.ddcolor import (
    ARCHITECTURE,
    PUBLISHED_CONFIGS,
    DDColor,
    build_tiny_model,
    extract_state_dict,
    tiny_config,
)
from pipeline.color.lab_torch import grey_rgb_from_lightness, lab_to_rgb

LAYOUT_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "checkpoint_layouts"
PUBLISHED_NAMES = ["ddcolor_paper_tiny", "ddcolor_paper"]


def _layout(name: str) -> dict:
    return json.loads((LAYOUT_DIR / f"{name}.json").read_text())


def _layout_of(model: torch.nn.Module) -> dict[str, list]:
    return {
        key: [list(tensor.shape), str(tensor.dtype).removeprefix("torch.")]
        for key, tensor in model.state_dict().items()
    }


@pytest.fixture(scope="module")
def tiny_model() -> DDColor:
    return build_tiny_model(input_size=64, seed=0)


def _lightness(batch: int, size: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 1, size, size, generator=generator) * 100.0


def test_architecture_name() -> None:
    assert ARCHITECTURE == "ddcolor"


@pytest.mark.parametrize("name", PUBLISHED_NAMES)
def test_published_config_matches_layout_constructor(name: str) -> None:
    config = PUBLISHED_CONFIGS[name]
    expected = _layout(name)["constructor"]
    assert {**config, "input_size": list(config["input_size"])} == expected


@pytest.mark.parametrize("name", PUBLISHED_NAMES)
def test_state_dict_layout_equals_published_checkpoint(name: str) -> None:
    layout = _layout(name)
    with torch.device("meta"):
        model = DDColor(**layout["constructor"])
    assert _layout_of(model) == layout["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == layout["params"]
    assert model.input_size == 512


@pytest.mark.parametrize("name", PUBLISHED_NAMES)
def test_strict_load_of_published_layout(name: str) -> None:
    layout = _layout(name)
    with torch.device("meta"):
        model = DDColor(**PUBLISHED_CONFIGS[name])
    # A flat dict without torch's _metadata, like a safetensors / HF file.
    state = {
        key: torch.empty(shape, dtype=getattr(torch, dtype), device="meta")
        for key, (shape, dtype) in layout["state_dict"].items()
    }
    model.load_state_dict(extract_state_dict(state), strict=True)
    # Published .pth files nest the same dict under "params", sometimes with the dropped head.
    legacy = {"params": {**state, "encoder.arch.head_cls.weight": torch.empty(4, 768, device="meta")}}
    model.load_state_dict(extract_state_dict(legacy), strict=True)


def test_tiny_build_is_small() -> None:
    with torch.device("meta"):
        model = DDColor(**tiny_config())
    size_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    assert size_bytes < 4 * 1024 * 1024


def test_forward_shape_and_finite_values(tiny_model: DDColor) -> None:
    rgb = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ab = tiny_model(rgb)
    assert ab.shape == (2, 2, 128, 128)
    assert ab.dtype == torch.float32
    assert torch.isfinite(ab).all()
    assert ab.std() > 0  # not a constant map


def test_forward_rejects_sizes_not_multiple_of_32(tiny_model: DDColor) -> None:
    with pytest.raises(ValueError, match="multiples of 32"):
        tiny_model(torch.rand(1, 3, 80, 64))


def test_predict_ab_shape_range_and_upstream_equivalence(tiny_model: DDColor) -> None:
    lightness = _lightness(2, 64, seed=2)
    ab = tiny_model.predict_ab(lightness)
    assert ab.shape == (2, 2, 64, 64)
    assert ab.min() >= -128.0 and ab.max() <= 127.0
    # Upstream builds the grey input with cv2 on float32 HWC images.
    grey = []
    for image in lightness.numpy():
        lab = np.concatenate([image, np.zeros_like(image), np.zeros_like(image)]).transpose(1, 2, 0)
        grey.append(cv2.cvtColor(lab, cv2.COLOR_Lab2RGB).transpose(2, 0, 1))
    with torch.no_grad():
        expected = tiny_model(torch.from_numpy(np.stack(grey))).clamp(-128, 127)
    torch.testing.assert_close(ab, expected, atol=1e-4, rtol=1e-4)


def test_predict_ab_rejects_wrong_size(tiny_model: DDColor) -> None:
    with pytest.raises(ValueError, match=r"\(N,1,64,64\)"):
        tiny_model.predict_ab(_lightness(1, 128, seed=3))


def test_batch_equals_single_calls(tiny_model: DDColor) -> None:
    lightness = _lightness(3, 64, seed=4)
    batched = tiny_model.predict_ab(lightness)
    singles = torch.cat([tiny_model.predict_ab(lightness[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, singles, atol=1e-5, rtol=0)


def test_predict_ab_leaves_no_autograd_graph(tiny_model: DDColor) -> None:
    assert not tiny_model.predict_ab(_lightness(1, 64, seed=5)).requires_grad


def test_round_trip_through_torch_save(tiny_model: DDColor, tmp_path: Path) -> None:
    path = tmp_path / "ddcolor_tiny.pth"
    torch.save({"params": tiny_model.state_dict()}, path)
    reloaded = DDColor(**tiny_config()).eval()
    reloaded.load_state_dict(extract_state_dict(torch.load(path, weights_only=True)), strict=True)
    lightness = _lightness(1, 64, seed=6)
    torch.testing.assert_close(reloaded.predict_ab(lightness), tiny_model.predict_ab(lightness), atol=0, rtol=0)


def test_round_trip_through_safetensors(tiny_model: DDColor, tmp_path: Path) -> None:
    path = tmp_path / "ddcolor_tiny.safetensors"
    save_file(tiny_model.state_dict(), str(path))
    reloaded = DDColor(**tiny_config()).eval()
    reloaded.load_state_dict(extract_state_dict(load_file(str(path))), strict=True)
    lightness = _lightness(1, 64, seed=7)
    torch.testing.assert_close(reloaded.predict_ab(lightness), tiny_model.predict_ab(lightness), atol=0, rtol=0)


def test_extract_state_dict_accepts_flat_and_nested_forms(tiny_model: DDColor) -> None:
    state = tiny_model.state_dict()
    flat = extract_state_dict(dict(state))
    nested = extract_state_dict({"params": state, "iter": 300000})
    assert flat.keys() == nested.keys() == state.keys()
    assert all(flat[key] is state[key] and nested[key] is state[key] for key in state)


def test_extract_state_dict_rejects_foreign_checkpoints() -> None:
    with pytest.raises(ValueError, match="DDColor"):
        extract_state_dict({"conv1.weight": torch.zeros(1)})
    with pytest.raises(TypeError):
        extract_state_dict([torch.zeros(1)])  # type: ignore[arg-type]


def test_build_tiny_model_is_deterministic_and_keeps_global_rng() -> None:
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    first, second = build_tiny_model(seed=3), build_tiny_model(seed=3)
    assert torch.equal(torch.random.get_rng_state(), before)
    for key, tensor in first.state_dict().items():
        assert torch.equal(tensor, second.state_dict()[key]), key


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"encoder_name": "resnet50"}, "encoder_name"),
        ({"decoder_name": "SingleColorDecoder"}, "decoder_name"),
        ({"input_size": (64, 96)}, "square"),
        ({"input_size": (48, 48)}, "multiple of 32"),
        ({"last_norm": "Instance"}, "last_norm"),
    ],
)
def test_constructor_rejects_unsupported_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DDColor(**{**tiny_config(), **kwargs})


def test_lab_to_rgb_matches_cv2_on_random_colours() -> None:
    rng = np.random.default_rng(8)
    lab = np.stack(
        [rng.uniform(0, 100, (48, 48)), rng.uniform(-127, 127, (48, 48)), rng.uniform(-127, 127, (48, 48))],
        axis=-1,
    ).astype(np.float32)
    expected = cv2.cvtColor(lab, cv2.COLOR_Lab2RGB)
    actual = lab_to_rgb(torch.from_numpy(lab).permute(2, 0, 1)[None])[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(actual, expected, atol=1e-4, rtol=0)


def test_grey_rgb_matches_cv2_across_lightness_range() -> None:
    # Dense sweep covers the linear toe (L < 8) and the sRGB gamma kink.
    lightness = np.linspace(0, 100, 4096, dtype=np.float32).reshape(64, 64, 1)
    lab = np.concatenate([lightness, np.zeros_like(lightness), np.zeros_like(lightness)], axis=-1)
    expected = cv2.cvtColor(lab, cv2.COLOR_Lab2RGB)
    actual = grey_rgb_from_lightness(torch.from_numpy(lightness).permute(2, 0, 1)[None])
    actual = actual[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(actual, expected, atol=1e-4, rtol=0)
    assert np.ptp(actual, axis=-1).max() < 1e-5  # a=b=0 is neutral grey
