"""The exported GGUF really runs in llama.cpp: same tokens and same greedy answers as
transformers (F16, Q8_0), generation stops at the end-of-turn token, the chat template travels,
and each broken export fails the way chapter 07 says."""

import shutil

import pytest
import torch

pytest.importorskip("llama_cpp", reason="llama-cpp-python is installed by `make` (deploy extra)")

from helpers.data import load_task  # noqa: E402
from helpers.ggufq import export, run  # noqa: E402
from helpers.models import load_model  # noqa: E402
from helpers.paths import HELDOUT_TEXT, TINY_MODEL_DIR  # noqa: E402
from helpers.profiles import get_profile  # noqa: E402
from helpers.task import format_prompt  # noqa: E402

MAX_NEW = 12


@pytest.fixture(scope="module")
def tiny():
    model, tokenizer = load_model(get_profile("tiny"))
    prompts = [format_prompt(tokenizer, p) for p in load_task("test")["prompt"][:4]]
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    return model.eval(), tokenizer, prompts, ids


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gguf")
    return {q: export.write_gguf(TINY_MODEL_DIR, folder / f"{q}.gguf", q) for q in ("F16", "Q8_0")}


def _hf_greedy(model, tokenizer, ids):
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]),
            max_new_tokens=MAX_NEW,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    new = out[0, len(ids) :].tolist()
    eos = tokenizer.eos_token_id
    return new[: new.index(eos) + 1] if eos in new else new


def test_same_tokens(tiny, files):
    _, tokenizer, prompts, ids = tiny
    llm = run.load_gguf(files["Q8_0"])
    assert [llm.tokenize(p.encode(), add_bos=False, special=True) for p in prompts] == ids
    text = HELDOUT_TEXT.read_text()[:3000]
    assert llm.tokenize(text.encode(), add_bos=False) == tokenizer(text)["input_ids"]


@pytest.mark.parametrize("qtype", ["F16", "Q8_0"])
def test_greedy_equal_to_transformers(tiny, files, qtype):
    model, tokenizer, _, ids = tiny
    llm = run.load_gguf(files[qtype])
    for prompt_ids in ids:
        new, _ = run.greedy_ids(llm, prompt_ids, MAX_NEW)
        assert new == _hf_greedy(model, tokenizer, prompt_ids)


def test_stops_at_end_of_turn(tiny, files):
    _, tokenizer, _, ids = tiny
    llm = run.load_gguf(files["Q8_0"])
    new, stopped = run.greedy_ids(llm, ids[0] + tokenizer("{}")["input_ids"], 64)
    assert stopped and new[-1] == tokenizer.eos_token_id


