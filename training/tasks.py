"""Demo tasks with verifiable rewards: one almost deterministic, one free-running.

The demo model is trained on both, and its MTP draft heads are evaluated on each, so the two
tasks sit at the ends of the entropy range:

- ``arith`` (LOW entropy): two or three two-digit operands joined by ``+``/``-``; the completion
  works the sum out left to right, one tens step and one units step per operand, so every
  completion token is fixed by the prompt::

      12+35-18= -> " 12+30=42;42+5=47;47-10=37;37-8=29."

- ``story`` (HIGH entropy): a random grammar with many choices at every position writes two to
  four sentences about the prompt's topic::

      story about a brave fox: -> " one day, the brave fox wandered slowly across the old bridge. ..."

More tasks are not in the shipped model: ``chain``, ``hop``, ``pairsum`` and ``pairsum10``, built to
make a one-layer MTP head capacity-limited, and ``sumdrill``, trained beside ``pairsum10``
(``examples/capacity_heads.py``).

Every text is lowercase ASCII letters, digits, space and ``+-=;.:,`` so the tokenizer stays
small. A prompt ends in ``=`` or ``:`` and its completion starts with a space; the full training
text is ``prompt + completion`` (the trainer appends the end-of-text token).

Training and held-out prompts come from disjoint parts of each prompt space: a prompt is held out
when a CRC32 of its text falls in one bucket out of ``HELD_OUT_BUCKETS``, whatever the seed. The
two streams also draw from differently named RNGs, so equal seeds give unrelated sequences.
"""

from __future__ import annotations

import abc
import random
import re
import zlib
from dataclasses import dataclass

# One prompt in HELD_OUT_BUCKETS is reserved for evaluation: 1/8 keeps enough prompts on each
# side (1,525 of the 12,195 two-operand sums, 217 of the 1,760 story prompts).
HELD_OUT_BUCKETS = 8

# Every character a generated text may contain (checked by the tests).
ALPHABET = frozenset("abcdefghijklmnopqrstuvwxyz0123456789 +-=;.:,")


@dataclass(frozen=True)
class Example:
    prompt: str
    completion: str  # the reference completion

    @property
    def text(self) -> str:
        return self.prompt + self.completion


@dataclass(frozen=True)
class Task(abc.ABC):
    """A prompt distribution, a reference-completion sampler and a reward in [0, 1]."""

    name: str

    @abc.abstractmethod
    def sample_prompt(self, rng: random.Random) -> str: ...

    @abc.abstractmethod
    def complete(self, prompt: str, rng: random.Random) -> str:
        """A reference completion of one of this task's own prompts."""

    @abc.abstractmethod
    def reward(self, prompt: str, completion: str) -> float:
        """Score any completion (a model's included) of ``prompt``; never raises, 0.0 for garbage."""

    def sample(self, rng: random.Random) -> Example:
        prompt = self.sample_prompt(rng)
        return Example(prompt, self.complete(prompt, rng))


def is_held_out(prompt: str) -> bool:
    """Whether ``prompt`` belongs to the evaluation side of its task's prompt space."""
    return zlib.crc32(prompt.encode()) % HELD_OUT_BUCKETS == 0


# ---------------------------------------------------------------------------------------------
# arith


# Full credit needs the right final number; otherwise each reference step reproduced at its
# position earns a share of this, so a wrong answer always scores below one.
ARITH_STEP_CREDIT = 0.5

# Prompts the reward accepts: a few integers of up to four digits (wider than the generated
# ones, narrow enough that garbage never builds a huge number).
_ARITH_PROMPT_RE = re.compile(r"\d{1,4}(?:[+-]\d{1,4}){1,4}=")
_ARITH_FINAL_RE = re.compile(r"(-?\d{1,7})\s*$")


def arith_steps(operands: list[int]) -> list[str]:
    """The worked steps for ``operands[0] + operands[1] + ...`` (signed operands, |x| < 100 after
    the first): one tens step and one units step per operand, e.g. [12, -35] ->
    ["12-30=-18", "-18-5=-23"]."""
    total = operands[0]
    steps = []
    for x in operands[1:]:
        sign = "-" if x < 0 else "+"
        tens, units = divmod(abs(x), 10)
        for part in (tens * 10, units):
            new = total - part if x < 0 else total + part
            steps.append(f"{total}{sign}{part}={new}")
            total = new
    return steps


