"""GGUF, llama.cpp's file format: block quantization (Q8_0, Q4_0) by hand in ``naive.py`` and
through the ``gguf`` package's reference quantizers in ``library.py`` (same public names), and
``export.py``, which writes a transformers Llama with its tokenizer and chat template to a
GGUF file that llama.cpp runs."""

# What both twins define, with the same signatures (tests/test_twin_contract.py).
PUBLIC_NAMES = (
    "BLOCK_SIZE",
    "BYTES_PER_BLOCK",
    "VALUES_PER_BLOCK",
    "bits_per_weight",
    "quantize_q8_0",
    "quantize_q4_0",
    "quantize_q4_k",
    "dequantize_q8_0",
    "dequantize_q4_0",
    "dequantize_q4_k",
)
