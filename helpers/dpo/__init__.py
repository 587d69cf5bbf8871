"""DPO, direct preference optimisation (chapter 10): learn from pairs of a better and a worse
answer to the same prompt, with no reward model.

Two twins with the same public names, imported explicitly:

    from helpers.dpo import naive, library

``naive`` computes the loss by hand in plain torch; ``library`` asks TRL's ``DPOTrainer`` for
it. ``helpers.dpo.pairs`` builds the preference pairs from the course's task. Nothing is
imported here, so importing the package costs nothing.
"""

# The names TRL's DPOTrainer logs its batch means under (``trainer.state.log_history``); both
# twins report their means under them.
METRIC_NAMES = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
)
BATCH_KEYS = ("input_ids", "attention_mask", "completion_mask")


def check_adapter(model: object) -> None:
    """The policy must be a peft model: its reference is the same model, adapter disabled."""
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        raise TypeError(
            "model must be a peft model (the reference is the model with its adapter disabled), "
            f"got {type(model).__name__}: add an adapter with helpers.lora.library.add_lora"
        )


def check_records(records: object) -> list:
    """A non-empty list of preference pairs (each pair is checked where it is tokenized)."""
    if not isinstance(records, list | tuple) or not records:
        raise ValueError(f"records must be a non-empty list of preference pairs, got {records!r}")
    return list(records)


def check_batch(model, batch: object) -> dict:
    """A DPO batch: ``BATCH_KEYS`` tensors of one (N, T) shape, N even (chosen rows, then
    rejected rows), ids in the model's vocabulary, an answer token in every row."""
    from helpers.checks import token_ids, vocab_size

    if not isinstance(batch, dict) or not set(BATCH_KEYS) <= set(batch):
        raise ValueError(f"batch must be a dict with the tensors {BATCH_KEYS}")
    shapes = {name: tuple(batch[name].shape) for name in BATCH_KEYS}
    rows = shapes["input_ids"]
    if len(set(shapes.values())) != 1 or len(rows) != 2 or rows[0] % 2:
        raise ValueError(
            f"batch: {BATCH_KEYS} must share one (N, T) shape with N even (chosen rows, then "
            f"rejected rows), got {shapes}"
        )
    token_ids(batch["input_ids"], vocab_size(model), "batch['input_ids']")
    if not bool(batch["completion_mask"][:, 1:].bool().any(dim=1).all()):
        raise ValueError("batch: a row has no answer token after its first token: nothing to score")
    return batch