def _parse_arith_prompt(prompt: str) -> list[int] | None:
    """``"12+35-7="`` -> [12, 35, -7]; None if the prompt is not a sum."""
    if _ARITH_PROMPT_RE.fullmatch(prompt) is None:
        return None
    return [int(x) for x in re.findall(r"[+-]?\d+", prompt[:-1])]


@dataclass(frozen=True)
class ArithmeticTask(Task):
    """Sums of two-digit numbers worked out step by step; running totals never go negative.

    Reward: 1.0 when the text before the first ``.`` ends in the right result. Otherwise
    ``ARITH_STEP_CREDIT`` times the fraction of reference steps that the completion reproduces
    at the same position (steps are split on ``;``, compared after stripping spaces). Anything
    after the first ``.`` is ignored, and a completion with no ``.`` cannot earn full credit.
    """

    name: str = "arith"
    min_operands: int = 2
    max_operands: int = 3

    def sample_prompt(self, rng: random.Random) -> str:
        while True:  # rejection keeps every running total >= 0, so results never carry a sign
            n = rng.randint(self.min_operands, self.max_operands)
            operands = [rng.randint(10, 99)]
            for _ in range(n - 1):
                operands.append(rng.choice((1, -1)) * rng.randint(10, 99))
            totals = [sum(operands[: i + 1]) for i in range(n)]
            if min(totals) >= 0:
                break
        return str(operands[0]) + "".join(f"{x:+d}" for x in operands[1:]) + "="

    def complete(self, prompt: str, rng: random.Random) -> str:
        operands = _parse_arith_prompt(prompt)
        if operands is None:
            raise ValueError(f"not an arith prompt: {prompt!r}")
        return " " + ";".join(arith_steps(operands)) + "."

    def reward(self, prompt: str, completion: str) -> float:
        operands = _parse_arith_prompt(prompt)
        if operands is None:
            return 0.0
        body, period, _ = completion.partition(".")
        final = _ARITH_FINAL_RE.search(body)
        if period and final is not None and int(final.group(1)) == sum(operands):
            return 1.0
        reference = arith_steps(operands)
        steps = [s.strip() for s in body.split(";")]
        matched = sum(a == b for a, b in zip(steps, reference, strict=False))
        return ARITH_STEP_CREDIT * matched / len(reference)


# ---------------------------------------------------------------------------------------------
# story

