"""SGLang 0.5.23's request and response bodies, parsed and built without the web framework.

Every ``parse_*`` function takes a decoded JSON object and either returns a complete, validated
internal object or raises ``BadRequest`` (the routes answer 400 with its message). A ``/generate``
body is parsed whole before anything is queued: a batch with one bad prompt submits nothing.
Unknown top-level fields are ignored, as SGLang does; the messages are part of the contract with
clients (slime, AReaL, the gateway), so they change only with the tests that pin them.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..text import has_lone_surrogate
from .config import MAX_WEIGHT_VERSION_CHARS
from .sampling import BadRequest, SamplingParams
from .stops import hold_back, trim_text

if TYPE_CHECKING:
    from .scheduler import Request

__all__ = ["BadRequest"]  # re-exported: the routes and tests catch it from here

MAX_TENSOR_DIMS = 8  # no tensor of a Qwen3 state dict has more; a longer shape is a malformed manifest
WEIGHT_SELECTORS = ("target", "draft", "all")  # SGLang 0.5.23's BeginWeightUpdateReqInput.selector
PAUSE_MODES = ("abort", "retract", "in_place")
DEFAULT_GROUP_NAME = "weight_update_group"  # SGLang's default for init/destroy_weights_update_group
SSE_DONE = "data: [DONE]\n\n"


class Tokenizer(Protocol):
    """The part of ``tokenizers.Tokenizer`` the protocol uses."""

    def encode(self, sequence: str) -> Any: ...  # .ids: list[int]

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str: ...


# ---------------------------------------------------------------------------------------- /generate
@dataclass(frozen=True)
class GenerateInput:
    """A validated ``/generate`` body: every prompt fits the context and the vocabulary."""

    prompts: list[list[int]]  # token ids, one list per prompt
    rids: list[str | None]  # one per prompt; None: the engine makes one up
    params: SamplingParams  # shared by every prompt of the batch
    batch: bool  # the body held a list of prompts, so the answer is a list
    stream: bool
    return_logprob: bool
    return_entropy: bool


def parse_generate(
    body: dict,
    *,
    vocab_size: int,
    max_len: int,
    max_prompts: int,
    tokenizer: Tokenizer | None,
) -> GenerateInput:
    """The whole ``/generate`` body, checked in SGLang's order: sampling params, prompts, stream,
    then each prompt against the context (``max_len`` tokens for prompt + max_new_tokens)."""
    params = SamplingParams.from_dict(body.get("sampling_params"), vocab_size)
    prompts, rids, batch = parse_prompts(
        body, vocab_size=vocab_size, max_prompts=max_prompts, tokenizer=tokenizer
    )
    stream = bool(body.get("stream"))
    if stream and batch:  # refused before anything is queued: nothing may decode for nobody
        raise BadRequest("stream is supported for a single prompt")
    for prompt in prompts:
        if len(prompt) + params.max_new_tokens > max_len:
            raise BadRequest(
                f"prompt ({len(prompt)} tokens) + max_new_tokens ({params.max_new_tokens}) exceeds the "
                f"context of {max_len} tokens"
            )
        if params.stop and tokenizer is None:
            raise BadRequest("sampling_params.stop needs a tokenizer, which this model lacks")
    return GenerateInput(
        prompts=prompts,
        rids=rids,
        params=params,
        batch=batch,
        stream=stream,
        return_logprob=bool(body.get("return_logprob")),
        return_entropy=bool(body.get("return_entropy")),
    )


def parse_prompts(
    body: dict, *, vocab_size: int, max_prompts: int, tokenizer: Tokenizer | None
) -> tuple[list[list[int]], list[str | None], bool]:
    """Prompts as token ids (from ``input_ids``, or ``text`` through the tokenizer), their rids, and
    whether the request was a batch. A batch's single string rid becomes ``<rid>-<index>``."""
    if body.get("input_ids") is not None:
        ids = body["input_ids"]
        if not isinstance(ids, list):
            raise BadRequest("input_ids must be a list of token ids or a list of such lists")
        batch = bool(ids) and isinstance(ids[0], list)
        prompts = ids if batch else [ids]
    elif body.get("text") is not None:
        if tokenizer is None:
            raise BadRequest("this model has no tokenizer: send input_ids")
        texts = body["text"] if isinstance(body["text"], list) else [body["text"]]
        batch = isinstance(body["text"], list)
        if not all(isinstance(t, str) for t in texts):
            raise BadRequest("text must be a string or a list of strings")
        if any(has_lone_surrogate(t) for t in texts):
            raise BadRequest("text holds a lone surrogate (\\ud800-\\udfff), which is not Unicode text")
        if len(texts) > max_prompts:  # before tokenizing thousands of texts for nothing
            raise BadRequest(f"at most {max_prompts} prompts per request")
        prompts = [tokenizer.encode(t).ids for t in texts]
    else:
        raise BadRequest("give input_ids or text")
    if len(prompts) > max_prompts:
        raise BadRequest(f"at most {max_prompts} prompts per request")
    for p in prompts:
        if not isinstance(p, list) or not p:
            raise BadRequest("each prompt must be a non-empty list of token ids")
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in p):
            raise BadRequest("input_ids must be integers")
        bad = [t for t in p if not 0 <= t < vocab_size]
        if bad:
            raise BadRequest(f"input_ids outside the vocabulary [0, {vocab_size}): {bad[:5]}")
    rid = body.get("rid")
    rids = rid if isinstance(rid, list) else [rid] * len(prompts)
    if not all(r is None or isinstance(r, str) for r in rids):
        raise BadRequest("rid must be a string or a list of strings")
    if len(rids) != len(prompts):
        raise BadRequest("rid must have one entry per prompt")
    if batch and isinstance(rid, str):
        rids = [f"{rid}-{i}" for i in range(len(prompts))]
    return prompts, rids, batch


