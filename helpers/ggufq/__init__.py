"""GGUF, llama.cpp's file format: block quantization (Q8_0, Q4_0) by hand in ``naive.py`` and
through the ``gguf`` package's reference quantizers in ``library.py`` (same public names), and
``export.py``, which writes a transformers Llama with its tokenizer and chat template to a
GGUF file that llama.cpp runs."""
