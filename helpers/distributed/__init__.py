"""Training on several processes (chapter 08): data parallelism by hand, then the libraries.

Twins with the same public names, imported explicitly:

    from helpers.distributed import naive, library

``naive`` is DDP written with ``torch.distributed`` (broadcast, shard, all-reduce);
``library`` is accelerate's DDP and torch's FSDP2 (``fully_shard``). ``launch`` starts the
processes from a notebook or a test and always ends them; ``plan`` extends chapter 04's memory
planner with ZeRO stages 1 to 3 and CPU offload; ``job`` holds what every worker shares.
"""

PUBLIC_NAMES = ("broadcast_parameters", "shard", "ddp_gradients", "train", "worker")
