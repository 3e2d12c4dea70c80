"""The running service answers as /openapi.json says, and /docs works from the service alone.

schemathesis generates requests from the served document (valid ones, with real photos as
files, and invalid ones) and checks every answer: no 5xx, and a documented status, content type,
body and headers. Bounded: a fixed number of deterministic examples per operation.
"""
from __future__ import annotations

import base64
import os
import re
from collections import Counter

import httpx
import pytest
import requests
import requests.adapters
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.web.openapi import DOCS_ASSETS, documented_routes, openapi_document
from tests.helpers import encode, photo
from tests.integration.conftest import create_key
from tests.unit.test_openapi import NOT_YET_SERVED

pytestmark = pytest.mark.integration

# CI runs a fixed, deterministic sample; OPENAPI_FUZZ_EXAMPLES=200,100 runs a longer random hunt.
_HUNT = os.environ.get("OPENAPI_FUZZ_EXAMPLES")
EXAMPLES_PER_OPERATION = dict(zip((GenerationMode.POSITIVE, GenerationMode.NEGATIVE),
                                  map(int, (_HUNT or "20,12").split(","))))
STATEFUL_EXAMPLES = 40
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance]

# File parts: small real photos most of the time (so jobs run end to end), sometimes junk bytes.
JPEG, PNG = encode(photo(48, 32, seed=1)), encode(photo(40, 40, seed=2), "PNG")
schemathesis.openapi.media_type("image/jpeg", st.sampled_from([JPEG, JPEG, JPEG[:100]]) | st.binary(max_size=64))
schemathesis.openapi.media_type("image/png", st.sampled_from([PNG, PNG]) | st.binary(max_size=64))
# The key API's `image` as text: base64, a data URL, or anything.
schemathesis.openapi.media_type("text/plain", st.sampled_from([
    base64.b64encode(JPEG), b"data:image/png;base64," + base64.b64encode(PNG)]) | st.binary(max_size=64))


@pytest.fixture(scope="module")
def live_schema(service):
    # From the served document, loaded as a dict: from_url would leave /openapi.json itself untested.
    document = httpx.get(f"{service['url']}/openapi.json", timeout=30).json()
    schema = schemathesis.openapi.from_dict(document)
    schema.config.update(base_url=service["url"])
    # Credentials are ours (valid, or left out on purpose), not generated: random ones would only
    # add 401s, and failed authentications are throttled.
    schema.config.generation.update(with_security_parameters=False)
    return schema


@pytest.fixture(scope="module")
def credentials(service) -> dict[str, str]:
    key = create_key(service["args"], credits=1_000_000, rate_per_s=1000, burst=1000)
    return {"X-Api-Key": key, "X-Firebase-AppCheck": service["app_check"],
            "Authorization": f"Bearer {os.environ['COLORIZE_ADMIN_TOKEN']}"}


class _FromAddress(requests.adapters.HTTPAdapter):
    def __init__(self, address: str):
        self.address = address
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, source_address=(self.address, 0), **kwargs)


def session_from(address: str) -> requests.Session:
    """Requests sent from another loopback address. Failed authentications are throttled per client
    address: the fuzzer's (a quarter of its requests carry no credentials) must never throttle the
    rest of the suite, which connects from 127.0.0.1, nor one operation's run another's."""
    session = requests.Session()
    session.mount("http://", _FromAddress(address))
    return session


def test_the_served_document_is_the_source(service):
    response = httpx.get(f"{service['url']}/openapi.json", timeout=30)
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    assert response.json() == openapi_document()


