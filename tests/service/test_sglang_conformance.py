"""slime's and AReaL's exact request shapes against a real ``bebop engine`` and through ``bebop serve``
(its SGLang ``/generate`` pass-through), and every field those clients read.

The fixtures are written from the clients' code (read, not copied):
- slime ``slime/rollout/sglang_rollout.py`` (``GenerateState.sampling_params``, ``generate``: payload
  with ``input_ids`` or ``text``, ``return_logprob``; reads ``text``, ``meta_info.output_token_logprobs``
  as ``[logprob, token, ...]``), ``slime/utils/types.py`` (``Sample.update_from_meta_info``:
  ``finish_reason.type``, ``weight_version``, ``cached_tokens``, ``prompt_tokens``,
  ``completion_tokens``, ``spec_accept_token_num``, ``spec_draft_token_num``, ``spec_verify_ct``),
  ``slime/backends/sglang_utils/sglang_engine.py`` (``GET /flush_cache``, ``GET /get_weight_version``,
  ``/destroy_weights_update_group``, ``/health_generate``, ``/pause_generation`` and
  ``/continue_generation`` with ``{}``);
- AReaL ``areal/engine/sglang_remote.py`` (``agenerate``: ``input_ids``, ``image_data: None``,
  ``return_logprob``, ``stream: false``, sampling_params with ``frequency_penalty`` always sent; reads
  ``finish_reason{type, message}``, ``output_token_logprobs``; resubmits prompt + output after an
  abort; ``update_weights_from_disk`` with ``abort_all_request``).
"""

import json

import httpx
import pytest

from tests.procs import free_port, running

SLIME_PARAMS = {  # GenerateState.sampling_params, with rollout_top_p != 1 (custom_params added)
    "temperature": 1.0,
    "top_p": 0.95,
    "top_k": -1,
    "max_new_tokens": 12,
    "stop": None,
    "stop_token_ids": None,
    "skip_special_tokens": True,
    "no_stop_trim": True,
    "spaces_between_special_tokens": False,
    "custom_params": {"return_top_p_token_ids": True},
    "sampling_seed": 3,  # sglang_enable_deterministic_inference
}
AREAL_PARAMS = {  # RemoteSGLangEngine.agenerate's sample_params
    "top_p": 1.0,
    "top_k": 100000000,
    "max_new_tokens": 12,
    "temperature": 1.0,
    "stop_token_ids": [],
    "frequency_penalty": 0.0,
}


@pytest.fixture(scope="module")
def urls(quick_model):
    engine_port, gateway_port = free_port(), free_port()
    with running(["engine", "--model", str(quick_model), "--port", str(engine_port)], engine_port) as engine:
        args = [
            "serve",
            "--port",
            str(gateway_port),
            "--engine-url",
            engine,
            "--weights-root",
            str(quick_model),
        ]
        with running(args, gateway_port, ready_path="/readyz") as gateway:
            yield {"engine": engine, "gateway": gateway}


def slime_reads(out: dict) -> None:
    """Everything slime reads from one answer, in the types slime uses."""
    meta = out["meta_info"]
    tokens = [item[1] for item in meta["output_token_logprobs"]]
    logprobs = [item[0] for item in meta["output_token_logprobs"]]
    assert tokens == out["output_ids"] and all(isinstance(x, float) for x in logprobs)
    assert isinstance(out["text"], str)
    assert meta["finish_reason"]["type"] in ("length", "stop", "abort")
    assert isinstance(meta["weight_version"], str)
    assert meta["cached_tokens"] == 0 and meta["prompt_tokens"] > 0
    assert meta["completion_tokens"] == len(tokens)
    assert meta["spec_accept_token_num"] == meta["spec_num_correct_drafts"] <= meta["spec_draft_token_num"]
    assert meta["spec_draft_token_num"] == meta["spec_num_proposed_drafts"]
    assert sum(meta["spec_correct_drafts_histogram"]) == meta["spec_verify_ct"] >= 1


