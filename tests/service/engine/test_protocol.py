"""SGLang request parsing and answer building, in process: every bad body is refused whole, before
anything reaches the scheduler, with the message clients see; answers keep SGLang's shape."""

from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from bebop.service.engine.config import EngineConfig
from bebop.service.engine.engine import Engine
from bebop.service.engine.metrics import EngineMetrics
from bebop.service.engine.protocol import (
    SSE_DONE,
    BadRequest,
    check_version,
    error_body,
    failure,
    generate_response,
    output_text,
    parse_abort,
    parse_distributed_update,
    parse_generate,
    parse_group_join,
    parse_new_version,
    parse_pause_mode,
    parse_selector,
    sse_event,
)
from bebop.service.engine.sampling import SamplingParams
from bebop.service.engine.scheduler import Request, Scheduler
from bebop.service.engine.server import build_app

VOCAB = 50
MAX_LEN = 200  # above SamplingParams.max_new_tokens (128), so a bare body fits
MAX_PROMPTS = 4


def parse(body, tokenizer=None, max_prompts=MAX_PROMPTS):
    return parse_generate(
        body, vocab_size=VOCAB, max_len=MAX_LEN, max_prompts=max_prompts, tokenizer=tokenizer
    )


class CharTokenizer:
    """One token per character (its code point modulo the vocabulary); counts encode calls."""

    def __init__(self):
        self.encoded = 0

    def encode(self, text):
        self.encoded += 1
        return SimpleNamespace(ids=[ord(c) % VOCAB for c in text])

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(ord("a") + i % 26) for i in ids)


# ------------------------------------------------------------------------------------ /generate
def test_a_valid_batch_is_parsed_whole():
    job = parse({"input_ids": [[1, 2], [3]], "rid": "job", "sampling_params": {"max_new_tokens": 5}})
    assert job.prompts == [[1, 2], [3]] and job.rids == ["job-0", "job-1"] and job.batch
    assert job.params.max_new_tokens == 5 and not job.stream and not job.return_logprob
    single = parse({"input_ids": [7], "rid": "one", "return_logprob": True, "return_entropy": 1})
    assert single.prompts == [[7]] and single.rids == ["one"] and not single.batch
    assert single.return_logprob and single.return_entropy


BAD_LAST_PROMPT = [
    ([VOCAB], "outside the vocabulary"),
    ([-1], "outside the vocabulary"),
    ([], "non-empty"),
    ([1.5], "must be integers"),
    ([True], "must be integers"),
    ([1] * (MAX_LEN - 3), f"exceeds the context of {MAX_LEN} tokens"),  # with max_new_tokens 4
    (7, "non-empty list of token ids"),
]


@pytest.mark.parametrize(("bad", "message"), BAD_LAST_PROMPT)
def test_a_batch_with_one_bad_prompt_is_refused_whole(bad, message):
    body = {"input_ids": [[1, 2], [3, 4], bad], "sampling_params": {"max_new_tokens": 4}}
    with pytest.raises(BadRequest, match=message):
        parse(body)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"prompt": "x"}, "give input_ids or text"),
        ({"input_ids": None, "text": None}, "give input_ids or text"),
        ({"input_ids": "12"}, "input_ids must be a list"),
        ({"text": "hi"}, "this model has no tokenizer: send input_ids"),
        ({"input_ids": [[1], [2]], "stream": True}, "stream is supported for a single prompt"),
        ({"input_ids": [1], "sampling_params": {"stop": "x"}}, "needs a tokenizer"),
        ({"input_ids": [1], "sampling_params": {"top_p": 0}}, "top_p"),
        ({"input_ids": [1], "sampling_params": {"n": 2}}, "not supported"),
        ({"input_ids": [[1], [2]], "rid": ["a"]}, "one entry per prompt"),
        ({"input_ids": [1], "rid": 7}, "rid must be a string"),
        ({"input_ids": [[1]] * (MAX_PROMPTS + 1)}, f"at most {MAX_PROMPTS} prompts"),
    ],
)
def test_bad_bodies_are_refused_with_the_message_clients_see(body, message):
    with pytest.raises(BadRequest, match=message):
        parse(body)


def test_sampling_params_are_checked_before_the_prompts():
    """The first problem named is the one SGLang names: sampling params come first."""
    with pytest.raises(BadRequest, match="temperature"):
        parse({"input_ids": [VOCAB], "sampling_params": {"temperature": -1}})


def test_text_prompts_go_through_the_tokenizer_and_too_many_are_refused_before_it():
    tok = CharTokenizer()
    job = parse({"text": ["ab", "c"], "rid": ["x", None]}, tokenizer=tok)
    assert job.prompts == [[ord("a") % VOCAB, ord("b") % VOCAB], [ord("c") % VOCAB]]
    assert job.rids == ["x", None] and job.batch and tok.encoded == 2
    with pytest.raises(BadRequest, match="at most 4 prompts"):
        parse({"text": ["a"] * 5}, tokenizer=tok)
    assert tok.encoded == 2  # nothing was tokenized for a refused batch
    with pytest.raises(BadRequest, match="lone surrogate"):
        parse({"text": ["fine", "\udfff"]}, tokenizer=tok)


