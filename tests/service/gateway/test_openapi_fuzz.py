"""schemathesis over the gateway's OpenAPI spec, valid and invalid inputs: no operation answers 5xx.

The gateway fronts one real engine. ``--max-inflight 8`` makes huge generated rollouts cheap
(429 at once) instead of minutes of CPU decoding; everything else is the default configuration.
``POST /v1/weights/group`` is left out: it waits for a trainer to join a torch.distributed
rendezvous at the address it names (up to the group timeout), which random input never does;
``test_distributed_push.py`` covers it, including its 4xx answers.
"""

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.procs import free_port, running

EXAMPLES_PER_OPERATION = 25


@pytest.fixture(scope="module")
def fuzzed_gateway(quick_model):
    engine_port, gateway_port = free_port(), free_port()
    with running(["engine", "--model", str(quick_model), "--port", str(engine_port)], engine_port) as engine:
        args = ["serve", "--port", str(gateway_port), "--engine-url", engine, "--max-inflight", "8"]
        with running(args, gateway_port, ready_path="/readyz") as url:
            yield url


def operations(url: str) -> list:
    schema = schemathesis.openapi.from_url(url + "/openapi.json").exclude(
        path="/v1/weights/group", method="POST"
    )
    return [result.ok() for result in schema.get_all_operations()]


def fuzz(url: str, op, mode: GenerationMode) -> list[int] | None:
    """EXAMPLES_PER_OPERATION generated calls of one operation; fails on any 5xx. Returns the status
    codes seen, None when there is nothing to generate (an operation without input has no invalid
    form)."""
    statuses: list[int] = []

    @given(case=op.as_strategy(generation_mode=mode))
    @settings(
        deadline=None,
        suppress_health_check=list(HealthCheck),
        max_examples=EXAMPLES_PER_OPERATION,
        database=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure already names the case
    )
    def no_server_error(case):
        try:
            response = case.call(base_url=url, timeout=120)
            statuses.append(response.status_code)
            assert response.status_code < 500, (op.label, response.status_code, response.text[:500])
            if response.status_code in (400, 409, 413, 422, 429):
                body = response.json()
                # ours: "detail"; SGLang's /generate: "error.message"; SGLang's weight calls: "message"
                said = body.get("detail") or (body.get("error") or {}).get("message") or body.get("message")
                assert said, f"{op.label}: a 4xx must say what was wrong"
        finally:
            # A generated pause holds every later rollout until a resume: keep cases independent.
            if op.path in ("/v1/pause", "/pause_generation"):
                httpx.post(url + "/v1/resume", timeout=60)

    try:
        no_server_error()
    except Unsatisfiable:
        return None
    return statuses


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
def test_no_operation_answers_5xx(fuzzed_gateway, mode):
    # Driven through hypothesis directly: schemathesis' pytest plugin does not load under pytest 9.
    ops = operations(fuzzed_gateway)
    assert len(ops) >= 14  # every route, so a broken spec cannot make this pass vacuously
    seen = {op.label: fuzz(fuzzed_gateway, op, mode) for op in ops}
    fuzzed = [label for label, statuses in seen.items() if statuses]
    spec = httpx.get(fuzzed_gateway + "/openapi.json").json()["paths"]
    with_input = [op.label for op in ops if "requestBody" in spec[op.path][op.method.lower()]]
    assert set(with_input) <= set(fuzzed), set(with_input) - set(fuzzed)
    if mode == GenerationMode.POSITIVE:  # valid input must also get real work done, not only refusals
        assert 200 in seen["POST /v1/rollouts"] and 200 in seen["POST /generate"], seen


def test_the_spec_documents_every_route(fuzzed_gateway):
    paths = httpx.get(fuzzed_gateway + "/openapi.json").json()["paths"]
    for route in ("/v1/rollouts", "/generate", "/v1/weights", "/v1/weights/distributed", "/v1/engines"):
        assert route in paths, route
