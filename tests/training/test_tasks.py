"""Demo tasks: reference completions score 1, corruptions score less, rewards never raise, the two
tasks differ in entropy, and the held-out prompts never appear in training."""

import itertools
import random
import string

import pytest

from bebop.training.tasks import (
    ADJECTIVES,
    ALPHABET,
    ARITH_STEP_CREDIT,
    HELD_OUT_BUCKETS,
    HOP_ONES,
    HOP_QUERIES,
    HOP_SYMBOLS,
    PAIRSUM_ITEMS,
    STORY_MAX_WORDS,
    STORY_VOCABULARY,
    TASKS,
    TOPICS,
    ArithmeticTask,
    Example,
    StoryTask,
    arith_steps,
    get_task,
    held_out_prompts,
    is_held_out,
    make_corpus,
    pairsum_key,
    training_examples,
)
from tests.stats import assert_counts_follow

ARITH = ArithmeticTask()
STORY = StoryTask()


@pytest.mark.parametrize("name", sorted(TASKS))
def test_reference_completions_score_one(name):
    task = get_task(name)
    rng = random.Random(0)
    for _ in range(2000):
        ex = task.sample(rng)
        assert task.reward(ex.prompt, ex.completion) == 1.0, ex


@pytest.mark.parametrize("name", sorted(TASKS))
def test_texts_stay_in_the_small_alphabet(name):
    for ex in training_examples(name, 1000, seed=3) + held_out_prompts(name, 200, seed=3):
        assert set(ex.text) <= ALPHABET, ex
        assert ex.prompt[-1] in "=:" and ex.completion.startswith(" ") and ex.completion.endswith(".")


def test_arith_format_matches_the_documented_example():
    assert arith_steps([12, 35, -18]) == ["12+30=42", "42+5=47", "47-10=37", "37-8=29"]
    assert ARITH.complete("12+35-18=", random.Random(0)) == " 12+30=42;42+5=47;47-10=37;37-8=29."
    assert arith_steps([12, -35]) == ["12-30=-18", "-18-5=-23"]  # the reward's prompts may go negative


def test_arith_prompts_have_two_or_three_two_digit_operands_and_never_go_negative():
    rng = random.Random(1)
    for _ in range(2000):
        prompt = ARITH.sample_prompt(rng)
        terms = prompt[:-1].replace("-", "+-").split("+")
        operands = [int(t) for t in terms]
        assert 2 <= len(operands) <= 3 and all(10 <= abs(x) <= 99 for x in operands), prompt
        assert all(sum(operands[: i + 1]) >= 0 for i in range(len(operands))), prompt


def test_arith_wrong_answers_score_below_one_with_step_credit():
    prompt = "12+35="  # reference " 12+30=42;42+5=47."
    assert ARITH.reward(prompt, " 12+30=42;42+5=47.") == 1.0
    assert ARITH.reward(prompt, " 47.") == 1.0  # only the final number is checked for full credit
    assert ARITH.reward(prompt, " 12+30=42;42+5=47. 13+1=99.") == 1.0  # after the first "." is ignored
    assert ARITH.reward(prompt, " 12+30=42;42+5=48.") == ARITH_STEP_CREDIT / 2
    assert ARITH.reward(prompt, " 12+30=42;42+5=47") == ARITH_STEP_CREDIT  # no period: no full credit
    assert ARITH.reward(prompt, " 12+30=41;41+5=46.") == 0.0
    assert ARITH.reward(prompt, " 46.") == 0.0
    assert ARITH.reward(prompt, "") == 0.0
    assert ARITH.reward(prompt, " the fox ran.") == 0.0
    assert ARITH.reward("what is 12+35", " 47.") == 0.0  # not a sum prompt


def test_arith_corrupted_final_number_always_loses_full_credit():
    rng = random.Random(2)
    for _ in range(500):
        ex = ARITH.sample(rng)
        body = ex.completion[:-1]
        wrong = body[:-1] + str((int(body[-1]) + rng.randint(1, 9)) % 10) + "."
        assert ARITH.reward(ex.prompt, wrong) < 1.0, wrong


def test_story_corruptions_score_below_one():
    prompt = "story about a brave fox:"
    good = " once, the brave fox ran to the old river. then, it found a red apple."
    assert STORY.reward(prompt, good) == 1.0
    assert STORY.reward("story about an old owl:", good) == 0.75  # topic word missing
    assert STORY.reward(prompt, good[:-1]) == 0.75  # no final period
    assert STORY.reward(prompt, good.replace("apple", "zeppelin")) == 0.75  # unknown word
    assert STORY.reward(prompt, good.replace("old", "0ld")) == 0.75  # stray character
    assert STORY.reward(prompt, " once, the brave fox ran to the old river.") == 0.75  # one sentence
    assert STORY.reward(prompt, good * 3) == 0.75  # six sentences
    assert STORY.reward(prompt, " " + " ".join(["fox"] * (STORY_MAX_WORDS + 1)) + ". fox.") == 0.75
    assert STORY.reward(prompt, " 12+30=42;42+5=47.") == 0.25  # ends with "." and nothing else
    assert STORY.reward(prompt, "") == 0.0
    assert STORY.reward("story about fox", good) == 0.0  # not a story prompt


