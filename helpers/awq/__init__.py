"""AWQ, activation-aware weight quantization (Lin et al., 2023, arXiv:2306.00978): before
rounding a layer to 4 bits, scale up the input channels that carry large activations, so that
their weights lose less to rounding, and fold the inverse scale into the previous operation.
``naive.py`` writes out the scale search for one linear layer."""

# What both twins define, with the same signatures (tests/test_twin_contract.py).
PUBLIC_NAMES = (
    "AWQResult",
    "awq_layer",
    "awq_model",
    "capture_inputs",
    "layer_rel_error",
    "search_grid",
)
