"""The engine's model runner in-process: greedy agreement, batch invariance, regressions of engine v2.

The exactness of the sampled law is tested in test_exactness.py."""

import pytest

from bebop.model import load_model
from bebop.service.engine.runner import ModelRunner
from bebop.service.engine.sampling import SamplingParams


def generate(model, spec, prompts, seeds, n_tokens, temperature=1.0, max_running=None, top_k=-1, top_p=1.0):
    """First ``n_tokens`` of each prompt, all decoded together by one runner."""
    runner = ModelRunner(model, max_running or len(prompts), 64, spec, 3)
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)
    states, outs = [], []
    for prompt, seed in zip(prompts, seeds, strict=True):
        state, out = runner.prefill(list(prompt), params, seed)
        states.append(state)
        outs.append(list(out.tokens))
    while min(len(o) for o in outs) < n_tokens:
        for out, step in zip(outs, runner.step(states), strict=True):
            out += step.tokens
    return [o[:n_tokens] for o in outs]


@pytest.fixture(scope="module")
def model(quick_model):
    return load_model(quick_model)


def test_greedy_is_identical_in_every_spec_mode(model):
    prompts, seeds = [[5, 6, 7], [8, 9, 10, 11, 12], [40]], [1, 2, 3]
    plain = generate(model, "none", prompts, seeds, 24, temperature=0.0)
    assert generate(model, "target_only", prompts, seeds, 24, temperature=0.0) == plain
    assert generate(model, "rejection", prompts, seeds, 24, temperature=0.0) == plain


@pytest.mark.parametrize("spec", ["none", "target_only", "rejection"])
def test_a_sequence_does_not_depend_on_its_batch(model, spec):
    alone = generate(model, spec, [[5, 6, 7]], [11], 20)
    crowd = generate(model, spec, [[9, 9], [5, 6, 7], [1, 2, 3, 4, 5, 6]], [3, 11, 4], 20)
    assert crowd[1] == alone[0]
    assert generate(model, spec, [[5, 6, 7]], [11], 20) == alone  # and reruns are identical


# ---------------------------------------------------------------------------- engine v2 regressions
def decode(runner, states, outs, n_tokens):
    """Step every running sequence until each of ``states`` has ``n_tokens`` tokens."""
    while min(len(o) for o in outs) < n_tokens:
        for out, step in zip(outs, runner.step(states), strict=True):
            out += step.tokens
    return [o[:n_tokens] for o in outs]


@pytest.mark.parametrize("spec", ["target_only", "rejection"])
def test_a_row_near_its_context_end_survives_a_long_prompt_joining(model, spec):
    """A newly admitted prompt used to pad every row's pending MTP pairs to its length, and the
    KV write of an old row near the end of its slot overflowed: the whole batch was aborted."""
    runner = ModelRunner(model, 2, 40, spec, 3)
    params = SamplingParams(temperature=1.0, max_new_tokens=1000)
    old, _ = runner.prefill([5] * 34, params, seed=1)
    while old.position < 37:
        runner.step([old])
    new, _ = runner.prefill(list(range(3, 23)), params, seed=2)  # 20 tokens
    outputs = runner.step([old, new])
    assert all(len(o.tokens) >= 1 for o in outputs)


@pytest.mark.parametrize("spec", ["none", "rejection"])
def test_tokens_do_not_depend_on_the_neighbours_sampling_params(model, spec):
    plain = SamplingParams(temperature=1.0)
    runner = ModelRunner(model, 1, 64, spec, 3)
    state, first = runner.prefill([5, 6, 7], plain, seed=11)
    alone = decode(runner, [state], [list(first.tokens)], 20)[0]

    runner = ModelRunner(model, 3, 64, spec, 3)
    states, outs = [], []
    for prompt, params, seed in [
        ([9, 9], SamplingParams(temperature=0.8, top_k=3), 3),
        ([5, 6, 7], plain, 11),
        ([1, 2, 3, 4], SamplingParams(temperature=1.2, top_p=0.5), 4),
    ]:
        state, first = runner.prefill(prompt, params, seed)
        states.append(state)
        outs.append(list(first.tokens))
    assert decode(runner, states, outs, 20)[1] == alone