def test_docs_page_and_its_assets_come_from_the_service(service):
    page = httpx.get(f"{service['url']}/docs", timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    referenced = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert {url.removeprefix("docs/") for url in referenced if url.startswith("docs/")} == set(DOCS_ASSETS)
    for name in DOCS_ASSETS:
        asset = httpx.get(f"{service['url']}/docs/{name}", timeout=30)
        assert asset.status_code == 200, name
        assert asset.headers["content-type"].split(";")[0] in ("application/javascript", "text/css", "image/png")
    bundle = httpx.get(f"{service['url']}/docs/swagger-ui-bundle.js", timeout=30)
    assert b"SwaggerUIBundle" in bundle.content and len(bundle.content) > 500_000


@pytest.mark.parametrize("mode", list(EXAMPLES_PER_OPERATION), ids=lambda mode: mode.value)
def test_every_answer_conforms_to_the_document(live_schema, credentials, mode):
    failures: list[str] = []
    statuses: dict[str, Counter] = {}
    for number, result in enumerate(live_schema.get_all_operations()):
        operation = result.ok()
        if (operation.method.upper(), operation.path) in NOT_YET_SERVED:
            continue
        label = f"{operation.method.upper()} {operation.path}"
        statuses[label] = Counter()
        try:
            with session_from(f"127.0.{10 + (mode == GenerationMode.NEGATIVE)}.{number + 1}") as session:
                _fuzz(operation, mode, credentials, statuses[label], session)
        except Exception as exc:  # one operation's failure must not hide another's
            failures.append(f"{label}:\n{exc}")
    print("\n".join(f"{label}: {dict(sorted(counts.items()))}" for label, counts in statuses.items()))
    assert {tuple(label.split(" ")) for label in statuses} == documented_routes() - NOT_YET_SERVED
    assert not failures, "\n\n".join(failures)


def _fuzz(operation, mode: GenerationMode, credentials: dict[str, str], statuses: Counter,
          session: requests.Session) -> None:
    secured = bool(operation.definition.raw.get("security"))

    @settings(max_examples=EXAMPLES_PER_OPERATION[mode], deadline=None, derandomize=not _HUNT, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode), authenticated=st.sampled_from([True, True, True, False]))
    def check(case, authenticated: bool) -> None:
        response = case.call(headers=credentials if authenticated else None, session=session, timeout=60)
        statuses[response.status_code] += 1
        case.validate_response(response, checks=CHECKS)
        assert authenticated or not secured or response.status_code >= 400, \
            f"answered {response.status_code} without credentials:\n{case.as_curl_command()}"

    check()


def test_linked_requests_conform(live_schema, credentials):
    """The document's links (upload -> its file, colorize -> download and public result), followed
    by schemathesis's state machine: stored files come back as documented, not only 404s."""
    statuses: dict[str, Counter] = {}
    session = session_from("127.0.12.1")

    class Workflow(live_schema.as_state_machine()):
        def get_call_kwargs(self, case):
            return {"headers": credentials, "session": session, "timeout": 60}

        def validate_response(self, response, case, additional_checks=None, **kwargs):
            statuses.setdefault(case.operation.label, Counter())[response.status_code] += 1
            case.validate_response(response, checks=CHECKS)

    Workflow.run(settings=settings(max_examples=STATEFUL_EXAMPLES, stateful_step_count=3, deadline=None,
                                   derandomize=not _HUNT, database=None, phases=[Phase.generate],
                                   suppress_health_check=list(HealthCheck)))
    print("\n".join(f"{label}: {dict(sorted(counts.items()))}" for label, counts in sorted(statuses.items())))
    for linked in ("GET /uploads/{filename}", "GET /results/{filename}", "GET /download/{result_id}"):
        assert statuses.get(linked, Counter())[200] > 0, (linked, statuses)


def test_undocumented_methods_answer_405_with_allow(service):
    for path, item in openapi_document()["paths"].items():
        if ("GET", path) in NOT_YET_SERVED:
            continue
        url = service["url"] + path.replace("{result_id}", "x").replace("{filename}", "x.jpg").replace(
            "{asset}", "docs.js")
        for method in ("PUT", "DELETE", "PATCH", "GET", "POST"):
            if method.lower() in item:
                continue
            response = httpx.request(method, url, timeout=30)
            assert response.status_code == 405, (method, path, response.status_code)
            assert response.json() == {"detail": "Method Not Allowed"}
            allowed = {name.strip() for name in response.headers["allow"].split(",")}
            assert {name.upper() for name in item} <= allowed, (method, path, allowed)