def test_story_reference_stays_within_the_reward_bounds():
    lengths = []
    for ex in training_examples("story", 3000, seed=4):
        words = ex.completion.replace(",", " ").replace(".", " ").split()
        assert set(words) <= STORY_VOCABULARY
        assert ex.prompt.split()[-1][:-1] in words
        lengths.append(len(words))
    assert max(lengths) <= STORY_MAX_WORDS


def test_story_sentence_count_is_uniform_over_two_to_four():
    rng = random.Random(5)
    counts = [0, 0, 0]
    for _ in range(3000):
        counts[STORY.complete("story about a red fox:", rng).count(".") - 2] += 1
    assert_counts_follow(counts, [1, 1, 1], "sentences per story")


def _random_strings(rng: random.Random, n: int) -> list[str]:
    alphabet = string.printable + "+-=;.:,0123456789 ééüñ€\x00\u200b\U0001d523"
    out = ["", " ", ".", "=", ";", "=.", "-", "-.", "9" * 5000 + ".", "=" + "9" * 5000 + "."]
    for _ in range(n):
        out.append("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 120))))
    return out


def _mutations(rng: random.Random, text: str, n: int) -> list[str]:
    out = []
    for _ in range(n):
        chars = list(text)
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(chars) + 1)
            op = rng.randrange(3)
            if op == 0 or not chars[i:]:
                chars.insert(i, rng.choice("0123456789+-=;. az"))
            elif op == 1:
                del chars[i]
            else:
                chars[i] = rng.choice("0123456789+-=;. az")
        out.append("".join(chars))
    return out


@pytest.mark.parametrize("name", sorted(TASKS))
def test_reward_never_raises_and_stays_in_unit_interval(name):
    task = get_task(name)
    rng = random.Random(6)
    garbage = _random_strings(rng, 500)
    real = [task.sample(rng) for _ in range(50)]
    cases = list(itertools.product(garbage[:40], garbage[:40]))  # garbage prompts too
    cases += [(ex.prompt, g) for ex in real for g in garbage[:60]]
    cases += [(ex.prompt, m) for ex in real for m in _mutations(rng, ex.completion, 20)]
    cases += [(m, ex.completion) for ex in real for m in _mutations(rng, ex.prompt, 5)]
    for prompt, completion in cases:
        r = task.reward(prompt, completion)
        assert isinstance(r, float) and 0.0 <= r <= 1.0, (prompt, completion, r)
    for g in garbage[10:]:
        assert task.reward(real[0].prompt, g) < 1.0


def test_entropy_differs_between_tasks():
    rng = random.Random(7)
    arith = {ARITH.complete("12+35-18=", rng) for _ in range(200)}
    story = {STORY.complete("story about a brave fox:", rng) for _ in range(200)}
    assert len(arith) == 1
    assert len(story) > 150


@pytest.mark.parametrize("name", sorted(TASKS))
def test_held_out_prompts_never_appear_in_training(name):
    train = {ex.prompt for ex in training_examples(name, 5000, seed=0)}
    held = held_out_prompts(name, 500, seed=0)
    assert len(held) == 500 and all(isinstance(ex, Example) for ex in held)
    assert not train & {ex.prompt for ex in held}
    assert all(is_held_out(ex.prompt) for ex in held) and not any(is_held_out(p) for p in train)
    corpus = make_corpus([name], 5000, seed=0)
    assert not any(text.startswith(ex.prompt) for ex in held[:50] for text in corpus)


def test_held_out_share_of_the_prompt_spaces_is_about_one_bucket():
    story = [f"story about {'an' if a[0] in 'aeiou' else 'a'} {a} {t}:" for a in ADJECTIVES for t in TOPICS]
    sums = [f"{a}{b:+d}=" for a in range(10, 100) for b in range(-99, 100) if abs(b) >= 10 and a + b >= 0]
    for space in (story, sums):
        share = sum(map(is_held_out, space)) / len(space)
        assert abs(share - 1 / HELD_OUT_BUCKETS) < 0.25 / HELD_OUT_BUCKETS, share


def test_corpus_is_deterministic_and_mixes_the_tasks():
    a = make_corpus(["arith", "story"], 300, seed=11)
    assert a == make_corpus(["arith", "story"], 300, seed=11)
    assert a != make_corpus(["arith", "story"], 300, seed=12)
    assert len(a) == 600 and sum(t.startswith("story") for t in a) == 300
    assert any(t.startswith("story") for t in a[:20]) and any(not t.startswith("story") for t in a[:20])
    assert held_out_prompts("arith", 20, seed=11) == held_out_prompts("arith", 20, seed=11)


