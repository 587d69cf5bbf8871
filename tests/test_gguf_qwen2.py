"""The GGUF writer on Qwen2 (the GPU profiles' architecture): a tiny random Qwen2 built here
(q, k, v biases, tied embeddings, RoPE base 1e6), exported, loaded by llama.cpp, and compared
with transformers: the same last-position logits (F32), the same greedy tokens (F32); Q8_0 close."""

import shutil

import numpy as np
import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

pytest.importorskip("llama_cpp", reason="llama-cpp-python is installed by `make` (deploy extra)")

from helpers.ggufq import export, run  # noqa: E402
from helpers.paths import TINY_MODEL_DIR  # noqa: E402

PROMPTS = [[5, 17, 300, 42, 9], [100, 101, 102], [7] * 12, [1200, 3, 880, 64, 64, 2]]


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory):
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=1410, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True, initializer_range=0.2,
        eos_token_id=1, pad_token_id=0,
    )  # fmt: skip
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():  # random biases: the init leaves them at 0, which would test nothing
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
    folder = tmp_path_factory.mktemp("qwen2") / "tiny-qwen2"
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(TINY_MODEL_DIR / name, folder / name)
    files = {q: export.write_gguf(folder, folder.parent / f"{q}.gguf", q) for q in ("F32", "Q8_0")}
    return model, folder, files


def test_qwen2_file_layout(qwen2):
    _, _, files = qwen2
    meta = export.read_metadata(files["F32"])
    assert meta["general.architecture"] == "qwen2"
    assert meta["qwen2.rope.freq_base"] == pytest.approx(1e6)
    types = export.tensor_types(files["Q8_0"])
    assert types["blk.0.attn_q.bias"] == "F32" and types["blk.0.attn_q.weight"] == "Q8_0"
    assert "output.weight" not in types  # tied: llama.cpp reads token_embd instead


def _last_logits(llm, model, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """llama.cpp's and transformers' logits for the token after ``ids``: (vocab,) each."""
    llm.reset()
    llm.eval(ids)
    ours = torch.tensor(np.asarray(llm.scores[len(ids) - 1]))
    with torch.no_grad():
        theirs = model(torch.tensor([ids])).logits[0, -1]
    return ours, theirs


def test_qwen2_logits_equal_transformers(qwen2):
    model, _, files = qwen2
    llm = run.load_gguf(files["F32"], logits_all=True)
    for ids in PROMPTS:
        ours, theirs = _last_logits(llm, model, ids)
        # F32 weights, but llama.cpp keeps its attention cache in F16: measured gaps are below
        # 1e-3 of the largest logit; a wrong rotary layout or a lost bias moves logits by O(1)
        assert (ours - theirs).abs().max() < 2e-3 * theirs.abs().max()


def test_qwen2_greedy_equal_transformers(qwen2):
    model, _, files = qwen2
    llm = run.load_gguf(files["F32"])
    for ids in PROMPTS:
        ours, _ = run.greedy_ids(llm, ids, 8)
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)
        assert ours == out[0, len(ids) :].tolist()[: len(ours)], ids


def test_qwen2_q8_0_close(qwen2):
    # Q8_0 moves this random model's logits by 0.2 to 0.3 (largest logit about 8, spread 2.2):
    # too much for greedy equality on a random model's near ties, far below a layout error.
    model, _, files = qwen2
    llm = run.load_gguf(files["Q8_0"], logits_all=True)
    for ids in PROMPTS:
        ours, theirs = _last_logits(llm, model, ids)
        assert (ours - theirs).abs().max() < 0.1 * theirs.abs().max()


def test_unknown_pre_tokenizer_is_refused(qwen2, tmp_path):
    _, folder, _ = qwen2
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    spec = (broken / "tokenizer.json").read_text().replace('"use_regex":true', '"use_regex":false')
    (broken / "tokenizer.json").write_text(spec.replace('"use_regex": true', '"use_regex": false'))
    with pytest.raises(ValueError, match="pre-tokenizer"):
        export.write_gguf(broken, tmp_path / "m.gguf")
    assert not list(tmp_path.glob("*.gguf*"))