# ------------------------------------------------------------------------------------ the route
class RecordingScheduler(Scheduler):
    """Never started: records every submission attempt, and queues up to ``max_queue`` requests
    (then refuses with Overloaded, a 503), so no request waits for a step that never comes."""

    def __init__(self, max_queue: int):
        super().__init__(runner=None, eos_token_id=None, max_queue=max_queue)
        self.attempts: list[Request] = []

    def submit(self, req: Request) -> None:
        self.attempts.append(req)
        super().submit(req)


class QueueOnlyEngine(Engine):
    """An engine without a model: what /generate submits lands in a ``RecordingScheduler``."""

    def __init__(self, max_queue: int = 0):
        self.cfg = EngineConfig(model_path="unused", max_len=MAX_LEN, max_prompts=MAX_PROMPTS)
        self.model = SimpleNamespace(config=SimpleNamespace(vocab_size=VOCAB))
        self.tokenizer = None
        self.scheduler = RecordingScheduler(max_queue)
        self.metrics = EngineMetrics()


@pytest.mark.parametrize(("bad", "message"), BAD_LAST_PROMPT)
def test_the_route_submits_nothing_for_a_batch_with_one_bad_prompt(bad, message):
    engine = QueueOnlyEngine()
    client = TestClient(build_app(engine))  # no lifespan: the scheduler thread is never started
    body = {"input_ids": [[1, 2], [3, 4], bad], "sampling_params": {"max_new_tokens": 4}}
    r = client.post("/generate", json=body)
    assert r.status_code == 400 and message in r.json()["error"]["message"], r.text
    assert r.json()["error"]["code"] == 400
    assert engine.scheduler.attempts == []


def test_the_route_does_submit_a_good_batch_and_takes_back_what_a_full_queue_refused():
    """The counterpart of the test above: a good batch reaches the scheduler (a queue of one
    stops it at its second prompt, which is a 503; the first is cancelled, not dropped)."""
    engine = QueueOnlyEngine(max_queue=1)
    client = TestClient(build_app(engine))
    body = {"input_ids": [[1, 2], [3, 4]], "sampling_params": {"max_new_tokens": 4}, "rid": "job"}
    r = client.post("/generate", json=body)
    assert r.status_code == 503 and r.json()["retry_after"] == 1
    assert "queue is full" in r.json()["error"]["message"]
    assert [req.rid for req in engine.scheduler.attempts] == ["job-0", "job-1"]
    assert len(engine.scheduler.waiting) == 1  # its cancel runs between two steps, which never come here


def test_bad_json_is_a_400():
    client = TestClient(build_app(QueueOnlyEngine()))
    for raw, message in ((b"{not json", "not valid JSON"), (b"[1]", "must be a JSON object")):
        r = client.post("/generate", content=raw)
        assert r.status_code == 400 and message in r.json()["error"]["message"]


# ------------------------------------------------------------------------------------ answers
def finished_request(**kw) -> Request:
    req = Request(rid="r", prompt=[1, 2, 3], params=SamplingParams(**kw), seed=1, on_event=lambda r, f: None)
    req.output = [4, 5, 6]
    req.logprobs = [-0.5, float("-inf"), -1.0]
    req.entropies = [0.5, 0.0, 1.0]
    req.version_spans = [[0, 3, "v1"]]
    req.verify_ct, req.drafts_proposed, req.drafts_accepted = 2, 6, 3
    req.position_reached, req.position_accepted = [2, 2, 2], [2, 1, 0]
    req.accept_histogram = [0, 1, 1, 0]
    req.finish_reason = {"type": "stop", "matched": 6}
    return req


def test_the_answer_has_sglangs_shape():
    req = finished_request()
    out = generate_response(
        req,
        tokenizer=CharTokenizer(),
        speculative=True,
        weight_version="now",
        return_logprob=True,
        return_entropy=True,
    )
    meta = out["meta_info"]
    assert out["output_ids"] == [4, 5, 6] and out["text"] == "ef"  # the stop token is trimmed
    assert meta["id"] == "r" and meta["finish_reason"] == {"type": "stop", "matched": 6}
    assert (meta["prompt_tokens"], meta["completion_tokens"], meta["cached_tokens"]) == (3, 3, 0)
    assert meta["weight_version"] == "v1" and meta["weight_version_spans"] == [[0, 3, "v1"]]
    assert meta["output_token_logprobs"] == [[-0.5, 4, None], [None, 5, None], [-1.0, 6, None]]
    assert meta["output_token_entropy"] == [0.5, 0.0, 1.0] and meta["entropy_mean"] == pytest.approx(0.5)
    assert meta["spec_accept_rate"] == 0.5 and meta["spec_accept_length"] == 1.0
    assert meta["spec_accept_per_position"] == [1.0, 0.5, 0.0] and meta["spec_verify_ct"] == 2
    assert meta["spec_accept_token_num"] == meta["spec_num_correct_drafts"] == 3
    plain = generate_response(
        req,
        tokenizer=None,
        speculative=False,
        weight_version="now",
        return_logprob=False,
        return_entropy=False,
    )
    assert "text" not in plain and "output_token_logprobs" not in plain["meta_info"]
    assert not any(k.startswith("spec_") for k in plain["meta_info"])


