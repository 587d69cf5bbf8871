"""The tiny model's tokenizer is saved in a form every supported transformers reads.

`tokenizer_config.json` names `PreTrainedTokenizerFast` (a name transformers 4 and 5 both
know; 5's own `TokenizersBackend` is unknown to 4), and the loaded tokenizer encodes exactly as
the `tokenizers` library does from tokenizer.json. `make versions` runs this at the lowest and
the newest transformers.
"""

from __future__ import annotations

import json

from tokenizers import Tokenizer

from helpers.paths import TINY_MODEL_DIR

TEXTS = ["The parcel arrived two days early.", "Refund: 12.50 EUR, order #A-77!", ""]


def test_tokenizer_config_names_a_class_every_version_knows():
    config = json.loads((TINY_MODEL_DIR / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"


def test_loaded_tokenizer_encodes_like_the_tokenizers_library(tiny_tokenizer):
    raw = Tokenizer.from_file(str(TINY_MODEL_DIR / "tokenizer.json"))
    for text in TEXTS:
        ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
        assert ids == raw.encode(text, add_special_tokens=False).ids, text
    assert tiny_tokenizer.eos_token == "<|eos|>" and tiny_tokenizer.pad_token == "<|pad|>"
    assert tiny_tokenizer.chat_template