def test_tiny_temperatures_decode_like_greedy(model):
    greedy = generate(model, "rejection", [[5, 6, 7]], [1], 16, temperature=0.0)
    assert generate(model, "rejection", [[5, 6, 7]], [1], 16, temperature=1e-38) == greedy
    assert generate(model, "none", [[5, 6, 7]], [1], 16, temperature=1e-30) == greedy


@pytest.mark.parametrize("spec", ["none", "rejection"])
@pytest.mark.parametrize(
    "prompts",
    [
        [[5, 6, 7], [8, 9, 10], [11, 12, 13]],  # one length: a GRPO group
        [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14], [4]],  # right-padded to the longest
    ],
)
def test_a_group_prefill_gives_each_row_its_own_tokens(model, spec, prompts):
    params = [
        SamplingParams(temperature=1.0),
        SamplingParams(temperature=0.7, top_k=5),
        SamplingParams(temperature=1.3, top_p=0.9),
    ]
    seeds = [11, 12, 13]
    runner = ModelRunner(model, 3, 64, spec, 3)
    pairs = runner.prefill_group(prompts, params, seeds)
    assert [s.position for s, _ in pairs] == [len(p) for p in prompts]
    grouped = decode(runner, [s for s, _ in pairs], [list(o.tokens) for _, o in pairs], 16)
    for k in range(3):
        solo = ModelRunner(model, 1, 64, spec, 3)
        state, first = solo.prefill(prompts[k], params[k], seeds[k])
        # the first token's law too: a sampled token alone can coincide under a wrong law
        assert first.logprobs == pytest.approx(pairs[k][1].logprobs, abs=1e-5)
        assert first.entropies == pytest.approx(pairs[k][1].entropies, abs=1e-5)
        assert decode(solo, [state], [list(first.tokens)], 16)[0] == grouped[k]


def test_sequences_keep_their_tokens_when_the_pool_compacts(model):
    """Releasing a sequence moves the last one into its slot; every survivor goes on as if alone."""
    runner = ModelRunner(model, 3, 64, "rejection", 3)
    params = SamplingParams(temperature=1.0)
    states, outs = [], []
    for k in range(3):
        state, first = runner.prefill([5 + k, 6, 7], params, seed=k)
        states.append(state)
        outs.append(list(first.tokens))
    decode(runner, states, outs, 6)
    runner.release(states[0])  # states[2] moves into slot 0
    assert states[2].slot == 0 and runner.running == 2
    survivors = decode(runner, states[1:], outs[1:], 24)
    for k in (1, 2):
        solo = ModelRunner(model, 1, 64, "rejection", 3)
        state, first = solo.prefill([5 + k, 6, 7], params, seed=k)
        assert decode(solo, [state], [list(first.tokens)], 24)[0] == survivors[k - 1]
    with pytest.raises(ValueError, match="every running sequence"):
        runner.step(states[1:2])


@pytest.mark.parametrize("spec", ["none", "rejection"])
def test_static_shapes_what_a_cuda_graph_replays_gives_the_same_tokens(model, spec):
    """Under CUDA graphs a step runs a fixed bucket of rows (free rows padded in) over the whole
    slot; the same computation run eagerly on CPU must give each sequence the same tokens."""
    prompts, seeds = [[5, 6, 7], [8, 9, 10, 11, 12], [40]], [1, 2, 3]
    dynamic = generate(model, spec, prompts, seeds, 24)
    runner = ModelRunner(model, 8, 64, spec, 3, static_shapes=True)  # bucket 4: one padding row
    params = SamplingParams(temperature=1.0)
    pairs = [runner.prefill(p, params, s) for p, s in zip(prompts, seeds, strict=True)]
    static = decode(runner, [s for s, _ in pairs], [list(o.tokens) for _, o in pairs], 24)
    assert static == dynamic
