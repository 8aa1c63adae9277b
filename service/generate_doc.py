"""The OpenAPI description of SGLang's ``/generate`` body, one for the engine and the gateway (which
passes the body through to an engine): what /docs shows, and what schema-driven clients and the
fuzz tests send."""

from __future__ import annotations

_STRINGS = {"type": "array", "items": {"type": "string"}}
_IDS = {"type": "array", "items": {"type": "integer"}}
GENERATE_SCHEMA = {
    "type": "object",
    "properties": {
        "text": {"oneOf": [{"type": "string"}, _STRINGS]},
        "input_ids": {"oneOf": [_IDS, {"type": "array", "items": _IDS}]},
        "sampling_params": {
            "type": "object",
            "properties": {
                "temperature": {"type": "number"},
                "top_p": {"type": "number"},
                "top_k": {"type": "integer"},
                "max_new_tokens": {"type": "integer"},
                "stop_token_ids": _IDS,
                "ignore_eos": {"type": "boolean"},
                "sampling_seed": {"type": "integer"},
            },
        },
        "rid": {"oneOf": [{"type": "string"}, _STRINGS]},
        "stream": {"type": "boolean"},
        "return_logprob": {"type": "boolean"},
        "return_entropy": {"type": "boolean"},
    },
}
# shown in /docs, and the first case a schema-driven client (or fuzzer) sends
GENERATE_EXAMPLE = {"input_ids": [5, 6, 7], "sampling_params": {"max_new_tokens": 4, "temperature": 0}}


def generate_doc(summary: str | None = None) -> dict:
    """``openapi_extra`` for a ``/generate`` route."""
    doc: dict = {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": GENERATE_SCHEMA, "example": GENERATE_EXAMPLE}},
        }
    }
    if summary:
        doc["summary"] = summary
    return doc
