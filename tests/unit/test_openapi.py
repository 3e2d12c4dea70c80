"""The OpenAPI document: valid 3.1, and true to the code (routes, form fields, limits, prices).

What the running service answers is checked against it in tests/integration/test_openapi_live.py.
"""
from __future__ import annotations

import re

import pytest
from openapi_spec_validator import OpenAPIV31SpecValidator
from starlette.testclient import TestClient

from auth import OpenAccess
from service.app import build_http_app
from service.web.openapi import DOCS_ASSETS, MAX_SEED, MODELS, PRICES, documented_routes, openapi_document
from service.settings import AppSettings
from service.stages import ADD_ONS, COLORIZERS, STAGES
from storage import LocalStore

NOT_YET_SERVED: set[tuple[str, str]] = set()  # described routes not served yet (none)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """The real HTTP app; its stage runner is never called by these tests."""
    model = {"architecture": "ddcolor", "source": str(tmp_path_factory.mktemp("no-weights"))}
    settings = AppSettings.model_validate({"colorizers": {name: model for name in COLORIZERS}})
    return build_http_app(settings, runner=None, store=LocalStore(tmp_path_factory.mktemp("store")),
                          access=OpenAccess())


def served_routes(app) -> set[tuple[str, str]]:
    served = set()
    for route in app.routes:
        methods = set(route.methods) - {"HEAD"}  # Starlette adds HEAD to every GET route
        served |= {(method, route.path) for method in methods}
    return served


def form_fields(path: str) -> set[str]:
    body = openapi_document()["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"]
    return set(body["schema"]["properties"])


def test_the_document_is_valid_openapi_3_1():
    document = openapi_document()
    assert document["openapi"].startswith("3.1.")
    OpenAPIV31SpecValidator(document).validate()  # raises with the first error


def test_every_served_route_is_documented_and_back(app):
    served, documented = served_routes(app), documented_routes()
    assert served - documented == set(), "served but not in service/web/openapi.py"
    assert documented - served == NOT_YET_SERVED, "documented but not served (or served and still listed pending)"


def test_form_fields_are_the_ones_the_routes_accept():
    from service.contracts import app_check_api, key_api

    assert form_fields("/api/v1/colorize") == set(key_api.COLORIZE_FIELDS)
    assert form_fields("/colorize") == set(app_check_api.COLORIZE_FIELDS)
    assert form_fields("/upload") == set(app_check_api.UPLOAD_FIELDS)


def test_models_prices_and_seed_range_match_the_code():
    from service.errors import ApiError
    from service.contracts.forms import Form, FormPart
    from service.contracts.key_api import guidance

    document = openapi_document()
    assert MODELS == COLORIZERS
    pricing = document["components"]["schemas"]["Pricing"]
    assert pricing["examples"] == [{"unit": "credits", "models": {name: PRICES[name] for name in COLORIZERS},
                                    "addOns": {name: PRICES[name] for name in ADD_ONS}}]
    assert sum(spec.price for spec in STAGES) == sum(PRICES.values()) and PRICES["face_remaster"] == 2
    colorize = document["paths"]["/colorize"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert colorize["schema"]["properties"]["seed"]["maximum"] == MAX_SEED
    assert guidance(Form({"seed": FormPart(value=str(MAX_SEED))}))["seed"] == MAX_SEED
    with pytest.raises(ApiError):
        guidance(Form({"seed": FormPart(value=str(MAX_SEED + 1))}))


def test_the_request_id_rule_is_the_apps():
    from service.web.middleware import _REQUEST_ID

    parameter = openapi_document()["components"]["parameters"]["X-Request-Id"]
    assert parameter["schema"]["pattern"] == f"^{_REQUEST_ID.pattern}$"


def test_every_operation_declares_its_errors_and_the_request_id():
    for path, item in openapi_document()["paths"].items():
        for method, operation in item.items():
            assert operation["responses"]["503"], (method, path)  # the proxy can shed any request
            for status, response in operation["responses"].items():
                assert response["headers"]["X-Request-Id"] == {"$ref": "#/components/headers/X-Request-Id"}
                if status.startswith(("4", "5")):
                    assert response["content"]["application/json"]["schema"]["$ref"].endswith(
                        ("/Error", "/Health", "/Readiness")), (method, path, status)


@pytest.fixture(scope="module")
def docs_client(app):
    with TestClient(app, base_url="http://127.0.0.1") as client:  # a trusted Host
        yield client


def test_docs_page_uses_only_its_own_assets(docs_client):
    page = docs_client.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    referenced = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert referenced and all(not re.match(r"^(?:[a-z]+:|//)", url) for url in referenced), referenced
    assets = {url.removeprefix("docs/") for url in referenced if url.startswith("docs/")}
    assert assets == set(DOCS_ASSETS)
    for name in DOCS_ASSETS:
        asset = docs_client.get(f"/docs/{name}")
        assert asset.status_code == 200 and len(asset.content) > 100, name
    assert docs_client.get("/docs/../pyproject.toml").status_code == 404
    assert docs_client.get("/docs/index.j2").json() == {"detail": "File not found"}
    script = docs_client.get("/docs/docs.js").text
    assert "validatorUrl: null" in script and not re.search(r"https?://", script)


def test_the_document_is_served_as_json(docs_client):
    response = docs_client.get("/openapi.json")
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    assert response.json() == openapi_document()


def test_unknown_routes_and_methods_answer_as_documented(docs_client):
    assert docs_client.get("/nope").json() == {"detail": "Not Found"}
    wrong = docs_client.put("/openapi.json")
    assert wrong.status_code == 405 and wrong.json() == {"detail": "Method Not Allowed"}
    assert "GET" in wrong.headers["allow"]
    untrusted = docs_client.get("/openapi.json", headers={"Host": "evil.example"})
    assert untrusted.status_code == 400 and untrusted.json() == {"detail": "Invalid host header"}
