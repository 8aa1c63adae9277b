"""The demo tokenizer: exact round trips, one digit per token, stable special ids, determinism, and
the same ids through ``transformers.AutoTokenizer`` as through ``tokenizers``."""

import json

import pytest

from bebop.training.tasks import held_out_prompts, make_corpus
from bebop.training.tokenizer import (
    EOS_ID,
    EOS_TOKEN,
    PAD_ID,
    PAD_TOKEN,
    build_tokenizer,
    decode,
    encode,
    load_tokenizer,
    save_tokenizer,
)

VOCAB_SIZE = 512


@pytest.fixture(scope="module")
def corpus():
    return make_corpus(["arith", "story"], 1500, seed=0)


@pytest.fixture(scope="module")
def tok(corpus):
    return build_tokenizer(corpus, vocab_size=VOCAB_SIZE)


@pytest.fixture(scope="module")
def saved(tok, tmp_path_factory):
    return save_tokenizer(tok, tmp_path_factory.mktemp("tokenizer"))


def test_round_trip_is_exact_on_corpus_texts(tok, corpus):
    for text in corpus[:500]:
        assert decode(tok, encode(tok, text)) == text


def test_round_trip_is_exact_outside_the_corpus_alphabet(tok):
    # Byte level: nothing is unknown, so even text the model never saw survives.
    for text in ["Hello, World!", "  two  spaces ", "tab\tnew\nline", "ünïcödé €\U0001d523", "", " "]:
        assert decode(tok, encode(tok, text)) == text


def test_digits_are_one_per_token(tok):
    for token_id in range(tok.get_vocab_size()):
        piece = decode(tok, [token_id])
        if any(c.isdigit() for c in piece):
            assert len(piece) == 1, (token_id, piece)
    assert len(encode(tok, "1234567890")) == 10


def test_vocab_size_is_at_most_requested(corpus):
    for size in (300, VOCAB_SIZE, 600):
        assert build_tokenizer(corpus, vocab_size=size).get_vocab_size() <= size
    with pytest.raises(ValueError, match="at least"):
        build_tokenizer(corpus, vocab_size=100)


def test_merges_make_words_shorter(tok):
    # Without merges every character is a token; at 512 (256 of them bytes) the frequent story
    # words are whole tokens and the rest take two or three.
    text = " once, the brave fox wandered slowly across the old bridge."
    assert len(encode(tok, text)) < len(text) / 2
    assert len(encode(tok, " the")) == 1


def test_special_token_ids_are_stable_across_corpora(tok):
    for t in (tok, build_tokenizer(make_corpus(["arith"], 300, seed=1)), build_tokenizer(["x y"])):
        assert t.token_to_id(EOS_TOKEN) == EOS_ID == 0
        assert t.token_to_id(PAD_TOKEN) == PAD_ID == 1
    assert encode(tok, "a" + EOS_TOKEN)[-1] == EOS_ID
    assert decode(tok, [*encode(tok, "ok."), EOS_ID]) == "ok."
    assert decode(tok, [*encode(tok, "ok."), EOS_ID], skip_special_tokens=False) == "ok." + EOS_TOKEN


def test_building_is_deterministic(tok, corpus):
    assert build_tokenizer(corpus, vocab_size=VOCAB_SIZE).to_str() == tok.to_str()


def test_prompt_and_completion_tokenize_separately(tok):
    # The rollout encodes the prompt alone and appends sampled completion tokens: the boundary
    # must fall on a token boundary for both tasks.
    for name in ("arith", "story"):
        for ex in held_out_prompts(name, 200, seed=0):
            assert encode(tok, ex.prompt) + encode(tok, ex.completion) == encode(tok, ex.text)


def test_save_and_load_give_the_same_tokenizer(tok, saved, corpus):
    assert {p.name for p in saved.iterdir()} >= {"tokenizer.json", "tokenizer_config.json"}
    config = json.loads((saved / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast" and config["eos_token"] == EOS_TOKEN
    loaded = load_tokenizer(saved)
    for text in corpus[:100]:
        assert encode(loaded, text) == encode(tok, text)


def test_auto_tokenizer_matches_our_encode_and_decode(tok, saved, corpus):
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(saved)
    assert hf.eos_token == EOS_TOKEN and hf.eos_token_id == EOS_ID
    assert hf.pad_token == PAD_TOKEN and hf.pad_token_id == PAD_ID
    assert len(hf) == tok.get_vocab_size()
    texts = [*corpus[:200], "Hello, World!", "x  y. 12 + 3"]
    for text in texts:
        ids = encode(tok, text)
        assert hf(text)["input_ids"] == ids  # no special tokens added by default either
        assert hf.decode(ids) == text
    ids = [*encode(tok, corpus[0]), EOS_ID]
    assert hf.decode(ids, skip_special_tokens=True) == decode(tok, ids) == corpus[0]
