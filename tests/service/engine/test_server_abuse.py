"""``bebop engine`` against careless and hostile clients: every bad request is a 4xx with a message,
harms no other request, and leaves nothing queued or running; a client that goes away aborts its
work; only token holders get in. One engine process (with a token) serves the whole module."""

import json
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.procs import BEBOP, free_port

TOKEN = "engine-secret-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def engine(quick_model):
    port = free_port()
    cmd = [BEBOP, "engine", "--model", str(quick_model), "--port", str(port)]
    cmd += ["--max-running", "4", "--max-queue", "16", "--context-length", "128"]
    proc = subprocess.Popen(cmd, env={**os.environ, "BEBOP_ENGINE_TOKEN": TOKEN})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, "the engine exited during start-up"
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def post(url, path, body=None, content=None, **kw):
    kw.setdefault("headers", AUTH)
    kw.setdefault("timeout", 60)
    if content is not None:
        return httpx.post(url + path, content=content, **kw)
    return httpx.post(url + path, json=body, **kw)


def idle(url, timeout=10.0):
    """Wait until nothing runs or waits in the engine; return its server_info."""
    deadline = time.monotonic() + timeout
    while True:
        info = httpx.get(url + "/server_info", headers=AUTH, timeout=10).json()
        if info["running_requests"] == 0 and info["queued_requests"] == 0:
            return info
        assert time.monotonic() < deadline, f"requests left behind: {info}"
        time.sleep(0.05)


BAD_BODIES = [
    # huge integers that used to overflow in prefill, hang the request and abort everyone else's
    b'{"input_ids": [5, 6], "sampling_params": {"top_k": 9223372036854775808}}',
    b'{"input_ids": [5, 6], "sampling_params": {"top_k": -9223372036854775809}}',
    b'{"input_ids": [5, 6], "sampling_params": {"max_new_tokens": 1e309}}',
    b'{"input_ids": [5, 6], "sampling_params": {"top_k": Infinity}}',
    b'{"input_ids": [5, 6], "sampling_params": {"top_k": NaN}}',
    b'{"input_ids": [5, 6], "sampling_params": {"stop_token_ids": [Infinity]}}',
    b'{"input_ids": [5, 6], "sampling_params": {"stop_token_ids": "abc"}}',
    b'{"input_ids": [5, 6], "sampling_params": {"sampling_seed": Infinity}}',
    b'{"input_ids": [5, 6], "sampling_params": {"sampling_seed": 18446744073709551616}}',
    b'{"input_ids": [5, 6], "sampling_params": {"temperature": NaN}}',
    b'{"input_ids": [5, 6], "sampling_params": {"temperature": 1e309}}',
    b'{"input_ids": [5, 6], "sampling_params": {"top_p": -Infinity}}',
    b'{"input_ids": [5, 6], "sampling_params": {"max_new_tokens": 2.5}}',
    b'{"input_ids": [5, 6], "sampling_params": {"ignore_eos": "no"}}',
    b'{"input_ids": [9223372036854775808]}',
    b'{"input_ids": [1.5]}',
    b'{"input_ids": [[1], 2]}',
    b'{"text": "\\ud800 lone surrogate"}',
    b'{"text": ["fine", "\\udfff"]}',
    b'{"input_ids": [5], "rid": 7}',
    b"[" * 100_000 + b"]" * 100_000,
    b'{"input_ids": [5], "sampling_params": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5001,
    b"\xff\xfe not utf-8",
    b"",
]


def test_bad_generate_bodies_are_4xx_and_harm_no_one(engine):
    long = {"input_ids": [5, 6, 7], "sampling_params": {"max_new_tokens": 60, "ignore_eos": True}}
    with ThreadPoolExecutor(1) as pool:
        bystander = pool.submit(post, engine, "/generate", long)
        codes = {}
        for raw in BAD_BODIES:
            r = post(engine, "/generate", content=raw)
            codes[raw[:60]] = r.status_code
            assert 400 <= r.status_code < 500, (raw[:80], r.status_code, r.text[:300])
            assert r.json()["error"]["message"], raw[:80]
        out = bystander.result()
    assert out.status_code == 200 and out.json()["meta_info"]["finish_reason"]["type"] == "length"
    idle(engine)


