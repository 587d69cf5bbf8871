"""DPO through TRL's ``DPOTrainer``: the same public names as ``helpers.dpo.naive``.

Checked against trl 1.16 (``trl/trainer/dpo_trainer.py``): the trainer tokenizes each pair
(``_prepare_dataset``), pads chosen rows then rejected rows (``DataCollatorForPreference``),
and ``compute_loss`` sums the answer tokens' log-probabilities through a fused LM head that
never builds the (N, T, V) logits (``add_fused_lm_head``), runs the reference with the adapter
disabled, and logs the batch means of the rewards, accuracy and log-probs.

Settings chosen here, and why:

- ``loss_type=["sigmoid"]``, ``beta``: the loss of the DPO paper, as the naive twin computes.
- ``bf16=False``: TRL's ``DPOConfig`` turns bf16 autocast on by default; the twins compute in
  the model's own dtype (load the model in bf16 for a 16-bit run).
- ``max_length=None``: TRL keeps the first 1024 tokens by default; nothing is cut here.
- ``pad_to_multiple_of=None``: the batch is padded to its longest row, as the naive twin pads.
- A text record's prompt is wrapped in the chat template before TRL sees it
  (``helpers.dpo.pairs.to_trl_record``): the course's prompts are raw task prompts and its models
  chat models. TRL itself uses a text prompt as it is; give conversational records (lists of
  turns) to leave the template to TRL.
- The adapter stays as it was given, values and dtype (``helpers.dpo.adapter_kept``): on a
  quantized base TRL casts the adapter to bf16 when the trainer is built (the QLoRA paper's
  choice); the naive twin keeps peft's fp32 adapter, and a T4 has no native bf16.
- A model that already has an adapter makes TRL keep a frozen copy of it, named "ref", as the
  reference. The course's reference is the model under the adapter (see ``naive``), so that copy
  is deleted and TRL falls back to ``disable_adapter``, as it does for a new adapter.

Side effects on the model, TRL's own: every dropout is set to 0 (``disable_dropout``, on by
default; the naive twin matches TRL only without dropout), and each call builds a trainer
that wraps the forward in its fused head once more (the numbers are unchanged): check a batch
with ``dpo_loss``, train with one ``dpo_train`` call.
"""

from __future__ import annotations

import tempfile

import datasets
import torch
from transformers import PreTrainedTokenizerBase, PrinterCallback
from trl import DPOConfig, DPOTrainer
from trl.trainer.utils import add_fused_lm_head

from helpers.checks import positive_number
from helpers.dpo import (
    METRIC_NAMES,
    adapter_kept,
    check_adapter,
    check_batch,
    check_records,
    check_training,
)
from helpers.dpo.naive import DPOOutput, DPOResult
from helpers.dpo.pairs import to_trl_record
from helpers.sft import quiet_version_skew


def _has_fused_head(model: torch.nn.Module) -> bool:
    """Whether TRL's ``add_fused_lm_head`` already replaced this model's forward (its forward
    takes ``fused_lm_head``); adding it again would wrap the forward once more."""
    forward = getattr(model.forward, "__func__", model.forward)
    code = getattr(forward, "__code__", None)
    return code is not None and "fused_lm_head" in code.co_varnames


