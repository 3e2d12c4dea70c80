"""SIGGRAPH17 generator: published layout, strict load, batching."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipeline.weights.loading import ModelSpec, load_model, save_model
from pipeline.models.siggraph17 import SIGGRAPHGenerator, tiny_config

LAYOUT = Path(__file__).parents[1] / "fixtures" / "checkpoint_layouts" / "siggraph17.json"


def test_full_size_matches_published_layout():
    layout = json.loads(LAYOUT.read_text())
    with torch.device("meta"):
        model = SIGGRAPHGenerator(classes=layout["constructor"]["classes"])
    state = model.state_dict()
    assert list(state) == list(layout["state_dict"])
    for key, (shape, dtype) in layout["state_dict"].items():
        assert list(state[key].shape) == shape and str(state[key].dtype) == f"torch.{dtype}", key
    assert sum(p.numel() for p in model.parameters()) == layout["params"]


def test_published_file_form_loads_strictly(tmp_path):
    torch.manual_seed(0)
    model = SIGGRAPHGenerator(**tiny_config()).eval()
    torch.save(model.state_dict(), tmp_path / "model.pth")  # the published .pth is a flat state dict
    (tmp_path / "config.json").write_text(json.dumps(tiny_config()))
    loaded = load_model(ModelSpec("siggraph17", tmp_path, weights="model.pth"))
    light = torch.rand(2, 1, 64, 64) * 100
    torch.testing.assert_close(loaded(light), model(light))


def test_forward_range_and_batching(tmp_path):
    torch.manual_seed(1)
    save_model(SIGGRAPHGenerator(**tiny_config()), tmp_path / "m", tiny_config())
    model = load_model(ModelSpec("siggraph17", tmp_path / "m"))
    light = torch.rand(3, 1, 256, 256) * 100
    with torch.inference_mode():
        batch = model.predict_ab(light)
        singles = torch.cat([model.predict_ab(light[i:i + 1]) for i in range(3)])
    assert batch.shape == (3, 2, 256, 256) and batch.abs().max() <= 110
    torch.testing.assert_close(batch, singles, atol=1e-5, rtol=0)


def test_wrong_weights_are_refused(tmp_path):
    save_model(SIGGRAPHGenerator(**tiny_config()), tmp_path / "m", tiny_config())
    with pytest.raises(Exception, match="do not match"):
        load_model(ModelSpec("siggraph17", tmp_path / "m", config={"width": 16, "classes": 16}))