def _renamed_end_token(folder, text):
    """A copy of the tiny model whose end-of-turn token (id 1) is called ``text``."""
    shutil.copytree(TINY_MODEL_DIR, folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        path = folder / name
        path.write_text(path.read_text().replace("<|eos|>", text))
    return folder


@pytest.mark.parametrize("end_text", ["<|eos|>", "<|im_end|>"])
def test_wrong_eos_cuts_every_answer_at_that_token(tiny, tmp_path, end_text):
    """llama.cpp ends generation at the file's EOS id whatever token it names, so an EOS id
    that names an ordinary token cuts the answer there. True whether or not llama.cpp knows
    the real end token by its text (``<|im_end|>``, Qwen's, it does; ``<|eos|>`` it does not)."""
    _, _, _, ids = tiny
    folder = _renamed_end_token(tmp_path / "model", end_text)
    right, stopped = run.greedy_ids(
        run.load_gguf(export.write_gguf(folder, tmp_path / "r.gguf")), ids[0], 40
    )
    assert stopped and right[-1] == 1
    wrong_id = right[len(right) // 2]  # an ordinary token in the middle of the answer
    path = export.write_gguf(folder, tmp_path / "w.gguf", eos_token_id=wrong_id)
    new, stopped = run.greedy_ids(run.load_gguf(path), ids[0], 40)
    assert stopped and new == right[: right.index(wrong_id) + 1]  # cut, and "stopped" cleanly


@pytest.mark.parametrize(("end_text", "still_stops"), [("<|eos|>", False), ("<|im_end|>", True)])
def test_pad_as_eos_fails_only_where_the_end_token_is_unknown(
    tiny, tmp_path, end_text, still_stops
):
    """The padding id as EOS (an id the model never emits): llama.cpp still stops at an end
    token it knows by its text (Qwen's), and runs on to the length limit past ours."""
    _, tokenizer, _, ids = tiny
    folder = _renamed_end_token(tmp_path / "model", end_text)
    path = export.write_gguf(folder, tmp_path / "w.gguf", "Q8_0", eos_token_id=0)
    new, stopped = run.greedy_ids(run.load_gguf(path), ids[0] + tokenizer("{}")["input_ids"], 64)
    assert stopped == still_stops and 1 in new
    assert len(new) == (new.index(1) + 1 if still_stops else 64)


def test_missing_eos_key_becomes_id_11(tmp_path):
    """Without ``tokenizer.ggml.eos_token_id`` llama.cpp takes its byte-level BPE default, 11
    (GPT-2's and Qwen2's ``,``; ours is ``'``): no error, a wrong end token."""
    llm = run.load_gguf(export.write_gguf(TINY_MODEL_DIR, tmp_path / "m.gguf", eos_token_id=None))
    assert llm.token_eos() == 11


def test_chat_template_in_file(tiny, files):
    _, tokenizer, _, _ = tiny
    llm = run.load_gguf(files["Q8_0"])
    assert llm.metadata["tokenizer.chat_template"] == tokenizer.chat_template
    assert llm.chat_format == "chat_template.default"


def test_unknown_pre_tokenizer_is_refused(tmp_path):
    path = export.write_gguf(TINY_MODEL_DIR, tmp_path / "p.gguf", "Q8_0", pre="no-such-pre")
    llm, error, log = run.load_with_log(path)
    assert llm is None and isinstance(error, ValueError)
    assert "unknown pre-tokenizer type: 'no-such-pre'" in log


def test_perplexity_matches_transformers(tiny, files):
    model, tokenizer, _, _ = tiny
    from helpers.evaluation import library as evaluation

    ids = tokenizer(HELDOUT_TEXT.read_text()[:2000])["input_ids"]
    ours = run.perplexity(run.load_gguf(files["F16"], logits_all=True), ids, 128)["ppl"]
    theirs = evaluation.perplexity(model, torch.tensor(ids), 128, 128)["ppl"]
    assert ours == pytest.approx(theirs, rel=2e-3)  # F16 weights: a small, stated tolerance


def test_server_answers_as_llama_cpp_does_in_process(tiny, files):
    """The server renders the chat request with the file's template and decodes greedily: its
    answer is the in-process greedy answer to the same prompt, and it stops by itself."""
    _, tokenizer, _, ids = tiny
    new, stopped = run.greedy_ids(run.load_gguf(files["Q8_0"]), ids[0], 40)
    assert stopped
    with run.serve(files["Q8_0"]) as url:
        assert url.startswith("http://127.0.0.1:")
        reply = run.post_json(
            url + "/v1/chat/completions",
            {
                "messages": [{"role": "user", "content": load_task("test")["prompt"][0]}],
                "max_tokens": 40,
                "temperature": 0.0,
            },
        )
    choice = reply["choices"][0]
    assert choice["message"]["content"] == tokenizer.decode(new, skip_special_tokens=True)
    assert choice["finish_reason"] == "stop"
    with pytest.raises(OSError):
        run.post_json(url + "/v1/models", {}, timeout=2)  # stopped


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="no GGUF file"):
        run.load_gguf("/nonexistent/model.gguf")


def test_llama_quantize_q4_k_m_and_its_fallbacks(tiny, files, tmp_path):
    from helpers.ggufq import library

    path, log = library.llama_quantize(files["F16"], tmp_path / "q4_k_m.gguf", "Q4_K_M")
    types = export.tensor_types(path)
    assert types["blk.0.attn_q.weight"] == "Q4_K"
    assert types["blk.0.ffn_down.weight"] in ("Q5_0", "Q8_0")  # 640 inputs: not super-blocks
    assert "falling back" in log
    _, _, _, ids = tiny
    new, stopped = run.greedy_ids(run.load_gguf(path), ids[0], 40)
    assert stopped and len(new) > 1  # it runs and ends its answer


def test_our_q4_k_file_runs(tiny, tmp_path):
    path = export.write_gguf(TINY_MODEL_DIR, tmp_path / "q4_k.gguf", "Q4_K")
    _, _, _, ids = tiny
    new, stopped = run.greedy_ids(run.load_gguf(path), ids[0], 40)
    assert stopped and len(new) > 1


def test_llama_quantize_bad_input(files, tmp_path):
    from helpers.ggufq import library

    with pytest.raises(ValueError, match="file type"):
        library.llama_quantize(files["F16"], tmp_path / "x.gguf", "Q4_K_Z")
    with pytest.raises(FileNotFoundError, match="no GGUF file"):
        library.llama_quantize(tmp_path / "missing.gguf", tmp_path / "x.gguf")
    assert not list(tmp_path.glob("x.gguf*"))


def test_another_programs_server_on_the_port_is_not_handed_back(files, monkeypatch):
    """Another program already answers on 127.0.0.1 (here at the port the old helper would have
    picked): the URL handed back is the started server's, which lists the model it loaded."""
    import json
    import threading
    import urllib.request

    from server_fakes import foreign_server

    foreign = foreign_server()
    threading.Thread(target=foreign.serve_forever, daemon=True).start()
    port = foreign.server_address[1]
    monkeypatch.setattr(run, "_free_port", lambda: port, raising=False)  # the old helper's pick
    try:
        with run.serve(files["Q8_0"]) as url:
            with urllib.request.urlopen(url + "/v1/models", timeout=10) as response:
                models = [m["id"] for m in json.loads(response.read())["data"]]
    finally:
        foreign.shutdown()
        foreign.server_close()
    assert url != f"http://127.0.0.1:{port}"
    assert models and "someone-else" not in models