def test_a_request_that_has_produced_nothing_answers_the_current_version():
    req = Request(rid="r", prompt=[1], params=SamplingParams(), seed=1, on_event=lambda r, f: None)
    out = generate_response(
        req,
        tokenizer=None,
        speculative=False,
        weight_version="now",
        return_logprob=False,
        return_entropy=False,
    )
    assert out["meta_info"]["weight_version"] == "now" and out["meta_info"]["entropy_mean"] is None


def test_text_keeps_the_stop_token_with_no_stop_trim_and_holds_back_a_stop_prefix():
    tok = CharTokenizer()
    assert output_text(finished_request(no_stop_trim=True), tok) == "efg"
    streaming = finished_request(stop=["gx"])
    streaming.finish_reason = None  # still running: "g" may begin the stop string
    assert output_text(streaming, tok) == "ef"


def test_failures_and_stream_events():
    req = finished_request()
    assert failure(req) is None
    req.finish_reason = {"type": "abort", "message": "engine error: boom", "status_code": 500}
    assert failure(req) == {"message": "engine error: boom", "code": 500}
    assert sse_event({"a": 1}) == 'data: {"a": 1}\n\n' and SSE_DONE == "data: [DONE]\n\n"
    assert error_body(503, "full", retry_after=1) == {
        "error": {"message": "full", "code": 503},
        "retry_after": 1,
    }


# ------------------------------------------------------------------------------------ other bodies
@pytest.mark.parametrize(
    "body",
    [
        {"names": ["a"], "dtypes": ["float32"], "shapes": [[2**40]]},
        {"names": ["a"], "dtypes": ["float32"], "shapes": [[10, 10]]},  # 100 elements > 64
        {"names": ["a"], "dtypes": ["float32"], "shapes": [[1] * 9]},
        {"names": ["a"], "dtypes": ["float32"], "shapes": [[True]]},
        {"names": "abc", "dtypes": ["float32"], "shapes": [[1]]},
        {"names": [1], "dtypes": ["float32"], "shapes": [[1]]},
        {"names": ["a"], "dtypes": ["float32"], "shapes": [[1]], "weight_version": ["v"]},
    ],
)
def test_malformed_manifests_are_refused(body):
    with pytest.raises(BadRequest):
        parse_distributed_update(body, largest_numel=64)


def test_a_manifest_is_parsed():
    body = {"names": ["a", "b"], "dtypes": ["float32", "bfloat16"], "shapes": [[8, 8], []], "stage": 1}
    update = parse_distributed_update(body, largest_numel=64)
    assert update.names == ["a", "b"] and update.shapes == [[8, 8], []] and update.stage
    assert update.group_name == "None" and update.weight_version is None and not update.abort_all


def test_control_and_version_bodies():
    assert parse_pause_mode({}) == "abort" and parse_pause_mode({"mode": "retract"}) == "retract"
    with pytest.raises(BadRequest, match="mode must be abort, retract or in_place"):
        parse_pause_mode({"mode": "sideways"})
    assert parse_abort({"rid": "x"}) == "x" and parse_abort({"abort_all": True, "rid": "x"}) is None
    with pytest.raises(BadRequest, match="give rid or abort_all"):
        parse_abort({})
    with pytest.raises(BadRequest, match="rid must be a string"):
        parse_abort({"rid": 3})
    assert parse_selector({}) == "all"
    with pytest.raises(BadRequest, match="selector must be one of"):
        parse_selector({"selector": "mtp"})
    with pytest.raises(BadRequest, match="new_version"):
        parse_new_version({})
    with pytest.raises(BadRequest, match="at most 128 characters"):
        check_version("v" * 129)
    check_version(None)
    join = parse_group_join(
        {"master_address": "h", "master_port": "29500", "rank_offset": 1, "world_size": 2}
    )
    assert (join.master_port, join.group_name, join.backend) == (29500, "weight_update_group", "gloo")
    with pytest.raises(BadRequest, match="need master_address"):
        parse_group_join({"master_address": "h", "master_port": 1e309, "rank_offset": 1, "world_size": 2})