@pytest.mark.parametrize("where", ["engine", "gateway"])
@pytest.mark.parametrize("prompt", [{"input_ids": [5, 6, 7, 8]}, {"text": "12+35="}])
def test_slime_generate(urls, where, prompt):
    payload = {**prompt, "sampling_params": SLIME_PARAMS, "return_logprob": True}
    r = httpx.post(urls[where] + "/generate", json=payload, timeout=60)
    assert r.status_code == 200, r.text
    slime_reads(r.json())


@pytest.mark.parametrize("where", ["engine", "gateway"])
def test_slime_streaming_generate(urls, where):
    """sglang_streaming_rollout: cumulative SSE chunks, ``data: [DONE]`` last."""
    payload = {"text": "12+35=", "sampling_params": SLIME_PARAMS, "return_logprob": True, "stream": True}
    chunks = []
    with httpx.stream("POST", urls[where] + "/generate", json=payload, timeout=60) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: "):
                chunks.append(line[len("data: ") :])
    assert chunks[-1] == "[DONE]" and len(chunks) >= 2
    answers = [json.loads(c) for c in chunks[:-1]]
    ids = [a["output_ids"] for a in answers]
    assert all(ids[k] == ids[k + 1][: len(ids[k])] for k in range(len(ids) - 1))  # cumulative
    slime_reads(answers[-1])


@pytest.mark.parametrize("where", ["engine", "gateway"])
def test_areal_generate_and_resubmit(urls, where):
    payload = {
        "input_ids": [5, 6, 7, 8],
        "image_data": None,
        "sampling_params": dict(AREAL_PARAMS),
        "return_logprob": True,
        "stream": False,
    }
    r = httpx.post(urls[where] + "/generate", json=payload, timeout=60)
    assert r.status_code == 200, r.text
    meta = r.json()["meta_info"]
    assert meta["finish_reason"]["type"] in ("length", "stop")
    out = [x[1] for x in meta["output_token_logprobs"]]
    assert meta["prompt_tokens"] == 4 and meta["completion_tokens"] == len(out)
    # AReaL's resubmission after an abort: prompt + output so far, fewer new tokens
    payload["input_ids"] += out[:3]  # an unseeded sample may have stopped (EOS) before 3 tokens
    payload["sampling_params"]["max_new_tokens"] -= 3
    r = httpx.post(urls[where] + "/generate", json=payload, timeout=60)
    assert r.status_code == 200 and r.json()["meta_info"]["prompt_tokens"] == 4 + len(out[:3])


@pytest.mark.parametrize("where", ["engine", "gateway"])
def test_refusals_name_the_field_and_unknown_top_level_keys_pass(urls, where):
    base = {"input_ids": [5, 6], "sampling_params": {"max_new_tokens": 2}}
    r = httpx.post(urls[where] + "/generate", json={**base, "model": "x", "log_metrics": True}, timeout=60)
    assert r.status_code == 200, r.text
    penalties = {"frequency_penalty": 0.3, "presence_penalty": -0.5, "repetition_penalty": 1.2}
    r = httpx.post(urls[where] + "/generate", json={**base, "sampling_params": {**penalties}}, timeout=60)
    assert r.status_code == 200, r.text  # supported (exactly: tests/service/engine/test_logit_processors.py)
    for field, value in [("frequency_penalty", 2.5), ("repetition_penalty", 0), ("not_a_field", 1)]:
        body = {**base, "sampling_params": {"max_new_tokens": 2, field: value}}
        r = httpx.post(urls[where] + "/generate", json=body, timeout=60)
        assert r.status_code == 400 and field in r.text, r.text


@pytest.mark.parametrize("where", ["engine", "gateway"])
@pytest.mark.parametrize("no_stop_trim", [False, True])
def test_stop_strings(urls, where, no_stop_trim):
    greedy = {"max_new_tokens": 30, "temperature": 0, "ignore_eos": True}
    full = httpx.post(
        urls[where] + "/generate", json={"text": "12+35=", "sampling_params": greedy}, timeout=60
    )
    text, ids = full.json()["text"], full.json()["output_ids"]
    stop = text[5:7]  # two characters from the middle of the greedy output
    assert len(stop) == 2 and stop in text
    params = {**greedy, "stop": [stop, "never-there"], "no_stop_trim": no_stop_trim}
    out = httpx.post(
        urls[where] + "/generate", json={"text": "12+35=", "sampling_params": params}, timeout=60
    )
    out = out.json()
    first = text.index(stop)
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop}
    assert out["text"] == (text[: first + 2] if no_stop_trim else text[:first])
    assert out["output_ids"] == ids[: len(out["output_ids"])] and len(out["output_ids"]) < len(ids)


