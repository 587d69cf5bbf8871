"""GPTQ (Frantar et al., 2022, arXiv:2210.17323): post-training 4-bit quantization of each
linear layer that corrects the rounding error of every column in the columns not yet quantized,
weighted by the layer's input statistics. ``naive.py`` writes it out in torch; ``library.py``
runs llm-compressor's implementation (the same public names)."""

import importlib.util

# What both twins define, with the same signatures (tests/test_twin_contract.py).
PUBLIC_NAMES = (
    "GPTQResult",
    "gptq_quantize",
    "hessian",
    "layer_rel_error",
    "minmax_grid",
    "rtn_quantize",
)


# What the library twins of GPTQ and AWQ (``helpers.gptq.library``, ``helpers.awq.library``)
# import: llm-compressor and the compressed-tensors format it quantizes to
LIBRARY_PACKAGES = ("llmcompressor", "compressed_tensors")


def missing_library_packages() -> list[str]:
    """The packages of ``LIBRARY_PACKAGES`` this Python cannot import (looked up, not imported:
    llm-compressor takes seconds to import)."""
    return [name for name in LIBRARY_PACKAGES if importlib.util.find_spec(name) is None]
