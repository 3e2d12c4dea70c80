"""pipeline.weights.loading: strict, atomic, with clear errors."""
from __future__ import annotations

import json

import pytest
import torch

from pipeline.errors import ModelLoadError
from pipeline.weights.loading import ModelSpec, load_model, save_model
from pipeline.models.siggraph17 import SIGGRAPHGenerator, tiny_config


@pytest.fixture()
def saved(tmp_path):
    save_model(SIGGRAPHGenerator(**tiny_config()), tmp_path / "model", tiny_config())
    return tmp_path / "model"


def test_round_trip_is_exact(saved):
    loaded = load_model(ModelSpec("siggraph17", saved))
    assert not loaded.training
    assert json.loads((saved / "config.json").read_text()) == tiny_config()


@pytest.mark.parametrize("mutate,message", [
    (lambda d: __import__("shutil").rmtree(d), "does not exist"),
    (lambda d: (d / "config.json").unlink(), "config.json is missing"),
    (lambda d: (d / "config.json").write_text("{nope"), "not valid JSON"),
    (lambda d: (d / "model.safetensors").unlink(), "no weights file"),
    (lambda d: (d / "model.safetensors").write_bytes(b"garbage"), "cannot read weights"),
    (lambda d: (d / "config.json").write_text(json.dumps({"bogus": 1})), "bad constructor"),
])
def test_errors_say_what_is_wrong(saved, mutate, message):
    mutate(saved)
    with pytest.raises(ModelLoadError, match=message):
        load_model(ModelSpec("siggraph17", saved))


def test_missing_keys_refused(saved, tmp_path):
    state = SIGGRAPHGenerator(**tiny_config()).state_dict()
    state.pop("model_out.0.weight")
    torch.save(state, saved / "partial.pth")
    with pytest.raises(ModelLoadError, match="model_out.0.weight"):
        load_model(ModelSpec("siggraph17", saved, weights="partial.pth"))


def test_published_config_names(saved):
    with pytest.raises(ModelLoadError, match="no published config"):
        load_model(ModelSpec("siggraph17", saved, config="nope"))
    with pytest.raises(ValueError, match="unknown architecture"):
        load_model(ModelSpec("resnet", saved))


def test_save_replaces_atomically(saved):
    save_model(SIGGRAPHGenerator(**tiny_config()), saved, tiny_config())
    assert sorted(p.name for p in saved.iterdir()) == ["config.json", "model.safetensors"]
    assert not [p for p in saved.parent.iterdir() if p.name.startswith(".")]