def output_text(req: Request, tokenizer: Tokenizer) -> str:
    """The ``text`` SGLang answers: stop tokens and stop strings trimmed unless ``no_stop_trim``,
    special tokens per ``skip_special_tokens``; while streaming, a tail that may begin a stop
    string is held back."""
    p, ids, reason = req.params, req.output, req.finish_reason or {}
    if isinstance(reason.get("matched"), int) and not p.no_stop_trim:
        ids = ids[:-1]
    text = tokenizer.decode(ids, skip_special_tokens=p.skip_special_tokens)
    if req.finished:
        return trim_text(text, reason, p.no_stop_trim)
    return hold_back(text, p.stop) if p.stop else text


def generate_response(
    req: Request,
    *,
    tokenizer: Tokenizer | None,
    speculative: bool,
    weight_version: str,
    return_logprob: bool,
    return_entropy: bool,
) -> dict:
    """One prompt's answer, ``{"output_ids", "meta_info", "text"?}``, as SGLang builds it.

    ``weight_version`` is the engine's current one, answered while the request has produced
    nothing; ``speculative`` adds the spec_* fields (SGLang's, then the older ones slime reads).
    """
    n = len(req.output)
    meta: dict[str, Any] = {
        "id": req.rid,
        "finish_reason": req.finish_reason,
        "prompt_tokens": len(req.prompt),
        "completion_tokens": n,
        "cached_tokens": 0,
        "e2e_latency": time.monotonic() - req.created,  # seconds
        "weight_version": req.version_spans[-1][2] if req.version_spans else weight_version,
        "weight_version_spans": req.version_spans,
        "entropy_mean": (sum(req.entropies) / len(req.entropies)) if req.entropies else None,
    }
    if speculative:
        # SGLang 0.5.23's names, then the older ones slime reads (slime/utils/types.py, SpecInfo)
        meta["spec_num_correct_drafts"] = req.drafts_accepted
        meta["spec_num_proposed_drafts"] = req.drafts_proposed
        meta["spec_correct_drafts_histogram"] = list(req.accept_histogram)
        meta["spec_accept_token_num"] = req.drafts_accepted
        meta["spec_draft_token_num"] = req.drafts_proposed
        meta["spec_verify_ct"] = req.verify_ct
        meta["spec_accept_length"] = ((n - 1) / req.verify_ct) if req.verify_ct else None
        meta["spec_accept_rate"] = (
            (req.drafts_accepted / req.drafts_proposed) if req.drafts_proposed else None
        )
        meta["spec_accept_per_position"] = [
            (a / r) if r else None for a, r in zip(req.position_accepted, req.position_reached, strict=True)
        ]
    if return_logprob:
        meta["output_token_logprobs"] = [
            [_finite(lp), t, None] for lp, t in zip(req.logprobs, req.output, strict=True)
        ]
    if return_entropy:
        meta["output_token_entropy"] = req.entropies
    out: dict[str, Any] = {"output_ids": list(req.output), "meta_info": meta}
    if tokenizer is not None:
        out["text"] = output_text(req, tokenizer)
    return out


