"""logit_bias, min_p, min_new_tokens and the frequency, presence and repetition penalties: the law
the runner samples equals a reference law computed here from the model's logits (plain and
speculative decoding), and stop strings end the output at the token that completes them, inside an
accepted draft chain too."""

import threading

import pytest
import torch

from bebop.model import load_model
from bebop.service.engine.runner import ModelRunner
from bebop.service.engine.sampling import BadRequest, SamplingParams
from bebop.service.engine.scheduler import Request, Scheduler
from bebop.service.engine.stops import StopStrings, hold_back, trim_text
from tests.stats import assert_counts_follow

PROMPT = [5, 6, 7, 8]


@pytest.fixture(scope="module")
def model(quick_model):
    return load_model(quick_model)


def reference_law(logits: torch.Tensor, params: SamplingParams, output: list[int], eos: int) -> torch.Tensor:
    """SGLang's law of one position, token by token in float64: logits [V] of the position that
    follows the output tokens ``output`` -> [V] probabilities. Written independently of
    ``logit_processors`` (loops, no shared code), in SGLang's order: frequency, min_new_tokens,
    presence, repetition (sglang/srt/sampling/sampling_batch_info.py:279-284), then the bias."""
    z = logits.double().clone()
    for token in set(output):
        z[token] -= params.frequency_penalty * output.count(token)
    if len(output) < params.min_new_tokens:
        for token in {eos, *params.stop_token_ids}:
            z[token] = float("-inf")
    for token in set(output):
        z[token] -= params.presence_penalty
        rp = params.repetition_penalty
        z[token] = z[token] * rp if z[token] < 0 else z[token] / rp
    for token, bias in params.logit_bias.items():
        z[token] += bias
    if len(output) < params.min_new_tokens:
        for token in {eos, *params.stop_token_ids}:
            z[token] = float("-inf")
    p = torch.softmax(z / params.temperature, -1)
    if params.min_p > 0:
        p[p < params.min_p * p.max()] = 0.0
        p /= p.sum()
    return p