TOPICS = (
    "fox", "bear", "owl", "rabbit", "wolf", "deer", "otter", "crow", "mouse", "cat", "dog",
    "horse", "goat", "frog", "duck", "badger", "hedgehog", "squirrel", "beaver", "eagle", "hawk",
    "lion", "tiger", "whale", "seal", "turtle", "snail", "spider", "bee", "moth", "robot", "girl",
    "boy", "king", "queen", "farmer", "sailor", "baker", "knight", "wizard", "pirate", "painter",
    "dragon", "giant",
)  # fmt: skip
ADJECTIVES = (
    "red", "small", "old", "brave", "quiet", "clever", "tired", "happy", "hungry", "curious",
    "gentle", "lazy", "proud", "shy", "wild", "young", "grey", "golden", "silver", "tiny", "tall",
    "bold", "calm", "sleepy", "lonely", "kind", "strange", "swift", "wise", "grumpy", "cheerful",
    "nervous", "fierce", "patient", "restless", "humble", "noisy", "playful", "ancient", "little",
)  # fmt: skip
MOTION_VERBS = (
    "walked", "ran", "wandered", "jumped", "slept", "sang", "danced", "waited", "rested", "hid",
    "played", "climbed", "swam", "looked", "sat", "stood", "crawled", "raced", "drifted",
    "hurried", "stayed", "marched",
)  # fmt: skip
PREPOSITIONS = (
    "to", "toward", "near", "across", "through", "under", "over", "behind", "beside", "around",
    "into", "past", "along", "inside",
)  # fmt: skip
PLACES = (
    "river", "forest", "hill", "village", "meadow", "lake", "garden", "cave", "bridge", "castle",
    "tower", "market", "field", "barn", "mountain", "valley", "beach", "harbor", "road", "orchard",
    "island", "pond", "well", "library", "kitchen", "shore", "desert", "swamp", "cliff", "farm",
)  # fmt: skip
OBJECT_VERBS = (
    "found", "saw", "followed", "helped", "met", "chased", "watched", "carried", "painted",
    "built", "lost", "greeted", "visited", "fed", "dropped", "hid", "mended", "shared", "kept",
    "counted",
)  # fmt: skip
THINGS = (
    "apple", "stone", "feather", "lantern", "map", "key", "boat", "basket", "letter", "drum",
    "coin", "candle", "rope", "shell", "flower", "book", "hat", "ring", "bell", "kite", "mirror",
    "cake", "bowl", "blanket", "box", "seed", "leaf", "cloak", "ladder", "pebble",
)  # fmt: skip
ADVERBS = (
    "slowly", "quickly", "happily", "quietly", "carefully", "bravely", "softly", "suddenly",
    "gladly", "calmly", "eagerly", "sadly", "proudly", "loudly", "gently",
)  # fmt: skip
OPENERS = ("once", "one day", "long ago", "one morning", "at dawn", "in the spring", "last winter")
CONNECTIVES = (
    "then", "later", "soon", "meanwhile", "next", "finally", "afterward", "that night",
    "after a while", "by noon", "in the evening", "so", "but",
)  # fmt: skip
# Words the templates below spell out themselves.
FUNCTION_WORDS = ("the", "a", "an", "it", "they", "and", "felt")

_WORD_GROUPS = (TOPICS, ADJECTIVES, MOTION_VERBS, PREPOSITIONS, PLACES, OBJECT_VERBS, THINGS, ADVERBS)
STORY_VOCABULARY = frozenset(
    word
    for group in (*_WORD_GROUPS, OPENERS, CONNECTIVES, FUNCTION_WORDS)
    for phrase in group
    for word in phrase.split()
)

# Bound of the reward's shape check: a reference sentence has at most 19 words (three-word
# opener or connective, three-word subject, two six-word clauses joined by "and"), 76 in four.
STORY_MAX_WORDS = 80
_STORY_PROMPT_RE = re.compile(r"story about an? ([a-z]+) ([a-z]+):")
_WORD_RE = re.compile(r"[a-z]+")


def _a(word: str) -> str:
    """The indefinite article and ``word``: ``a fox``, ``an owl``."""
    return ("an " if word[0] in "aeiou" else "a ") + word


