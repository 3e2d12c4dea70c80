"""GFPGANv1Clean: published layout, strict loading, tiny-instance behaviour."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipeline.models import gfpgan
from pipeline.models.gfpgan import GFPGANv1Clean, extract_state_dict, tiny_config

LAYOUT_FILE = Path(__file__).parents[1] / "fixtures" / "checkpoint_layouts" / "gfpgan_v1.4.json"


@pytest.fixture(scope="module")
def published() -> dict:
    return json.loads(LAYOUT_FILE.read_text())


def build_tiny(seed: int = 0) -> GFPGANv1Clean:
    torch.manual_seed(seed)
    return GFPGANv1Clean(**tiny_config()).eval()


def layout(model: torch.nn.Module) -> dict[str, list]:
    return {k: [list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in model.state_dict().items()}


def test_published_config_builds_exactly_the_published_layout(published: dict) -> None:
    with torch.device("meta"):
        model = GFPGANv1Clean(**published["constructor"])
    expected = {k: [shape, dtype] for k, (shape, dtype) in published["state_dict"].items()}
    assert layout(model) == expected
    assert list(layout(model)) == list(expected)  # same registration order too
    assert sum(p.numel() for p in model.parameters()) == published["params"]
    assert sum(v.numel() for v in model.state_dict().values()) == published["state_dict_numel"]


def test_published_configs_match_the_layout_constructor(published: dict) -> None:
    assert gfpgan.ARCHITECTURE == "gfpgan"
    assert gfpgan.PUBLISHED_CONFIGS["GFPGANv1.4"] == published["constructor"]
    assert gfpgan.PUBLISHED_CONFIGS["GFPGANv1.3"] == published["constructor"]


def test_tiny_config_keeps_the_published_code_paths_but_is_small() -> None:
    config = tiny_config()
    for flag in ("different_w", "sft_half", "input_is_latent"):
        assert config[flag] is True
    model = build_tiny()
    assert model.out_size == config["out_size"]
    size_bytes = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    assert size_bytes < 4 * 2**20


def test_strict_round_trip_through_a_flat_file(tmp_path: Path) -> None:
    source = build_tiny(seed=1)
    torch.save(source.state_dict(), tmp_path / "flat.pth")
    target = build_tiny(seed=2)
    checkpoint = torch.load(tmp_path / "flat.pth", weights_only=True)
    target.load_state_dict(extract_state_dict(checkpoint), strict=True)
    faces = torch.rand(2, 3, 64, 64)
    assert torch.equal(target.restore(faces), source.restore(faces))


def test_nested_checkpoint_prefers_params_ema_like_gfpganer(tmp_path: Path) -> None:
    ema, raw = build_tiny(seed=3), build_tiny(seed=4)
    torch.save({"params_ema": ema.state_dict(), "params": raw.state_dict()}, tmp_path / "GFPGANv1.4.pth")
    target = build_tiny(seed=5)
    target.load_state_dict(extract_state_dict(torch.load(tmp_path / "GFPGANv1.4.pth", weights_only=True)), strict=True)
    faces = torch.rand(1, 3, 64, 64)
    assert torch.equal(target.restore(faces), ema.restore(faces))
    assert not torch.equal(target.restore(faces), raw.restore(faces))


def test_extract_state_dict_falls_back_to_params_then_flat() -> None:
    weights = {"a": torch.zeros(1)}
    assert extract_state_dict({"params": weights}) == weights
    assert extract_state_dict(weights) == weights
    with pytest.raises(ValueError, match="params_ema"):
        extract_state_dict({"epoch": 3, "a": torch.zeros(1)})
    with pytest.raises(TypeError):
        extract_state_dict([torch.zeros(1)])  # type: ignore[arg-type]


def test_strict_load_rejects_a_checkpoint_without_noise_buffers() -> None:
    state = build_tiny().state_dict()
    del state["stylegan_decoder.noises.noise0"]
    with pytest.raises(RuntimeError, match="noise0"):
        build_tiny().load_state_dict(state, strict=True)


def test_project_loader_round_trips_the_tiny_model(tmp_path: Path) -> None:
    from pipeline.weights.loading import ModelSpec, load_model, save_model

    source = build_tiny(seed=6)
    save_model(source, tmp_path / "gfpgan", tiny_config())
    loaded = load_model(ModelSpec(architecture="gfpgan", directory=tmp_path / "gfpgan"))
    faces = torch.rand(1, 3, 64, 64)
    assert torch.equal(loaded.restore(faces), source.restore(faces))


def test_forward_matches_the_upstream_call_contract() -> None:
    model = build_tiny()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        image, rgbs = model(x, return_rgb=False, weight=0.5)  # GFPGANer passes weight; it is ignored
        _, rgbs_all = model(x, return_rgb=True)
    assert image.shape == (2, 3, 64, 64) and rgbs == []
    assert [r.shape[-1] for r in rgbs_all] == [8, 16, 32, 64]


def test_restore_keeps_shape_and_unit_range_and_is_deterministic() -> None:
    model = build_tiny()
    faces = torch.rand(2, 3, 64, 64)
    first = model.restore(faces)
    assert first.shape == faces.shape and first.dtype == torch.float32
    assert float(first.min()) >= 0.0 and float(first.max()) <= 1.0
    assert torch.equal(model.restore(faces), first)  # stored noise, not fresh random noise
    assert not torch.allclose(first, faces)


def test_restoring_a_batch_equals_restoring_each_face() -> None:
    model = build_tiny()
    faces = torch.rand(3, 3, 64, 64)
    singles = torch.cat([model.restore(faces[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(model.restore(faces), singles, atol=1e-5, rtol=0)


def test_restore_rejects_faces_of_the_wrong_size() -> None:
    with pytest.raises(ValueError, match="64"):
        build_tiny().restore(torch.rand(1, 3, 32, 32))


def test_constructor_rejects_non_power_of_two_and_training_only_options() -> None:
    with pytest.raises(ValueError, match="power of two"):
        GFPGANv1Clean(**{**tiny_config(), "out_size": 96})
    with pytest.raises(ValueError, match="decoder_load_path"):
        GFPGANv1Clean(**{**tiny_config(), "decoder_load_path": "stylegan2.pth"})