def triple_law(model, prompt, params, top_pairs=150, top_triples=300):
    """Exact law of the first three output tokens under ``reference_law``: the likeliest triples
    (ids x1 * V^2 + x2 * V + x3) and their probabilities."""
    eos = model.config.eos_token_id

    def laws(seqs):
        with torch.no_grad():
            logits = model(seqs).logits[:, -1]
        outputs = seqs[:, len(prompt) :].tolist()
        return torch.stack(
            [reference_law(row, params, out, eos) for row, out in zip(logits, outputs, strict=True)]
        )

    base = torch.tensor([prompt])
    p1 = laws(base)[0]
    V = p1.shape[0]
    p12 = (p1[:, None] * laws(torch.cat([base.expand(V, -1), torch.arange(V)[:, None]], 1))).flatten()
    pairs = p12.topk(top_pairs).indices
    seqs = torch.cat([base.expand(top_pairs, -1), (pairs // V)[:, None], (pairs % V)[:, None]], 1)
    p123 = (p12[pairs][:, None] * laws(seqs)).flatten()
    best = p123.topk(top_triples)
    return pairs[best.indices // V] * V + best.indices % V, best.values


def first_tokens(model, spec, prompt, params, seeds, n_tokens=3):
    runner = ModelRunner(model, len(seeds), 64, spec, 3)
    pairs = runner.prefill_group([list(prompt)] * len(seeds), [params] * len(seeds), list(seeds))
    states, outs = [s for s, _ in pairs], [list(o.tokens) for _, o in pairs]
    while min(len(o) for o in outs) < n_tokens:
        for out, step in zip(outs, runner.step(states), strict=True):
            out += step.tokens
    return [o[:n_tokens] for o in outs]


def law_cases(model):
    eos = model.config.eos_token_id
    with torch.no_grad():
        top = int(model(torch.tensor([PROMPT])).logits[0, -1].argmax())  # the likeliest first token
    return {
        "logit_bias+min_p": SamplingParams(
            temperature=1.0, logit_bias={7: 2.0, 9: -3.0, 40: 1.5}, min_p=0.05
        ),
        # EOS made likely, then forbidden for the first two tokens: the third may be EOS. In rejection
        # mode tokens 2 and 3 come out of one verify step, so the boundary falls inside a draft chain.
        "min_new_tokens": SamplingParams(temperature=0.9, min_new_tokens=2, logit_bias={eos: 4.0}),
        # The likeliest token, biased to come back, and held back by the penalties: its law at the
        # second and third positions moves with how often it came before, inside the draft chain too
        # (rejection mode). The bias makes repeats common enough for the test to see a draft
        # position that ignores the drafts before it (checked: that mutant fails here).
        "penalties": SamplingParams(
            temperature=1.0,
            logit_bias={top: 3.0},
            frequency_penalty=1.5,
            presence_penalty=0.5,
            repetition_penalty=1.5,
        ),
    }


@pytest.mark.parametrize("spec", ["none", "rejection"])
@pytest.mark.parametrize("case", ["logit_bias+min_p", "min_new_tokens", "penalties"])
def test_the_sampled_law_is_the_reference_law(model, spec, case):
    """Joint law of the first three tokens (in rejection mode the second and third are accepted
    drafts or residual/bonus draws), against the exact reference law: tests/stats.py's 6-sigma bound
    in each of the 300 likeliest triples and one bin for the rest."""
    params = law_cases(model)[case]
    prompt = PROMPT
    ids, probs = triple_law(model, prompt, params)
    law = torch.cat([probs, (1 - probs.sum()).clamp(min=0).reshape(1)]).numpy()
    lookup = {int(t): k for k, t in enumerate(ids)}
    V = model.config.vocab_size
    counts = torch.zeros(len(ids) + 1)
    n, batch = 1600, 200
    for start in range(0, n, batch):
        for a, b, c in first_tokens(model, spec, prompt, params, range(start, start + batch)):
            counts[lookup.get((a * V + b) * V + c, len(ids))] += 1
    assert_counts_follow(counts.numpy(), law, f"{case}, spec={spec}")


def test_min_new_tokens_blocks_eos_at_every_draft_position(model):
    eos = model.config.eos_token_id
    params = SamplingParams(temperature=1.0, min_new_tokens=6, logit_bias={eos: 8.0})
    outs = first_tokens(model, "rejection", [5, 6, 7, 8], params, range(64), n_tokens=8)
    assert all(eos not in o[:6] for o in outs)
    assert sum(eos in o[6:] for o in outs) > 32  # and EOS, now likely, comes right after


def test_sampling_params_refuse_what_they_cannot_honour():
    ok = SamplingParams.from_dict(
        {"frequency_penalty": 0.0, "presence_penalty": 0, "repetition_penalty": 1.0, "n": 1, "stop": "x"}, 100
    )
    assert ok.stop == ["x"] and not ok.changes_logits
    pen = SamplingParams.from_dict(
        {"frequency_penalty": -2, "presence_penalty": 2, "repetition_penalty": 0.5}, 9
    )
    assert (pen.frequency_penalty, pen.presence_penalty, pen.repetition_penalty) == (-2, 2, 0.5)
    assert pen.changes_logits
    for raw, name in [
        ({"frequency_penalty": 2.5}, "frequency_penalty"),
        ({"presence_penalty": float("nan")}, "presence_penalty"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"repetition_penalty": 1e309}, "repetition_penalty"),
        ({"frequency_penalty": True}, "frequency_penalty"),
        ({"n": 2}, "n"),
        ({"regex": "a+"}, "regex"),
        ({"json_schema": "{}"}, "json_schema"),
        ({"stop_regex": "x$"}, "stop_regex"),
        ({"no_such_field": 1}, "no_such_field"),
        ({"min_p": 1.5}, "min_p"),
        ({"min_new_tokens": 9, "max_new_tokens": 4}, "min_new_tokens"),
        ({"logit_bias": {"100": 1.0}}, "logit_bias"),
        ({"logit_bias": {"x": 1.0}}, "logit_bias"),
        ({"stop": ["a", 3]}, "stop"),
        ({"skip_special_tokens": "yes"}, "skip_special_tokens"),
    ]:
        with pytest.raises(BadRequest, match=name):
            SamplingParams.from_dict(raw, 100)


def test_stop_text_helpers():
    assert trim_text("ab STOP cd", {"type": "stop", "matched": "STOP"}, False) == "ab "
    assert trim_text("ab STOP cd", {"type": "stop", "matched": "STOP"}, True) == "ab STOP"
    assert hold_back("hello ST", ["STOP"]) == "hello " and hold_back("hello", ["STOP"]) == "hello"
    stops = StopStrings(["bc"], lambda ids: "".join("abcd"[i] for i in ids))
    assert stops([0]) is None and stops([0, 1]) is None and stops([0, 1, 2]) == "bc"


def run_to_end(model, spec, params, prompt, stop_check=None):
    """One request through a real Scheduler; returns it finished, with each step's token count."""
    runner = ModelRunner(model, 2, 64, spec, 3)
    sched = Scheduler(runner, model.config.eos_token_id)
    steps: list[int] = []
    sched.on_tokens = steps.append
    done = threading.Event()
    req = Request("r", prompt, params, 3, lambda r, f: f and done.set(), stop_check=stop_check)
    sched.start()
    try:
        sched.submit(req)
        assert done.wait(60)
    finally:
        sched.stop()
    return req, steps


def test_a_stop_string_inside_an_accepted_draft_chain_ends_the_output_at_its_token(model, quick_model):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(quick_model / "tokenizer.json"))

    def decode(ids):
        return tok.decode(ids, skip_special_tokens=False)

    # Seeded sampling at T = 1: the same tokens in both runs (counter RNG), and long accepted chains on
    # the quick model, whose greedy output repeats itself so that no chain has a fresh text.
    params = SamplingParams(temperature=1.0, max_new_tokens=40, ignore_eos=True)
    full, steps = run_to_end(model, "rejection", params, [5, 6, 7, 8])
    # tokens i and i + 1 came out of one verify step (an accepted draft and the token after it); the
    # stop string is their text, seen nowhere before
    candidates, start = [], 0
    for count in steps:
        if start > 0:
            candidates += range(start, start + count - 1)
        start += count
    for i in candidates:
        stop = decode(full.output[i : i + 2])
        if len(stop) >= 2 and stop not in decode(full.output[: i + 1]):
            break
    else:
        raise AssertionError(f"no verify step emitted two tokens with a fresh text (steps {steps})")
    req, _ = run_to_end(model, "rejection", params, [5, 6, 7, 8], StopStrings([stop], decode))
    assert req.finish_reason == {"type": "stop", "matched": stop}
    assert req.output == full.output[: i + 2]  # ends at the completing token; the chain's rest dropped