@dataclass(frozen=True)
class StoryTask(Task):
    """Two to four sentences about the prompt's topic from a grammar with many choices per slot.

    Reward: the mean of four checks, each 0 or 1 --
    (1) the topic noun of the prompt appears as a word of the completion;
    (2) the completion has at least one word and every word is in ``STORY_VOCABULARY``, with no
        characters besides lowercase letters, spaces, ``,`` and ``.``;
    (3) the completion ends with ``.``;
    (4) it has ``min_sentences``..``max_sentences`` non-empty sentences and at most
        ``STORY_MAX_WORDS`` words.
    A prompt that is not ``story about a <adjective> <topic>:`` scores 0.
    """

    name: str = "story"
    min_sentences: int = 2
    max_sentences: int = 4

    def sample_prompt(self, rng: random.Random) -> str:
        return f"story about {_a(rng.choice(ADJECTIVES))} {rng.choice(TOPICS)}:"

    def complete(self, prompt: str, rng: random.Random) -> str:
        m = _STORY_PROMPT_RE.fullmatch(prompt)
        if m is None:
            raise ValueError(f"not a story prompt: {prompt!r}")
        adjective, topic = m.groups()
        first = f"{rng.choice(OPENERS)}, the {adjective} {topic} {self._clause(rng)}"
        sentences = [first]
        for _ in range(rng.randint(self.min_sentences, self.max_sentences) - 1):
            other = f"{_a(rng.choice(ADJECTIVES))} {rng.choice(TOPICS)}"
            subject = rng.choice((f"the {topic}", f"the {adjective} {topic}", "it", "they", other))
            sentence = f"{subject} {self._clause(rng)}"
            if rng.random() < 0.6:
                sentence = f"{rng.choice(CONNECTIVES)}, {sentence}"
            sentences.append(sentence)
        return "".join(f" {s}." for s in sentences)

    @staticmethod
    def _clause(rng: random.Random) -> str:
        """A predicate: move somewhere, act on a thing, or feel something; sometimes two."""
        parts = []
        for _ in range(2 if rng.random() < 0.3 else 1):
            kind = rng.randrange(3)
            if kind == 0:
                adverb = f" {rng.choice(ADVERBS)}" if rng.random() < 0.5 else ""
                place = f"the {rng.choice(ADJECTIVES)} {rng.choice(PLACES)}"
                parts.append(f"{rng.choice(MOTION_VERBS)}{adverb} {rng.choice(PREPOSITIONS)} {place}")
            elif kind == 1:
                parts.append(f"{rng.choice(OBJECT_VERBS)} {_a(rng.choice(ADJECTIVES))} {rng.choice(THINGS)}")
            else:
                parts.append(f"felt {rng.choice(ADJECTIVES)}")
        return " and ".join(parts)

    def reward(self, prompt: str, completion: str) -> float:
        m = _STORY_PROMPT_RE.fullmatch(prompt)
        if m is None:
            return 0.0
        topic = m.group(2)
        words = _WORD_RE.findall(completion)
        sentences = [s for s in completion.split(".") if s.strip()]
        checks = (
            topic in words,
            bool(words)
            and all(w in STORY_VOCABULARY for w in words)
            and not re.search(r"[^a-z ,.]", completion),
            completion.endswith("."),
            self.min_sentences <= len(sentences) <= self.max_sentences and len(words) <= STORY_MAX_WORDS,
        )
        return sum(checks) / len(checks)


# ---------------------------------------------------------------------------------------------
# chain (capacity-limited for a one-layer MTP head)

# Multipliers coprime with 100, so x -> (a x + b) mod 100 is a permutation of 00..99.
CHAIN_MULTIPLIERS = (3, 7, 9, 11, 13, 17, 19, 21, 23, 27, 29, 31, 33, 37, 39)
CHAIN_LENGTH = 8  # numbers in a completion
# A completion with every number right but no "." earns this; each right number a share of it.
CHAIN_PARTIAL_CREDIT = 0.9
_CHAIN_PROMPT_RE = re.compile(r"chain x(\d{1,2})\+(\d{1,2}) from (\d{2}):")


def chain_numbers(a: int, b: int, x0: int, n: int = CHAIN_LENGTH) -> list[str]:
    """The ``n`` iterates of ``x -> (a x + b) mod 100`` after ``x0``, two digits each."""
    out, x = [], x0
    for _ in range(n):
        x = (a * x + b) % 100
        out.append(f"{x:02d}")
    return out


@dataclass(frozen=True)
class ChainTask(Task):
    """Iterate an affine map mod 100 from the prompt's start: the token after next is a function of
    the next one that takes a multiplication, an addition and a carry to compute.

        chain x7+13 from 42: -> " 07 62 47 42 07 62 47 42."

    This is the task on which a one-layer MTP head is capacity-limited: to draft the number after
    the one it was just given, the head must compute ``(a x + b) mod 100`` itself in one layer,
    where the backbone spreads the same computation over its depth. Low entropy (every token is
    fixed by the prompt); the head cannot match the backbone everywhere, so the loss decides where
    its capacity goes. Not part of the shipped demo model (``examples/capacity_heads.py`` builds
    a model on it and compares heads).

    Reward: 1.0 when all ``CHAIN_LENGTH`` numbers are right and the text has a ``.``; otherwise
    ``CHAIN_PARTIAL_CREDIT`` times the share of numbers that are right at their position (text
    before the first ``.``, split on spaces).
    """

    name: str = "chain"

    def sample_prompt(self, rng: random.Random) -> str:
        a, b, x0 = rng.choice(CHAIN_MULTIPLIERS), rng.randrange(100), rng.randrange(100)
        return f"chain x{a}+{b} from {x0:02d}:"

    def complete(self, prompt: str, rng: random.Random) -> str:
        m = _CHAIN_PROMPT_RE.fullmatch(prompt)
        if m is None:
            raise ValueError(f"not a chain prompt: {prompt!r}")
        a, b, x0 = (int(g) for g in m.groups())
        return " " + " ".join(chain_numbers(a, b, x0)) + "."

    def reward(self, prompt: str, completion: str) -> float:
        m = _CHAIN_PROMPT_RE.fullmatch(prompt)
        if m is None:
            return 0.0
        a, b, x0 = (int(g) for g in m.groups())
        reference = chain_numbers(a, b, x0)
        body, period, _ = completion.partition(".")
        items = body.split()
        matched = sum(x == y for x, y in zip(items, reference, strict=False))
        if period and matched == len(reference) and len(items) == len(reference):
            return 1.0
        return CHAIN_PARTIAL_CREDIT * matched / len(reference)