@pytest.mark.parametrize("top_k", [10**9, 2**31 - 1])
def test_top_k_beyond_the_vocabulary_means_off(engine, top_k):
    body = {"input_ids": [5, 6], "sampling_params": {"max_new_tokens": 4, "sampling_seed": 3, "top_k": top_k}}
    off = {**body, "sampling_params": {**body["sampling_params"], "top_k": -1}}
    a, b = post(engine, "/generate", body), post(engine, "/generate", off)
    assert a.status_code == 200, a.text
    assert a.json()["output_ids"] == b.json()["output_ids"]


def paused(engine):
    assert post(engine, "/pause_generation", {"mode": "in_place"}).status_code == 200


def wait_queued(engine, n):
    deadline = time.monotonic() + 30
    while httpx.get(engine + "/server_info", headers=AUTH).json()["queued_requests"] < n:
        assert time.monotonic() < deadline, "the request never reached the queue"
        time.sleep(0.02)


def test_stream_with_a_batch_is_refused_before_anything_is_queued(engine):
    """Issue 8, bug 4: the batch was submitted, then the call refused; the requests kept decoding."""
    paused(engine)
    try:
        body = {"input_ids": [[5, 6], [7, 8]], "sampling_params": {"max_new_tokens": 50}, "stream": True}
        r = post(engine, "/generate", body)
        assert r.status_code == 400 and "stream" in r.json()["error"]["message"]
        info = httpx.get(engine + "/server_info", headers=AUTH).json()
        assert info["queued_requests"] == 0 and info["running_requests"] == 0, info
    finally:
        post(engine, "/continue_generation", {})


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_goes_away_aborts_its_requests(engine, stream):
    paused(engine)  # the request waits in the queue, so only the disconnect can end it
    try:
        body = {"input_ids": [5, 6], "sampling_params": {"max_new_tokens": 50}, "stream": stream}
        with ThreadPoolExecutor(1) as pool:
            gone = pool.submit(post, engine, "/generate", body, timeout=1.5)
            wait_queued(engine, 1)
            with pytest.raises(httpx.ReadTimeout):
                gone.result()
        idle(engine)
    finally:
        post(engine, "/continue_generation", {})


def test_a_chunked_body_over_the_cap_is_413(engine):
    def chunks():
        for _ in range(33):
            yield b" " * (1 << 20)

    r = httpx.post(engine + "/generate", content=chunks(), headers=AUTH, timeout=60)
    assert r.status_code == 413
    small = b'{"input_ids": [5], "sampling_params": {"max_new_tokens": 2}}'
    r = httpx.post(engine + "/generate", content=iter([small[:10], small[10:]]), headers=AUTH, timeout=60)
    assert r.status_code == 200, r.text  # chunked bodies under the cap still work


def test_the_token_is_required_everywhere_but_health(engine):
    body = {"input_ids": [5], "sampling_params": {"max_new_tokens": 2}}
    assert httpx.get(engine + "/health").status_code == 200
    for headers in ({}, {"Authorization": TOKEN}, {"Authorization": "Bearer wrong-token-123456"}):
        assert httpx.post(engine + "/generate", json=body, headers=headers).status_code == 401
        assert httpx.get(engine + "/model_info", headers=headers).status_code == 401
        r = httpx.post(engine + "/update_weights_from_disk", json={"model_path": "/tmp"}, headers=headers)
        assert r.status_code == 401
    assert post(engine, "/generate", body).status_code == 200


def test_weights_load_only_from_the_engine_roots(engine, tmp_path):
    for path in ("/etc", str(tmp_path), "/tmp/../etc", "a\x00b"):
        r = post(engine, "/update_weights_from_disk", {"model_path": path, "weight_version": "x"})
        assert r.status_code == 400 and not r.json()["success"], r.text
    assert httpx.get(engine + "/model_info", headers=AUTH).json()["weight_version"] == "default"


@pytest.mark.parametrize(
    "body",
    [
        b'{"master_address": "127.0.0.1", "master_port": 1e309, "rank_offset": 1, "world_size": 2}',
        b'{"master_address": "127.0.0.1", "master_port": "x", "rank_offset": 1, "world_size": 2}',
    ],
)
def test_bad_group_requests_are_400(engine, body):
    r = post(engine, "/init_weights_update_group", content=body)
    assert r.status_code == 400, r.text


