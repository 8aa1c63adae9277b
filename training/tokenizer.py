"""A small byte-level BPE tokenizer for the demo tasks, saved so that Hugging Face loads it.

- Byte level: the 256 byte symbols are all in the vocabulary, so any string encodes and decodes
  back exactly (no unknown token, no normalizer, no prefix space).
- Digits are split one per token before BPE sees them, so ``47`` is always ``4``, ``7`` and
  arithmetic stays learnable digit by digit; BPE merges only build words and punctuation runs.
- ``<|endoftext|>`` is id 0 and ``<|pad|>`` id 1; nothing is added to an encoding automatically
  (the trainer appends ``EOS_ID`` itself).

``save_tokenizer`` writes ``tokenizer.json`` plus the config files that let
``transformers.AutoTokenizer.from_pretrained(directory)`` load the same tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = (EOS_TOKEN, PAD_TOKEN)  # in id order: the trainer numbers them first
EOS_ID = 0
PAD_ID = 1

# Every byte is a base symbol; the vocabulary must hold them and the special tokens.
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)
# A pair seen once is not worth a merge: it would spend vocabulary on one corpus accident.
MIN_MERGE_FREQUENCY = 2
# The demo model's ModelConfig.max_position_embeddings.
DEFAULT_MODEL_MAX_LENGTH = 1024

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"


def build_tokenizer(corpus: list[str], vocab_size: int = 512) -> Tokenizer:
    """Train a byte-level BPE of at most ``vocab_size`` tokens on ``corpus``; deterministic."""
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(
            f"vocab_size must be at least {MIN_VOCAB_SIZE} (256 bytes + specials), got {vocab_size}"
        )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=MIN_MERGE_FREQUENCY,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    assert tok.token_to_id(EOS_TOKEN) == EOS_ID and tok.token_to_id(PAD_TOKEN) == PAD_ID
    return tok


def save_tokenizer(
    tok: Tokenizer, directory: str | Path, model_max_length: int = DEFAULT_MODEL_MAX_LENGTH
) -> Path:
    """Write ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / TOKENIZER_FILE))
    special = {"eos_token": EOS_TOKEN, "pad_token": PAD_TOKEN}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special,
        "bos_token": None,
        "unk_token": None,
        "model_max_length": model_max_length,
        "padding_side": "right",
        "add_prefix_space": False,
        # The default clean-up rewrites " ." to "." and would break the exact round trip.
        "clean_up_tokenization_spaces": False,
    }
    (directory / TOKENIZER_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    (directory / SPECIAL_TOKENS_MAP_FILE).write_text(json.dumps(special, indent=2) + "\n")
    return directory


def load_tokenizer(directory: str | Path) -> Tokenizer:
    return Tokenizer.from_file(str(Path(directory) / TOKENIZER_FILE))


def encode(tok: Tokenizer, text: str) -> list[int]:
    """Token ids of ``text``, no special tokens added."""
    return tok.encode(text, add_special_tokens=False).ids


def decode(tok: Tokenizer, ids: list[int], skip_special_tokens: bool = True) -> str:
    """Text of ``ids``; ``decode(tok, encode(tok, x)) == x`` for any ``x`` without special tokens."""
    return tok.decode(list(ids), skip_special_tokens=skip_special_tokens)
