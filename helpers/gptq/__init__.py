"""GPTQ (Frantar et al., 2022, arXiv:2210.17323): post-training 4-bit quantization of each
linear layer that corrects the rounding error of every column in the columns not yet quantized,
weighted by the layer's input statistics. ``naive.py`` writes it out in torch; ``library.py``
runs llm-compressor's implementation (the same public names)."""