def test_control_endpoints_slime_and_areal_call(urls):
    engine = urls["engine"]
    assert httpx.get(engine + "/flush_cache").status_code == 200
    assert httpx.post(engine + "/flush_cache").status_code == 200
    assert httpx.get(engine + "/get_weight_version").json() == {"weight_version": "default"}
    r = httpx.post(engine + "/update_weight_version", json={"new_version": "v7"})
    assert r.status_code == 200 and httpx.get(engine + "/model_info").json()["weight_version"] == "v7"
    assert httpx.post(engine + "/pause_generation", json={}).status_code == 200
    assert httpx.post(engine + "/continue_generation", json={}).status_code == 200
    assert httpx.get(engine + "/health_generate", timeout=60).status_code == 200
    assert httpx.post(engine + "/destroy_weights_update_group", json={"group_name": "g"}).status_code == 400
    r = httpx.post(engine + "/update_weights_from_tensor", json={"serialized_named_tensors": []})
    assert r.status_code == 400 and "not supported" in r.json()["error"]["message"]
    # SGLang 0.5.23's session: one at a time, a closed one cannot be closed again
    assert httpx.post(engine + "/begin_weight_update", json={"selector": "all"}).status_code == 200
    assert httpx.post(engine + "/begin_weight_update", json={"selector": "all"}).status_code == 400
    assert httpx.post(engine + "/end_weight_update", json={}).status_code == 200
    assert httpx.post(engine + "/end_weight_update", json={}).status_code == 400
    assert httpx.post(engine + "/begin_weight_update", json={"selector": "x"}).status_code == 400
    r = httpx.post(
        engine + "/update_weights_from_disk", json={"model_path": "/nowhere", "abort_all_request": True}
    )
    assert r.status_code == 400  # AReaL's misspelt abort flag is an unknown key: ignored; the path is refused


def test_control_endpoints_through_the_gateway(urls, quick_model):
    """slime's and AReaL's control calls sent to the gateway's address act on its engines."""
    gateway, engine = urls["gateway"], urls["engine"]
    assert httpx.get(gateway + "/flush_cache").status_code == 200
    assert httpx.post(gateway + "/flush_cache").status_code == 200
    serving = httpx.get(engine + "/get_weight_version").json()
    assert httpx.get(gateway + "/get_weight_version").json() == serving
    assert httpx.post(gateway + "/pause_generation", json={}).status_code == 200
    assert httpx.post(gateway + "/continue_generation", json={}).status_code == 200
    assert httpx.get(gateway + "/health_generate", timeout=60).status_code == 200
    # AReaL's reload (its misspelt abort flag is an unknown key, ignored as SGLang does)
    body = {"model_path": str(quick_model), "weight_version": "areal-1", "abort_all_request": True}
    r = httpx.post(gateway + "/update_weights_from_disk", json=body, timeout=120)
    assert r.status_code == 200 and r.json()["success"] is True, r.text
    assert httpx.get(engine + "/get_weight_version").json() == {"weight_version": "areal-1"}
    r = httpx.post(
        gateway + "/generate", json={"input_ids": [5, 6], "sampling_params": {"max_new_tokens": 2}}
    )
    assert r.json()["meta_info"]["weight_version"] == "areal-1"
    r = httpx.post(gateway + "/update_weights_from_disk", json={"model_path": "/nowhere"}, timeout=60)
    assert r.status_code == 403 and r.json()["success"] is False
    r = httpx.post(gateway + "/init_weights_update_group", json={"master_address": "x", "master_port": 1})
    assert r.status_code == 400 and "/v1/weights/group" in r.json()["message"]
