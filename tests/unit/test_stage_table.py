"""The stage table drives the graph, the settings, job plans and prices (no Ray cluster needed)."""
from __future__ import annotations

import pytest
from ray.serve._private.build_app import build_app

from deployments.app import DEPLOYMENT_NAMES, build_graph
from service.jobs import JobPlan
from service.settings import AppSettings, load_settings
from service.stages import ADD_ONS, COLORIZERS, STAGES

ARGS = {"colorizers": {"large": {"architecture": "ddcolor", "source": "/m/large"},
                       "tiny": {"architecture": "ddcolor", "source": "/m/tiny"}},
        "face_remaster": {"restorer": {"architecture": "gfpgan", "source": "/m/face"}, "max_faces": 3}}


def test_the_graph_has_one_deployment_per_row_wired_to_the_ingress():
    settings = load_settings(ARGS)
    built = build_app(build_graph(settings, {"ColorizerTiny": {"num_replicas": 3}}), name="colorize")
    deployments = {d.name: d for d in built.deployments}
    assert set(deployments) == set(DEPLOYMENT_NAMES) == {"Ingress", *(spec.deployment for spec in STAGES)}
    assert built.ingress_deployment_name == "Ingress"
    assert deployments["ColorizerTiny"].num_replicas == 3  # per-deployment options by name, as in the YAML
    for spec in STAGES:  # each stage replica gets its row's name and exactly its own settings section
        name, section, _runtime = deployments[spec.deployment].init_args
        assert name == spec.name
        assert section == settings.stage_settings(spec).model_dump(mode="json")
    handles = deployments["Ingress"].init_args[1]
    assert {stage: handle.deployment_name for stage, handle in handles.items()} == {
        spec.name: spec.deployment for spec in STAGES}


def test_settings_have_a_section_per_stage():
    settings = load_settings(ARGS)
    assert settings.stage_settings(STAGES[1]).source == "/m/large"
    assert settings.face_remaster.max_faces == 3
    assert {spec.section[0] for spec in STAGES} <= set(AppSettings.model_fields)


@pytest.mark.parametrize(("add_ons", "price", "order"), [
    ((), 1, ["tiny"]),
    (("clean_scratches",), 2, ["scratch_repair", "tiny"]),
    (("face_remaster",), 3, ["tiny", "face_remaster"]),
    (("face_remaster", "clean_scratches"), 4, ["scratch_repair", "tiny", "face_remaster"]),
])
def test_a_plan_runs_its_stages_in_table_order_and_costs_their_sum(add_ons, price, order):
    plan = JobPlan(model="tiny", add_ons=frozenset(add_ons), prompt="p", seed=1)
    assert [spec.name for spec in plan.stages()] == order
    assert plan.price == price  # the key API's published prices: 1, +1 scratches, +2 faces
    assert [plan.options_for(spec) for spec in plan.stages()] == [
        {"prompt": "p", "seed": 1} if spec.is_colorizer else {} for spec in plan.stages()]


def test_request_vocabulary_comes_from_the_table():
    assert COLORIZERS == ("large", "tiny")
    assert ADD_ONS == ("clean_scratches", "face_remaster")
