"""The Ollama Modelfile's template renders conversations as the model's chat template does,
and a malformed Modelfile is refused with the line at fault."""

import pytest
from transformers import AutoTokenizer

from helpers.ggufq import ollama
from helpers.paths import TINY_MODEL_DIR


def test_template_renders_like_the_chat_template():
    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL_DIR)
    spec = ollama.parse_modelfile(ollama.modelfile("m.gguf", tokenizer.eos_token, 256))
    assert spec["FROM"] == "./m.gguf" and spec["PARAMETER"]["stop"] == ["<|eos|>"]
    for messages in (
        [{"role": "user", "content": "hi"}],
        [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c"},
        ],
    ):
        expected = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        assert ollama.render(spec["TEMPLATE"], messages) == expected


def test_a_wrong_template_is_caught():
    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL_DIR)
    text = ollama.modelfile("m.gguf", "<|eos|>", 256).replace("<|eos|>{{ end }}", "{{ end }}")
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    rendered = ollama.render(ollama.parse_modelfile(text)["TEMPLATE"], messages)
    assert rendered != tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )


def test_bad_modelfile():
    with pytest.raises(ValueError, match="TEMPLATE"):
        ollama.parse_modelfile("FROM ./m.gguf\n")
    with pytest.raises(ValueError, match="line 2: unknown instruction 'SYSTEMS'"):
        ollama.parse_modelfile('FROM ./m.gguf\nSYSTEMS x\nTEMPLATE """t"""\n')