# ---------------------------------------------------------------------------------------------
# hop (a two-step lookup: one step more than a one-layer MTP head can take)

HOP_SYMBOLS = "abcdefghijkl"
HOP_ONES = 9  # symbols coloured 1 in each prompt (of 12): a head that cannot look up guesses 1 at 0.75
HOP_QUERIES = 6  # distinct symbols asked per completion
_HOP_PROMPT_RE = re.compile(r"hop((?: [a-l]-[a-l]){12}) ;((?: [a-l][01]){12}):")


def _random_colouring(rng: random.Random, symbols: str = HOP_SYMBOLS, ones: int = HOP_ONES) -> str:
    """The symbols with their colours, ``ones`` of them 1: "a1 b0 ... l1"."""
    coloured = set(rng.sample(symbols, ones))
    return " ".join(f"{x}{int(x in coloured)}" for x in symbols)


def _answer_items(completion: str) -> tuple[list[str], bool]:
    """The ``<symbol><answer>`` items before the first ``.``, and whether there is one."""
    body, period, _ = completion.partition(".")
    return body.split(), bool(period)


def _answer_reward(items: list[str], ended: bool, right: int, n: int) -> float:
    """0.9 times the share of the n answers that are right, plus 0.1 for exactly n two-character
    items ending in ``.``."""
    well_formed = ended and len(items) == n and all(len(it) == 2 for it in items)
    return 0.9 * min(right, n) / n + 0.1 * well_formed


def _hop_tables(prompt: str) -> tuple[dict[str, str], dict[str, str]] | None:
    """The prompt's permutation (symbol -> symbol) and colouring (symbol -> "0"/"1"); None for a
    prompt that is not a hop prompt over all twelve symbols."""
    m = _HOP_PROMPT_RE.fullmatch(prompt)
    if m is None:
        return None
    image = dict(pair.split("-") for pair in m.group(1).split())
    colour = {c[0]: c[1] for c in m.group(2).split()}
    symbols = set(HOP_SYMBOLS)
    if set(image) != symbols or set(image.values()) != symbols or set(colour) != symbols:
        return None  # a symbol listed twice, so another one is missing
    return image, colour