def completion_logps(
    model: torch.nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi(answer | prompt) of each row, through TRL's fused LM head.

    The head is added to the model once (TRL's ``add_fused_lm_head``; the ordinary forward is
    unchanged). Args and returns as ``naive.completion_logps``.
    """
    check_adapter(model)
    batch = check_batch(model, batch)
    base = model.get_base_model()
    if not _has_fused_head(base):
        add_fused_lm_head(base)
    device = next(model.parameters()).device
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100).to(device)
    out = model(
        input_ids=batch["input_ids"].to(device),
        attention_mask=batch["attention_mask"].to(device),
        labels=labels,
        fused_lm_head=True,
        use_cache=False,
    )
    return out.log_probs.sum(dim=1).chunk(2)  # (N, T-1) -> (N,) -> chosen, rejected


def _trainer(
    model, tokenizer, records: list[dict], beta: float, output_dir: str, **changes
) -> DPOTrainer:
    """A DPOTrainer over ``records`` (by default one batch of them all), reference = adapter
    disabled; ``changes`` are further ``DPOConfig`` fields."""
    datasets.disable_progress_bars()
    settings = dict(
        output_dir=output_dir,  # nothing is saved there (save_strategy="no")
        beta=beta,
        loss_type=["sigmoid"],
        per_device_train_batch_size=len(records),
        max_length=None,
        pad_to_multiple_of=None,
        bf16=False,
        fp16=False,
        use_cpu=not torch.cuda.is_available(),
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
    )
    config = DPOConfig(**{**settings, **changes})
    dataset = datasets.Dataset.from_list([to_trl_record(tokenizer, r) for r in records])
    with quiet_version_skew(), adapter_kept(model):  # TRL casts a QLoRA adapter to bf16
        trainer = DPOTrainer(
            model=model, args=config, train_dataset=dataset, processing_class=tokenizer
        )
    if "ref" in model.peft_config:  # TRL's frozen copy of an existing adapter: not our reference
        model.delete_adapter("ref")
        model.set_adapter("default")
    trainer.remove_callback(PrinterCallback)  # the metrics are read from log_history instead
    return trainer


def dpo_loss(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    records: list[dict],
    beta: float = 0.1,
) -> DPOOutput:
    """The DPO loss of a batch of preference pairs as TRL's ``DPOTrainer`` computes it.

    Args and returns as ``naive.dpo_loss``: ``loss`` is ``trainer.compute_loss`` on the batch;
    ``metrics`` are the means the trainer logs; the per-pair rewards are
    ``beta * (completion_logps - trainer.compute_ref_log_probs)``.
    """
    check_adapter(model)
    beta = positive_number(beta, "beta")
    records = check_records(records)
    with tempfile.TemporaryDirectory(prefix="dpo-") as output_dir:
        trainer = _trainer(model, tokenizer, records, beta, output_dir)
        rows = [trainer.train_dataset[i] for i in range(len(records))]
        batch = trainer.data_collator(rows)  # (N, T) tensors, chosen rows first
        device = next(model.parameters()).device
        on_device = {name: tensor.to(device) for name, tensor in batch.items()}
        model.train()  # TRL logs under "train" when the model is in training mode
        loss = trainer.compute_loss(model, on_device)
        trainer.log({})  # the batch means, into trainer.state.log_history
        logged = trainer.state.log_history[-1]
        with torch.no_grad():
            chosen, rejected = completion_logps(model, batch)
            ref_chosen, ref_rejected = trainer.compute_ref_log_probs(model, on_device)
    metrics = {name: float(logged[name]) for name in METRIC_NAMES}
    return DPOOutput(
        loss, beta * (chosen - ref_chosen), beta * (rejected - ref_rejected), metrics, batch
    )


def dpo_train(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    records: list[dict],
    max_steps: int,
    micro_batch_size: int,
    lr: float,
    beta: float = 0.1,
    max_grad_norm: float = 1.0,
    progress: bool = False,
) -> DPOResult:
    """Train the model's adapter with ``DPOTrainer.train``; the twin of ``naive.dpo_train``.

    The trainer is set to the naive loop's choices: the records in order
    (``train_sampling_strategy="sequential"``), torch's AdamW with weight decay 0.01, a constant
    ``lr``, one micro-batch per step. Returns what the trainer logged at each step.
    """
    check_adapter(model)
    beta = positive_number(beta, "beta")
    records = check_records(records)
    check_training(max_steps, micro_batch_size, lr, max_grad_norm)
    with tempfile.TemporaryDirectory(prefix="dpo-") as output_dir:
        trainer = _trainer(
            model,
            tokenizer,
            records,
            beta,
            output_dir,
            per_device_train_batch_size=micro_batch_size,
            max_steps=max_steps,
            learning_rate=lr,
            lr_scheduler_type="constant",
            optim="adamw_torch",
            weight_decay=0.01,  # torch AdamW's default, which the naive loop uses
            max_grad_norm=max_grad_norm,
            train_sampling_strategy="sequential",
            logging_steps=1,
            disable_tqdm=not progress,
        )
        with quiet_version_skew():
            trainer.train()
    steps = [row for row in trainer.state.log_history if "loss" in row and METRIC_NAMES[2] in row]
    return DPOResult(
        [float(row["loss"]) for row in steps],
        [float(row["rewards/accuracies"]) for row in steps],
        [float(row["rewards/margins"]) for row in steps],
    )
