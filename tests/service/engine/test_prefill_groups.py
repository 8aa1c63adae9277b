"""How the scheduler groups fresh requests for prefill: one forward per group, prompts right-padded
to the group's longest, padding at most doubling the tokens computed."""

from bebop.service.engine.sampling import SamplingParams
from bebop.service.engine.scheduler import MAX_GROUP_TOKENS, MAX_PADDED_RATIO, Request, prefill_groups


def requests(*lengths: int) -> list[Request]:
    params = SamplingParams(max_new_tokens=4)
    return [
        Request(rid=str(i), prompt=[5] * n, params=params, seed=i, on_event=lambda req, final: None)
        for i, n in enumerate(lengths)
    ]


def lengths(groups: list[list[Request]]) -> list[list[int]]:
    return [[len(r.prompt) for r in group] for group in groups]


def test_a_grpo_group_and_similar_prompts_share_one_forward():
    assert lengths(prefill_groups(requests(8, 8, 8, 8))) == [[8, 8, 8, 8]]
    assert lengths(prefill_groups(requests(9, 6, 6, 7))) == [[6, 6, 7, 9]]


def test_a_long_prompt_is_not_padded_onto_short_ones():
    assert lengths(prefill_groups(requests(4, 500, 4, 4))) == [[4, 4, 4], [500]]
    # two prompts: padding the shorter to the longer never more than doubles the tokens
    assert lengths(prefill_groups(requests(500, 1))) == [[1, 500]]
    assert lengths(prefill_groups(requests(1, 1, 500))) == [[1, 1], [500]]  # 1500 > 2 x 502


def test_every_group_keeps_the_padding_bound_and_no_request_is_lost():
    reqs = requests(1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 3, 3, 3, 50, 51)
    groups = prefill_groups(reqs)
    assert sorted(r.rid for g in groups for r in g) == sorted(r.rid for r in reqs)
    for group in groups:
        real = sum(len(r.prompt) for r in group)
        padded = len(group) * max(len(r.prompt) for r in group)
        assert padded <= MAX_PADDED_RATIO * real and (padded <= MAX_GROUP_TOKENS or len(group) == 1)
    assert prefill_groups([]) == []


def test_a_group_s_padded_tokens_are_bounded():
    n = MAX_GROUP_TOKENS // 4
    assert lengths(prefill_groups(requests(n, n, n, n, n, n))) == [[n] * 4, [n] * 2]
    assert lengths(prefill_groups(requests(3 * MAX_GROUP_TOKENS))) == [[3 * MAX_GROUP_TOKENS]]
