"""Write a saved transformers Llama or Qwen2 (a folder: ``config.json``, safetensors weights,
``tokenizer.json``, the chat template) to a GGUF file that llama.cpp runs.

What llama.cpp needs, and what this module writes with ``gguf.GGUFWriter``:

- the architecture's hyper-parameters under ``llama.*`` or ``qwen2.*`` keys;
- every weight under llama.cpp's tensor names (``blk.0.attn_q.weight`` ...; Qwen2's q, k, v
  biases as ``blk.0.attn_q.bias`` ...). For Llama the query and key projections are permuted:
  Hugging Face's Llama rotates the two *halves* of each head (``rotate_half``), llama.cpp's
  llama architecture rotates *adjacent pairs*, so the rows of each head are reordered from
  (half, pair) to (pair, half) (as llama.cpp's ``convert_hf_to_gguf.py`` does). Its qwen2
  architecture rotates halves ("neox" style), so Qwen2's rows are written as they are. A tied
  output head is not written for Qwen2 (llama.cpp then multiplies by the embeddings);
- weights are read, quantized and written one tensor at a time, so exporting a model needs
  host memory for its largest tensor, not for the whole model;
- the tokenizer: ``tokenizer.ggml.model = "gpt2"`` (byte-level BPE), the tokens, their types
  (control for special tokens), the merges, the pre-tokenizer name (``tokenizer.ggml.pre``:
  the regex that splits text before BPE; llama.cpp knows a fixed list of names), the EOS id;
- the chat template (``tokenizer.chat_template``), which llama.cpp and Ollama read.

The file is written to a temporary name and renamed (``helpers.atomic``), so a failure leaves
nothing behind.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import gguf
import numpy as np
import torch
from safetensors import safe_open

from helpers.atomic import atomic_path
from helpers.checks import finite_tensor

from . import naive

ARCHS = ("llama", "qwen2")  # transformers' model_type; also llama.cpp's architecture name
QTYPES = ("F32", "F16", "Q8_0", "Q4_0", "Q4_K")
# The Split regex of Qwen2 and Qwen2.5's tokenizer.json (llama.cpp: pre-tokenizer "qwen2")
QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# gguf.LlamaFileType values (Q4_K: MOSTLY_Q4_K_S, the closest label for Q4_K + fallbacks)
_FILE_TYPE = {"F32": 0, "F16": 1, "Q4_0": 2, "Q8_0": 7, "Q4_K": 14}
# Q4_K needs rows of whole super-blocks of 256 values. llama.cpp's quantizer stores a tensor
# whose rows are not (the tiny model's down projection: 640 inputs) in another type; its table
# (llama-quant.cpp) picks Q5_0 for Q4_K, a type the course does not write by hand: Q8_0 here.
_FALLBACK = {"Q4_K": "Q8_0"}
_LAYER_NAMES = {  # Hugging Face suffix -> llama.cpp suffix, per decoder layer
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def permute_rope(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """Reorder a q or k projection's rows from rotate-half to adjacent-pair rotary layout.

    Args:
        weight: ``(n_head * head_dim, hidden)``.
        n_head: heads of this projection (``num_key_value_heads`` for k).

    Returns:
        The same shape; within each head, row ``h * half + i`` moves to ``2 * i + h``.
    """
    rows = weight.shape[0]
    if rows % (2 * n_head):
        raise ValueError(f"{rows} rows do not split into {n_head} heads of even size")
    w = weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:])  # (H, 2, half, in)
    return w.transpose(1, 2).reshape(weight.shape)  # (H, half, 2, in) -> (rows, in)


def gguf_name(hf_name: str) -> str:
    """llama.cpp's name for a Hugging Face Llama tensor (``model.layers.3.mlp.up_proj.weight``
    -> ``blk.3.ffn_up.weight``)."""
    fixed = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    if hf_name in fixed:
        return fixed[hf_name]
    parts = hf_name.split(".")  # model . layers . i . <module ...> . weight
    suffix = ".".join(parts[3:-1])
    if parts[:2] != ["model", "layers"] or suffix not in _LAYER_NAMES:
        raise ValueError(f"no llama.cpp name for tensor {hf_name!r}")
    return f"blk.{parts[2]}.{_LAYER_NAMES[suffix]}.{parts[-1]}"


def _target_type(shape: tuple, qtype: str) -> str:
    """The ggml type a tensor of ``shape`` gets in a file of ``qtype``: 1-D tensors (norms,
    biases) stay F32, as llama.cpp expects; Q4_K falls back where rows are not super-blocks."""
    if len(shape) == 1 or qtype == "F32":
        return "F32"
    if qtype in _FALLBACK and shape[-1] % naive.VALUES_PER_BLOCK[qtype]:
        return _FALLBACK[qtype]
    return qtype


def _nbytes(shape: tuple, ggml_type: str) -> int:
    """Bytes of one tensor of ``shape`` stored as ``ggml_type``."""
    count = int(torch.Size(shape).numel())
    if ggml_type in ("F32", "F16"):
        return count * (4 if ggml_type == "F32" else 2)
    return count // naive.VALUES_PER_BLOCK[ggml_type] * naive.BYTES_PER_BLOCK[ggml_type]


def _encode(weight: torch.Tensor, ggml_type: str, quantizers: ModuleType):
    """One tensor's data as the numpy array GGUF stores (F32, F16, or quantized bytes)."""
    if ggml_type == "F32":
        return weight.to(torch.float32).numpy()
    if ggml_type == "F16":
        return weight.to(torch.float16).numpy()
    quantize = getattr(quantizers, f"quantize_{ggml_type.lower()}")
    # a few rows at a time: the quantizers' fp32 temporaries stay near 64 MiB each, whatever
    # the tensor (a 150k-token embedding would otherwise need several GiB)
    step = max(1, 2**24 // weight.shape[-1])
    return torch.cat([quantize(rows) for rows in weight.split(step)]).numpy()  # uint8


def _shards(folder: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file that holds it (one file, or an index's shards)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return {k: folder / v for k, v in json.loads(index.read_text())["weight_map"].items()}
    with safe_open(folder / "model.safetensors", "pt") as f:
        return dict.fromkeys(f.keys(), folder / "model.safetensors")


def _plan(folder: Path, config: dict, qtype: str) -> list[tuple[str, str, tuple, str]]:
    """``(hf_name, gguf_name, shape, ggml_type)`` of every tensor to write, in file order. A
    tied head is written only for Llama (llama.cpp's qwen2 reads the embeddings instead)."""
    plan = []
    for name, file in _shards(folder).items():
        with safe_open(file, "pt") as f:
            shape = tuple(f.get_slice(name).get_shape())
        plan.append((name, gguf_name(name), shape, _target_type(shape, qtype)))
    names = {row[0] for row in plan}
    if config["model_type"] == "llama" and config.get("tie_word_embeddings"):
        if "lm_head.weight" not in names:
            embed = next(row for row in plan if row[0] == "model.embed_tokens.weight")
            plan.append(("model.embed_tokens.weight", "output.weight", embed[2], embed[3]))
    return plan


def _tensor(folder: Path, name: str, config: dict) -> torch.Tensor:
    """One tensor, read on its own, with Llama's q/k rows permuted for ggml's rotary layout
    (Qwen2 runs with llama.cpp's rotate-half "neox" rotary, so its rows stay as they are)."""
    with safe_open(_shards(folder)[name], "pt") as f:
        weight = f.get_tensor(name)
    if config["model_type"] == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
        heads = "num_attention_heads" if "q_proj" in name else "num_key_value_heads"
        weight = permute_rope(weight, config[heads])
    return weight


def _write_weights(writer, folder: Path, config: dict, qtype: str, quantizers: ModuleType):
    """Describe every tensor, then quantize and write them one at a time (host memory: one
    tensor and its encoding, never the whole model)."""
    plan = _plan(folder, config, qtype)
    for _, name, shape, ggml_type in plan:
        raw = gguf.GGMLQuantizationType[ggml_type]
        writer.add_tensor_info(name, shape, np.float32, _nbytes(shape, ggml_type), raw_dtype=raw)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for hf_name, _, _, ggml_type in plan:
        weight = _tensor(folder, hf_name, config)
        try:  # a NaN, inf or too large a value is refused, the tensor named (F32 and F16 too)
            finite_tensor(weight, "weight")
            data = _encode(weight, ggml_type, quantizers)
        except ValueError as err:
            raise ValueError(f"{folder}: tensor {hf_name!r} as {ggml_type}: {err}") from None
        writer.write_tensor_data(data)


def _add_hparams(writer, config: dict, qtype: str) -> None:
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    rope = config.get("rope_parameters") or {}
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(rope.get("rope_theta", config.get("rope_theta", 1e4))))
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_vocab_size(config["vocab_size"])
    writer.add_file_type(_FILE_TYPE[qtype])


def _add_tokenizer(writer, folder: Path, pre: str | None, eos_token_id: int | None) -> None:
    spec = json.loads((folder / "tokenizer.json").read_text())
    if spec["model"]["type"] != "BPE":
        raise ValueError(f"{folder / 'tokenizer.json'}: only BPE tokenizers are written here")
    vocab = {**spec["model"]["vocab"], **{t["content"]: t["id"] for t in spec["added_tokens"]}}
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    special = {t["content"] for t in spec["added_tokens"] if t["special"]}
    control, normal = gguf.TokenType.CONTROL, gguf.TokenType.NORMAL
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")  # llama.cpp's name for byte-level BPE
    if pre is not None:
        writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types([control if t in special else normal for t in tokens])
    writer.add_token_merges(merges)
    writer.add_add_bos_token(False)  # this model was trained without a BOS token
    if eos_token_id is not None:
        writer.add_eos_token_id(eos_token_id)


_DEFAULT = object()  # "read it from the folder"


def chat_template_of(folder: str | Path) -> str | None:
    """The chat template saved beside a tokenizer (``chat_template.jinja`` or the
    ``chat_template`` field of ``tokenizer_config.json``), or None."""
    folder = Path(folder)
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text()
    config = folder / "tokenizer_config.json"
    return json.loads(config.read_text()).get("chat_template") if config.is_file() else None


def write_gguf(
    folder: str | Path,
    path: str | Path,
    qtype: str = "Q8_0",
    quantizers: ModuleType = naive,
    pre=_DEFAULT,
    chat_template=_DEFAULT,
    eos_token_id=_DEFAULT,
) -> Path:
    """Write the model saved in ``folder`` to the GGUF file ``path``.

    Args:
        folder: a saved Llama or Qwen2 (``config.json``, ``model.safetensors`` or its sharded
            index, ``tokenizer.json``).
        path: the ``.gguf`` file to write (replaced if present).
        qtype: ``"F32"``, ``"F16"``, ``"Q8_0"``, ``"Q4_0"`` or ``"Q4_K"`` for the 2-D weights
            (Q4_K: tensors whose rows are not whole super-blocks of 256 get Q8_0).
        quantizers: the module whose ``quantize_q8_0``/``_q4_0``/``_q4_k`` encode the blocks
            (``helpers.ggufq.naive`` or ``helpers.ggufq.library``).
        pre: llama.cpp's pre-tokenizer name; default: read from ``tokenizer.json``
            (``pre_tokenizer_name``); None leaves the key out (the failure mode).
        chat_template: the template to store; default: the folder's; None leaves it out.
        eos_token_id: the end-of-turn id; default: ``config.json``'s; None leaves it out.

    Returns:
        ``path``.
    """
    folder, path = Path(folder), Path(path)
    if qtype not in QTYPES:
        raise ValueError(f"qtype must be one of {QTYPES}, got {qtype!r}")
    config = _check_folder(folder)
    template = chat_template_of(folder) if chat_template is _DEFAULT else chat_template
    eos = config.get("eos_token_id") if eos_token_id is _DEFAULT else eos_token_id
    eos = eos[0] if isinstance(eos, list) else eos  # generation configs may list several
    pre = pre_tokenizer_name(folder) if pre is _DEFAULT else pre
    # A temporary name beside ``path``, renamed onto it once complete (helpers.atomic): a
    # failure, a full disk included (the error names ``path``), leaves no file behind.
    with atomic_path(path) as tmp:
        writer = gguf.GGUFWriter(tmp, config["model_type"])  # key prefix: llama.* or qwen2.*
        try:
            writer.add_name(folder.name)
            _add_hparams(writer, config, qtype)
            _add_tokenizer(writer, folder, pre, eos)
            if template is not None:
                writer.add_chat_template(template)
            _write_weights(writer, folder, config, qtype, quantizers)
        finally:
            writer.close()
    return path


def _check_folder(folder: Path) -> dict:
    """The folder's config, after checking that every file the export reads is there."""
    weights = ("model.safetensors", "model.safetensors.index.json")
    for name in ("config.json", "tokenizer.json"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name} is missing: save the model there first")
    if not any((folder / name).is_file() for name in weights):
        raise FileNotFoundError(f"{folder / weights[0]} is missing: save the model there first")
    config = json.loads((folder / "config.json").read_text())
    if config.get("model_type") not in ARCHS:
        raise ValueError(f"{folder / 'config.json'}: model_type must be one of {ARCHS}")
    return config


def pre_tokenizer_name(folder: str | Path) -> str:
    """llama.cpp's name for the pre-tokenizer in ``folder/tokenizer.json``: ``"gpt-2"`` for a
    byte-level BPE that splits with GPT-2's regex (the course's tiny tokenizer), ``"qwen2"``
    for a ``Split`` on Qwen2's regex followed by byte-level BPE (Qwen2 and 2.5's tokenizers).
    Anything else raises ValueError: llama.cpp knows a fixed list of regexes by name."""
    path = Path(folder) / "tokenizer.json"
    pre = json.loads(path.read_text()).get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else []
    regexes = [s.get("pattern", {}).get("Regex") for s in steps if s.get("type") == "Split"]
    if regexes == [QWEN2_REGEX] and steps[-1].get("type") == "ByteLevel":
        return "qwen2"
    raise ValueError(
        f"{path}: its pre-tokenizer {json.dumps(pre)[:200]} is not one this writer can name; "
        "find the llama.cpp name whose regex is identical and pass it as `pre`"
    )


def read_metadata(path: str | Path) -> dict:
    """A GGUF file's key-value metadata as plain Python values (strings, numbers, lists)."""
    reader = gguf.GGUFReader(path)
    return {key: field.contents() for key, field in reader.fields.items()}


def tensor_types(path: str | Path) -> dict[str, str]:
    """Each tensor's ggml type name in a GGUF file (``{"blk.0.attn_q.weight": "Q8_0", ...}``)."""
    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}


def bits_per_weight_of(path: str | Path) -> float:
    """Bits stored per weight over a GGUF file's 2-D tensors (scales included): one number for
    a file that mixes types (Q4_K_M, or Q4_K with its fallbacks)."""
    tensors = [t for t in gguf.GGUFReader(path).tensors if len(t.shape) == 2]
    return 8 * sum(int(t.n_bytes) for t in tensors) / sum(int(t.n_elements) for t in tensors)