@dataclass(frozen=True)
class HopTask(Task):
    """Colour of the image: the prompt gives a permutation ``f`` of twelve symbols and a colouring
    of them (nine 1s, three 0s); the completion asks six distinct symbols ``x`` in random order and
    answers each with ``colour(f(x))``::

        hop a-c b-f ... l-e ; a1 b0 ... l1: -> " d1 k0 a1 f1 b1 h0."

    Why a one-layer MTP head is capacity-limited here while the backbone is not: when the head
    drafts an answer, the symbol it answers for is the token it was just given, and the answer
    takes two lookups in a row (its image in the map, then that image's colour). The backbone
    spreads them over its four layers; the head's single attention layer can take one, so it is
    left with the prompt's share of 1s (0.75) unless it finds a shortcut. The backbone is sure
    (every answer is fixed by the prompt), so a head that spreads its mass as its uncertainty
    (CE: q = 0.75 / 0.25, acceptance 0.75^2 + 0.25^2 = 0.625 there) loses to one that puts it all
    on the likelier colour (acceptance 0.75), which is what maximising acceptance (TV) asks for.
    Queries never repeat, so an earlier answer cannot be copied. Not part of the shipped demo
    model (``examples/capacity_heads.py --task hop``).

    Reward: the share of the six answers that are right at their position, times 0.9, plus 0.1
    for a completion of exactly six ``<symbol><colour>`` items ending in ``.``.
    """

    name: str = "hop"

    def sample_prompt(self, rng: random.Random) -> str:
        images = rng.sample(HOP_SYMBOLS, len(HOP_SYMBOLS))
        pairs = " ".join(f"{x}-{y}" for x, y in zip(HOP_SYMBOLS, images, strict=True))
        return f"hop {pairs} ; {_random_colouring(rng)}:"

    def complete(self, prompt: str, rng: random.Random) -> str:
        tables = _hop_tables(prompt)
        if tables is None:
            raise ValueError(f"not a hop prompt: {prompt!r}")
        image, colour = tables
        queries = rng.sample(HOP_SYMBOLS, HOP_QUERIES)
        return "".join(f" {x}{colour[image[x]]}" for x in queries) + "."

    def reward(self, prompt: str, completion: str) -> float:
        tables = _hop_tables(prompt)
        if tables is None:
            return 0.0
        image, colour = tables
        items, ended = _answer_items(completion)
        right = sum(len(it) == 2 and it[0] in image and colour[image[it[0]]] == it[1] for it in items)
        return _answer_reward(items, ended, right, HOP_QUERIES)


# ---------------------------------------------------------------------------------------------
# pairsum (a lookup keyed by the sum of two tokens: no additive attention score can find it)

PAIRSUM_ITEMS = 10  # answers per completion: about half the completion's tokens are answers


def pairsum_key(previous: str, step: str, symbols: str = HOP_SYMBOLS) -> str:
    """The symbol whose colour answers ``step``: index(previous) + index(step) mod len(symbols)."""
    return symbols[(symbols.index(previous) + symbols.index(step)) % len(symbols)]