@pytest.mark.parametrize(
    "body",
    [
        {"names": ["embed.weight"], "dtypes": ["float32"], "shapes": [[2**40]]},
        {"names": "abc", "dtypes": ["float32"], "shapes": [[1]]},
        {"names": ["a"], "dtypes": ["float32"], "shapes": [[1]], "weight_version": ["v"]},
    ],
)
def test_malformed_push_manifests_are_400_before_any_allocation(engine, body):
    r = post(engine, "/update_weights_from_distributed", body)
    assert r.status_code == 400, r.text


def test_no_token_no_listening_beyond_loopback():
    env = {k: v for k, v in os.environ.items() if k != "BEBOP_ENGINE_TOKEN"}
    out = subprocess.run(
        [BEBOP, "engine", "--host", "0.0.0.0", "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert out.returncode == 2 and "only listens on loopback" in out.stderr


def test_the_spec_documents_the_generate_body(engine):
    spec = httpx.get(engine + "/openapi.json", headers=AUTH).json()
    assert "requestBody" in spec["paths"]["/generate"]["post"]
    assert json.dumps(spec)  # serialisable


# ---------------------------------------------------------------------------------------- fuzzing
EXTREMES = [2**63, -(2**63) - 1, 2**64, 1e309, -1e309, float("nan"), -1, -(2**31), 0, 1.5, True, "7", None]
FIELDS = ["temperature", "top_p", "top_k", "max_new_tokens", "stop_token_ids", "ignore_eos", "sampling_seed"]


def _raw(body) -> bytes:
    """JSON with NaN/Infinity as Python writes them (and as some clients send them)."""
    return json.dumps(body, allow_nan=True).encode()


def test_fuzz_engine_generate_with_numeric_extremes(engine):
    """Hypothesis: a valid body with any sampling field, input id or flag replaced by an extreme
    value, or wrapped in a list; zero 5xx, and the engine ends idle."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    extreme = st.sampled_from(EXTREMES) | st.integers() | st.floats(allow_nan=True, allow_infinity=True)
    value = extreme | st.lists(extreme, max_size=3)

    @given(
        params=st.dictionaries(st.sampled_from(FIELDS), value, max_size=4),
        ids=st.lists(st.integers(-(2**64), 2**64) | extreme, min_size=0, max_size=4) | value,
        extra=st.dictionaries(
            st.sampled_from(["rid", "return_logprob", "stream", "text"]), value, max_size=2
        ),
    )
    @settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def no_server_error(params, ids, extra):
        params = {"max_new_tokens": 2, **params}
        body = {"input_ids": ids, "sampling_params": params, **extra}
        r = post(engine, "/generate", content=_raw(body), timeout=60)
        assert r.status_code < 500, (body, r.status_code, r.text[:300])

    no_server_error()
    idle(engine, timeout=30)


def _fuzz_operation(engine, op, mode) -> None:
    from hypothesis import HealthCheck, Phase, given, settings

    @given(case=op.as_strategy(generation_mode=mode))
    @settings(
        deadline=None,
        suppress_health_check=list(HealthCheck),
        max_examples=10,
        database=None,
        phases=[Phase.explicit, Phase.generate],
    )
    def no_server_error(case):
        try:
            r = case.call(base_url=engine, headers=AUTH, timeout=120)
            assert r.status_code < 500, (op.label, r.status_code, r.text[:300])
        finally:
            if op.path == "/pause_generation":
                post(engine, "/continue_generation", {})

    try:
        no_server_error()
    except Exception as err:  # an operation without a body has no invalid form
        if type(err).__name__ != "Unsatisfiable":
            raise


def test_fuzz_engine_openapi_spec(engine):
    """schemathesis over the engine's own spec (positive and negative), as for the gateway; the
    group rendezvous is left out (it waits for a trainer), and so is /update_weight_version (it sets
    the version this test checks is untouched); a pause is always undone."""
    import schemathesis
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(engine + "/openapi.json", headers=AUTH).exclude(
        path=["/init_weights_update_group", "/update_weight_version"]  # the version is checked below
    )
    ops = [result.ok() for result in schema.get_all_operations()]
    assert len(ops) >= 12
    for op in ops:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _fuzz_operation(engine, op, mode)
    post(engine, "/continue_generation", {})
    idle(engine, timeout=30)
    assert httpx.get(engine + "/model_info", headers=AUTH).json()["weight_version"] == "default"