def failure(req: Request) -> dict | None:
    """``{"message", "code"}`` when the engine failed the request (a 5xx finish_reason), else None."""
    reason = req.finish_reason or {}
    if reason.get("status_code", 200) < 500:
        return None
    return {"message": reason.get("message"), "code": reason["status_code"]}


def sse_event(payload: dict) -> str:
    """One server-sent event of SGLang's stream: ``data: <json>`` and a blank line."""
    return f"data: {json.dumps(payload)}\n\n"


def error_body(status: int, message: str, **extra: Any) -> dict:
    """The error shape every engine route answers (SGLang's): ``{"error": {"message", "code"}, ...}``."""
    return {"error": {"message": message, "code": status}, **extra}


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None  # -inf (a greedy row's other tokens) is not JSON


# ---------------------------------------------------------------------------------------- weights
@dataclass(frozen=True)
class DiskUpdate:
    """``/update_weights_from_disk``; ``stage`` (Bebop's) holds the weights for a two-phase reload."""

    model_path: str
    weight_version: str | None
    abort_all: bool
    stage: bool
    stage_id: str | None = None  # the reload that stages (Bebop's); only it may commit or discard


@dataclass(frozen=True)
class DistributedUpdate:
    """``/update_weights_from_distributed``: the tensors rank 0 broadcasts next, in this order."""

    names: list[str]
    dtypes: list[str]  # wire dtype names (service/wire_dtypes.py)
    shapes: list[list[int]]  # each within the largest tensor of the serving model
    group_name: str
    weight_version: str | None
    abort_all: bool
    stage: bool
    stage_id: str | None = None  # as DiskUpdate's


@dataclass(frozen=True)
class GroupJoin:
    """``/init_weights_update_group``: this engine's rank in the trainer's process group."""

    master_address: str
    master_port: int
    rank_offset: int
    world_size: int
    group_name: str
    backend: str


def check_version(version: Any) -> None:
    """A weight version is absent, or a string of at most MAX_WEIGHT_VERSION_CHARS characters."""
    if version is not None and (
        not isinstance(version, str) or len(version) > MAX_WEIGHT_VERSION_CHARS or has_lone_surrogate(version)
    ):
        raise BadRequest(f"weight_version must be a string of at most {MAX_WEIGHT_VERSION_CHARS} characters")


def parse_stage_id(body: dict) -> str | None:
    """Bebop's ``stage_id``: which reload staged (or kept) weights, so that two gateways updating the
    same engines cannot commit, discard or roll back each other's. Absent: any (older gateways)."""
    stage_id = body.get("stage_id")
    if stage_id is not None and not (isinstance(stage_id, str) and 0 < len(stage_id) <= MAX_STAGE_ID_CHARS):
        raise BadRequest(f"stage_id must be a string of 1 to {MAX_STAGE_ID_CHARS} characters")
    return stage_id


