"""The OpenAPI document is true: schemathesis fuzzes every operation (no 500, responses conform)."""

from __future__ import annotations

import traceback

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import checks

from tests.api.conftest import Server


# schemathesis's own strategies use ``random`` (its issue, not the API's)
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
def test_fuzz__every_operation(server: Server) -> None:
    """Each operation gets bounded random (valid and invalid) requests; every check must pass."""
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 17
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), database=None,
                  phases=[Phase.explicit, Phase.generate])
        def fuzz(case) -> None:  # type: ignore[no-untyped-def]
            # A schema-valid body may still name an unknown task or arguments that do not fit that
            # task's signature (the schema cannot tie ``args`` to ``task``): 422 is right there.
            case.call_and_validate(excluded_checks=[checks.positive_data_acceptance])

        try:
            fuzz()
        except Exception as exc:
            failures.append(f"{operation.label}: " + "".join(traceback.format_exception(exc))[-3000:])
    assert not failures, "\n\n".join(failures)


def test_openapi__every_route_and_problem_media_type(http: httpx.Client) -> None:
    doc = http.get("/openapi.json").json()
    routes = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert routes >= {
        ("POST", "/v1/jobs"), ("POST", "/v1/jobs/batch"), ("GET", "/v1/jobs"), ("GET", "/v1/jobs/{job_id}"),
        ("GET", "/v1/jobs/{job_id}/events"), ("POST", "/v1/jobs/{job_id}/cancel"),
        ("POST", "/v1/jobs/{job_id}/retry"), ("GET", "/v1/queues"), ("GET", "/v1/queues/{name}"),
        ("PATCH", "/v1/queues/{name}"), ("POST", "/v1/queues/{name}/redrive"), ("POST", "/v1/queues/{name}/purge"),
        ("GET", "/v1/tasks"), ("GET", "/v1/workers"), ("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"),
    }
    submit = doc["paths"]["/v1/jobs"]["post"]["responses"]
    assert {"200", "202", "400", "409", "413", "422", "503"} <= set(submit)
    assert list(submit["422"]["content"]) == ["application/problem+json"]
