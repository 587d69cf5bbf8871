"""The course's shared constants, each defined once (the modules that use them import them here).

GIB            bytes in a gibibyte, 2**30: every "GiB" the course prints divides by it
IGNORE_INDEX   the label that adds nothing to the loss: torch's ``cross_entropy`` default
               ``ignore_index``, which transformers' models and TRL's collators use too
"""

GIB = 2**30
IGNORE_INDEX = -100