def test_get_task_refuses_unknown_names():
    assert get_task("arith") is TASKS["arith"] and get_task("story") is TASKS["story"]
    with pytest.raises(ValueError, match="arith, chain, hop, pairsum, pairsum10, story, sumdrill"):
        get_task("poetry")


def test_hop_answers_are_the_colour_of_the_image_of_six_distinct_symbols():
    hop = get_task("hop")
    rng = random.Random(8)
    one_lookup_right = total = 0
    for _ in range(60):
        ex = hop.sample(rng)
        pairs, colours = ex.prompt.removeprefix("hop ").removesuffix(":").split(" ; ")
        image = dict(p.split("-") for p in pairs.split())
        colour = {c[0]: c[1] for c in colours.split()}
        assert sorted(image.values()) == sorted(image) == list(HOP_SYMBOLS)  # a permutation
        assert sum(c == "1" for c in colour.values()) == HOP_ONES
        items = ex.completion.removesuffix(".").split()
        assert len({it[0] for it in items}) == len(items) == HOP_QUERIES  # queries never repeat
        assert all(it[1] == colour[image[it[0]]] for it in items)
        wrong = items[0][0] + "01"[items[0][1] == "0"]
        assert hop.reward(ex.prompt, ex.completion.replace(items[0], wrong, 1)) < 1.0
        one_lookup_right += sum(it[1] == colour[it[0]] for it in items)
        total += len(items)
    # One lookup (the symbol's own colour) agrees with the answer at chance, 0.625 in expectation
    # (1/12 fixed points, else 78/132); 360 answers put 0.75 more than 4 sigma away.
    assert one_lookup_right / total < 0.75


def test_pairsum_answers_are_the_colour_at_the_sum_of_the_last_two_symbols():
    pairsum = get_task("pairsum")
    assert pairsum_key("a", "a") == "a" and pairsum_key("c", "d") == "f" and pairsum_key("l", "b") == "a"
    rng = random.Random(9)
    single_key_right = total = 0
    for _ in range(60):
        ex = pairsum.sample(rng)
        start, colours = ex.prompt.removeprefix("pairsum ").removesuffix(":").split(" ; ")
        colour = {c[0]: c[1] for c in colours.split()}
        assert sorted(colour) == list(HOP_SYMBOLS) and sum(c == "1" for c in colour.values()) == HOP_ONES
        items = ex.completion.removesuffix(".").split()
        assert len(items) == PAIRSUM_ITEMS
        previous = start
        for it in items:
            index = (HOP_SYMBOLS.index(previous) + HOP_SYMBOLS.index(it[0])) % len(HOP_SYMBOLS)
            assert it[1] == colour[HOP_SYMBOLS[index]]
            single_key_right += it[1] == colour[it[0]]
            previous = it[0]
        total += len(items)
        # a wrong answer costs its share; a wrong symbol also re-keys every answer after it
        wrong = items[0][0] + "01"[items[0][1] == "0"]
        assert pairsum.reward(ex.prompt, ex.completion.replace(items[0], wrong, 1)) == pytest.approx(0.91)
        assert pairsum.reward(ex.prompt, ex.completion.removesuffix(".")) == pytest.approx(0.9)
    # The symbol's own colour (one lookup keyed by the input token alone) agrees with the answer at
    # chance: 0.625 in expectation (the sum is the symbol itself when the one before is "a", 1/12;
    # else two distinct symbols share a colour with chance 78/132); 600 answers put 0.70 over 3.5 sigma away.
    assert single_key_right / total < 0.70


def test_sumdrill_answers_the_sum_that_pairsum10_looks_up():
    drill, pairsum10 = get_task("sumdrill"), get_task("pairsum10")
    symbols = HOP_SYMBOLS[:10]
    rng = random.Random(4)
    for _ in range(40):
        ex = drill.sample(rng)
        previous = ex.prompt.removeprefix("sumdrill ").removesuffix(" ; sums:")
        for it in ex.completion.removesuffix(".").split():
            assert int(it[1]) == (symbols.index(previous) + symbols.index(it[0])) % 10
            previous = it[0]
        ex = pairsum10.sample(rng)
        start, colours = ex.prompt.removeprefix("pairsum10 ").removesuffix(":").split(" ; ")
        colour = {c[0]: c[1] for c in colours.split()}
        assert sorted(colour) == list(symbols) and sum(c == "1" for c in colour.values()) == 7
        first = ex.completion.split()[0]
        assert first[1] == colour[pairsum_key(start, first[0], symbols)]
    # a prompt of one task is no prompt of the other
    assert (
        drill.reward(ex.prompt, ex.completion) == 0.0
        and get_task("pairsum").reward(ex.prompt, ex.completion) == 0.0
    )
