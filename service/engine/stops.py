"""Stop strings (SGLang's ``sampling_params.stop``) and the ``text`` of an answer.

Semantics follow SGLang 0.5.23 (``managers/schedule_batch.py``, ``Req.update_finish_state``, and
``managers/detokenizer_manager.py``, ``trim_matched_stop``): generation ends at the token whose
decoded text completes a stop string; ``output_ids`` keep that token; ``finish_reason`` is
``{"type": "stop", "matched": "<the string>"}``; ``text`` ends before the stop string, or after it
with ``no_stop_trim``. A stop token (EOS or ``stop_token_ids``) is trimmed from ``text`` the same way.
Matching decodes with special tokens kept, as SGLang's tail check does.

The scheduler checks after every appended token, so a stop string inside a chain of accepted drafts
ends the output at its own token, exactly where plain decoding would have stopped.
"""

from __future__ import annotations

from collections.abc import Callable

# Tokens decoded past the stop string's length in bytes: a token holds at least one byte, so a stop
# string of b bytes lies within its last b tokens; the slack covers a character split across tokens
# and special tokens that decode to nothing.
TAIL_SLACK_TOKENS = 8


class StopStrings:
    """``check(output_ids)`` after each token: the first stop string the text now contains, or None."""

    def __init__(self, stops: list[str], decode: Callable[[list[int]], str]):
        self.stops = stops
        self.decode = decode
        self.window = max(len(s.encode("utf-8")) for s in stops) + TAIL_SLACK_TOKENS

    def __call__(self, output_ids: list[int]) -> str | None:
        tail = self.decode(output_ids[-self.window :])
        for stop in self.stops:
            if stop in tail:
                return stop
        return None


def trim_text(text: str, finish_reason: dict | None, no_stop_trim: bool) -> str:
    """``text`` of a finished output whose stop string is ``finish_reason["matched"]``: cut before
    the stop string (or after it with ``no_stop_trim``). Stop tokens are handled by the caller."""
    matched = (finish_reason or {}).get("matched")
    if not isinstance(matched, str):
        return text
    pos = text.find(matched)
    if pos < 0:
        return text
    return text[: pos + len(matched)] if no_stop_trim else text[:pos]


def hold_back(text: str, stops: list[str]) -> str:
    """``text`` of an unfinished output for a stream: without a tail that may be the start of a stop
    string (SGLang holds such a tail back too), so a streamed prefix never shows a stop string."""
    cut = 0
    for stop in stops:
        for k in range(min(len(stop), len(text)), 0, -1):
            if text.endswith(stop[:k]):
                cut = max(cut, k)
                break
    return text[: len(text) - cut] if cut else text
