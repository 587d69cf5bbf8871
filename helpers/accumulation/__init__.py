"""Gradient accumulation (chapter 04): k micro-batches that add up to one batch's gradient.

Two twins with the same public names, imported explicitly:

    from helpers.accumulation import naive, library

``naive`` is a plain torch loop; ``library`` runs the same window through accelerate's
``Accelerator(gradient_accumulation_steps=k)`` and transformers' own loss with
``num_items_in_batch``. Neither is imported here.
"""

PUBLIC_NAMES = (
    "count_targets",
    "full_batch_gradients",
    "window_gradients",
    "mean_of_means_gradients",
    "train",
    "skip_window",
)
