"""Quantization from absmax int8 to NF4 with double quantization (chapter 01).

Two twins with the same public names, imported explicitly:

    from helpers.quantization import naive, library

``naive`` is plain torch, written to be read; ``library`` calls bitsandbytes (and torch's own
quantized tensors for the int8 schemes bitsandbytes does not expose). Neither is imported
here, so importing the package costs nothing.
"""

PUBLIC_NAMES = (
    "quantize_absmax_int8",
    "dequantize_absmax_int8",
    "quantize_zeropoint_int8",
    "dequantize_zeropoint_int8",
    "linear_codebook",
    "dynamic_codebook",
    "nf4_codebook",
    "quantize_blockwise",
    "dequantize_blockwise",
    "quantize_nf4",
    "dequantize_nf4",
    "double_quantize_absmax",
    "double_dequantize_absmax",
    "int8_vectorwise_quantize",
    "int8_linear",
)
# Where the library twin's signature must differ from the naive one's, and why.
SIGNATURES_DIFFER = {
    "nf4_codebook": (
        "the naive twin computes the 16 levels from the outermost quantile (offset, QLoRA "
        "section 3); bitsandbytes hard-codes the table, so its twin takes no argument"
    ),
}