@dataclass(frozen=True)
class PairSumTask(Task):
    """Colour of a sum: the prompt gives a start symbol and a colouring of twelve symbols (nine 1s,
    three 0s); the completion draws ten symbols ``s_i`` at random and answers each with the colour
    of the symbol at ``index(s_{i-1}) + index(s_i) mod 12`` (``s_0`` is the start)::

        pairsum e ; a1 b0 ... l1: -> " c1 k0 a1 ... f1."

    Why a one-layer MTP head is capacity-limited here while the backbone is not: when the head
    drafts an answer, it holds ``s_i`` as its input token and ``s_{i-1}`` at best in the
    backbone's hidden state, and the colour sits in the prompt at the position of their *sum*.
    Its one attention layer scores a position with a query that is linear in (token embedding,
    hidden state), so the score is a sum of a term of ``s_i`` and a term of ``s_{i-1}``; no such
    sum peaks at the position of ``s_{i-1} + s_i`` for every pair (already XOR, the sum mod 2 of
    two bits, has no additive score). The backbone first adds the two symbols (an MLP), then looks
    the colour up (a later layer). Unlike ``hop``, nothing can be precomputed at the prompt's
    positions: the key depends on two tokens drawn after the prompt. A head that spreads its mass
    as its uncertainty (CE: q = 0.75 / 0.25, acceptance 0.625 on an answer) loses to one that puts
    it on the likelier colour (0.75), which is what maximising acceptance (TV) asks for. Not part of
    the shipped demo model (``examples/capacity_heads.py --task pairsum``).

    ``symbols`` and ``ones`` set the alphabet and how many of it are coloured 1 (``pairsum10``: ten
    symbols, seven 1s). With ``drill`` the prompt has no colouring (``... ; sums:``) and each answer
    is the sum itself, as the digit of its index (``sumdrill``, ten symbols): the same items with
    the sum as the answer, a direct training signal for the addition that ``pairsum10`` needs
    (``capacity_heads.py --aux-task sumdrill``).

    Reward: the share of the ten answers that are right at their position, times 0.9, plus 0.1 for
    a completion of exactly ten ``<symbol><answer>`` items ending in ``.``.
    """

    name: str = "pairsum"
    symbols: str = HOP_SYMBOLS
    ones: int = HOP_ONES
    drill: bool = False

    def _parse(self, prompt: str) -> tuple[str, dict[str, str]] | None:
        """The prompt's start symbol and answer table (symbol -> its answer token); None for a
        prompt of another task."""
        sym = f"[{self.symbols[0]}-{self.symbols[-1]}]"
        table = " sums" if self.drill else f"((?: {sym}[01]){{{len(self.symbols)}}})"
        m = re.fullmatch(rf"{self.name} ({sym}) ;{table}:", prompt)
        if m is None:
            return None
        if self.drill:
            return m.group(1), {x: str(i) for i, x in enumerate(self.symbols)}
        colour = {c[0]: c[1] for c in m.group(2).split()}
        return (m.group(1), colour) if set(colour) == set(self.symbols) else None

    def sample_prompt(self, rng: random.Random) -> str:
        table = "sums" if self.drill else _random_colouring(rng, self.symbols, self.ones)
        return f"{self.name} {rng.choice(self.symbols)} ; {table}:"

    def complete(self, prompt: str, rng: random.Random) -> str:
        parsed = self._parse(prompt)
        if parsed is None:
            raise ValueError(f"not a {self.name} prompt: {prompt!r}")
        previous, answer = parsed
        items = []
        for _ in range(PAIRSUM_ITEMS):
            step = rng.choice(self.symbols)
            items.append(f" {step}{answer[pairsum_key(previous, step, self.symbols)]}")
            previous = step
        return "".join(items) + "."

    def reward(self, prompt: str, completion: str) -> float:
        parsed = self._parse(prompt)
        if parsed is None:
            return 0.0
        previous, answer = parsed
        items, ended = _answer_items(completion)
        right = 0
        for it in items[:PAIRSUM_ITEMS]:
            if len(it) != 2 or it[0] not in answer:
                break  # the rest of the walk is keyed off a symbol that is not there
            right += answer[pairsum_key(previous, it[0], self.symbols)] == it[1]
            previous = it[0]
        return _answer_reward(items, ended, right, PAIRSUM_ITEMS)


# ---------------------------------------------------------------------------------------------
# registry and datasets

TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        ArithmeticTask(),
        StoryTask(),
        ChainTask(),
        HopTask(),
        PairSumTask(),
        PairSumTask(name="pairsum10", symbols=HOP_SYMBOLS[:10], ones=7),
        PairSumTask(name="sumdrill", symbols=HOP_SYMBOLS[:10], drill=True),
    )
}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}") from None


def _examples(task_name: str, n: int, seed: int, held_out: bool) -> list[Example]:
    task = get_task(task_name)
    # A string seed names the stream; random.Random hashes it with SHA-512, so it is stable
    # across processes (unlike hash()).
    stream = "held-out" if held_out else "train"
    rng = random.Random(f"bebop.training.tasks/{stream}/{task_name}/{seed}")
    out = []
    while len(out) < n:
        prompt = task.sample_prompt(rng)
        if is_held_out(prompt) == held_out:
            out.append(Example(prompt, task.complete(prompt, rng)))
    return out


def training_examples(task_name: str, n: int, seed: int) -> list[Example]:
    """``n`` training examples of one task (never a held-out prompt)."""
    return _examples(task_name, n, seed, held_out=False)


def held_out_prompts(task_name: str, n: int, seed: int) -> list[Example]:
    """``n`` evaluation examples: prompts from the held-out side, with reference completions."""
    return _examples(task_name, n, seed, held_out=True)


def make_corpus(task_names: list[str] | tuple[str, ...], n: int, seed: int) -> list[str]:
    """``n`` training texts (prompt + completion) per task, shuffled together deterministically."""
    texts = [ex.text for name in task_names for ex in training_examples(name, n, seed)]
    random.Random(f"bebop.training.tasks/shuffle/{seed}").shuffle(texts)
    return texts