def parse_disk_update(body: dict) -> DiskUpdate:
    if not isinstance(body.get("model_path"), str):
        raise BadRequest("model_path (a string) is required")
    check_version(body.get("weight_version"))
    return DiskUpdate(
        model_path=body["model_path"],
        weight_version=body.get("weight_version"),
        abort_all=bool(body.get("abort_all_requests", False)),
        stage=bool(body.get("stage", False)),
        stage_id=parse_stage_id(body),
    )


def parse_distributed_update(body: dict, largest_numel: int) -> DistributedUpdate:
    """Refuse a malformed manifest before any buffer is allocated: a shape of 2**40 elements would
    take the process down, not the request. ``largest_numel``: elements of the model's largest tensor."""
    names, dtypes, shapes = body.get("names"), body.get("dtypes"), body.get("shapes")
    if not (isinstance(names, list) and isinstance(dtypes, list) and isinstance(shapes, list)):
        raise BadRequest("names, dtypes and shapes must be lists")
    if not all(isinstance(n, str) for n in names) or not all(isinstance(d, str) for d in dtypes):
        raise BadRequest("names and dtypes must be strings")
    for shape in shapes:
        if not (
            isinstance(shape, list)
            and len(shape) <= MAX_TENSOR_DIMS
            and all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= largest_numel for x in shape)
            and math.prod(shape) <= largest_numel
        ):
            raise BadRequest(f"shape {str(shape)[:80]} is not the shape of any tensor of this model")
    check_version(body.get("weight_version"))
    return DistributedUpdate(
        names=names,
        dtypes=dtypes,
        shapes=shapes,
        group_name=str(body.get("group_name")),  # absent: "None", which names no group (a 400 later)
        weight_version=body.get("weight_version"),
        abort_all=bool(body.get("abort_all_requests", False)),
        stage=bool(body.get("stage")),
        stage_id=parse_stage_id(body),
    )


def parse_group_join(body: dict) -> GroupJoin:
    try:
        return GroupJoin(
            master_address=str(body["master_address"]),
            master_port=int(body["master_port"]),
            rank_offset=int(body["rank_offset"]),
            world_size=int(body["world_size"]),
            group_name=str(body.get("group_name", DEFAULT_GROUP_NAME)),
            backend=str(body.get("backend", "gloo")),
        )
    except (KeyError, TypeError, ValueError, OverflowError) as err:
        raise BadRequest(f"need master_address, master_port, rank_offset, world_size: {err}") from None


def parse_group_name(body: dict) -> str:
    name = body.get("group_name", DEFAULT_GROUP_NAME)
    if not isinstance(name, str):
        raise BadRequest("group_name must be a string")
    return name


MAX_STAGE_ID_CHARS = 64


def parse_abort_all(body: dict, default: bool = False) -> bool:
    """``abort_all_requests``; SGLang's default is False for loads and True for a version update."""
    return bool(body.get("abort_all_requests", default))


def parse_selector(body: dict) -> str:
    selector = body.get("selector", "all")
    if selector not in WEIGHT_SELECTORS:
        raise BadRequest(f"selector must be one of {list(WEIGHT_SELECTORS)}, got {str(selector)[:40]!r}")
    return selector


def parse_new_version(body: dict) -> str:
    version = body.get("new_version")
    if not isinstance(version, str):
        raise BadRequest("new_version (a string) is required")
    check_version(version)
    return version


# ---------------------------------------------------------------------------------------- control
def parse_pause_mode(body: dict) -> str:
    mode = body.get("mode", "abort")
    if mode not in PAUSE_MODES:
        raise BadRequest(f"mode must be abort, retract or in_place, got {mode!r}")
    return mode


def parse_abort(body: dict) -> str | None:
    """The rid to abort, or None for ``abort_all: true``."""
    rid = None if body.get("abort_all") else body.get("rid")
    if rid is None and not body.get("abort_all"):
        raise BadRequest("give rid or abort_all: true")
    if rid is not None and not isinstance(rid, str):
        raise BadRequest("rid must be a string")
    return rid
