"""GRPO through TRL's ``GRPOTrainer`` on given rollouts: the same public names as ``naive``.

Checked against trl 1.16 (``trl/trainer/grpo_trainer.py``). The trainer's own scoring step,
``_generate_and_score_completions``, runs as in training, except that generation is replaced
by a ``rollout_func`` that hands back the given answers' token ids (TRL's hook for custom
generation): TRL then pads them, decodes them, calls the reward function, normalises the
rewards per group, runs the reference with the adapter disabled when ``beta > 0``, and
``compute_loss`` gives the loss. TRL has no public function that scores given rollouts, so this
twin calls that step directly.

Settings chosen here, and why:

- ``bf16=False``: as for DPO, the twins compute in the model's own dtype.
- ``temperature=1.0`` (TRL's default, set explicitly): TRL divides the logits by the sampling
  temperature before taking log-probs; the naive twin scores at temperature 1.
- ``pad_to_multiple_of=None``: padded to the longest row, as the naive twin pads.
- ``current_gradient_accumulation_steps = 1``: ``Trainer.train`` sets it for each step; the
  loss of a single micro-batch is computed here outside ``train``.
- The adapter stays as it was given (``helpers.dpo.adapter_kept``): on a quantized base TRL
  casts it to bf16 when the trainer is built; the naive twin keeps peft's fp32 adapter.
- A model that already has an adapter makes TRL keep a frozen copy of it as the reference when
  ``beta > 0``; the copy is deleted, so the reference is the model under the adapter (as in
  ``naive``).
"""

from __future__ import annotations

import os
import tempfile
from typing import Literal

import datasets
import torch
from transformers import PreTrainedTokenizerBase, PrinterCallback
from trl import GRPOConfig, GRPOTrainer
from trl.trainer.utils import split_tensor_dict

from helpers.checks import whole_number
from helpers.dpo import adapter_kept, check_adapter
from helpers.grpo import check_rollouts, check_settings, encode_rollouts, task_reward
from helpers.grpo.naive import GRPOOutput
from helpers.sft import quiet_version_skew


def _trainer(model, tokenizer, rows, reward, rollout, config: GRPOConfig) -> GRPOTrainer:
    datasets.disable_progress_bars()
    silence = os.environ.get("TRL_EXPERIMENTAL_SILENCE")
    os.environ["TRL_EXPERIMENTAL_SILENCE"] = "1"  # rollout_func is marked experimental in 1.16
    try:
        with quiet_version_skew(), adapter_kept(model):  # TRL casts a QLoRA adapter to bf16
            trainer = GRPOTrainer(
                model=model,
                reward_funcs=[reward],
                args=config,
                train_dataset=datasets.Dataset.from_list(rows),
                processing_class=tokenizer,
                rollout_func=rollout,
            )
    finally:
        if silence is None:
            os.environ.pop("TRL_EXPERIMENTAL_SILENCE")
        else:
            os.environ["TRL_EXPERIMENTAL_SILENCE"] = silence
    if "ref" in model.peft_config:  # TRL's frozen copy of an existing adapter: not our reference
        model.delete_adapter("ref")
        model.set_adapter("default")
    trainer.remove_callback(PrinterCallback)
    trainer.current_gradient_accumulation_steps = 1
    return trainer


def grpo_loss(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    records: list[dict],
    completions: list[str],
    num_generations: int,
    beta: float = 0.0,
    epsilon: float = 0.2,
    loss_type: Literal["dapo", "grpo"] = "dapo",
    old_logps: torch.Tensor | None = None,
    rows_per_backward: int | None = None,
) -> GRPOOutput:
    """The GRPO loss of given rollouts as TRL's ``GRPOTrainer`` computes it.

    Args and returns as ``naive.grpo_loss``; ``rewards`` are what TRL got back from
    ``helpers.grpo.task_reward``, ``advantages`` and ``batch`` what its scoring step built.
    ``rows_per_backward`` n maps to TRL's own gradient accumulation over one generation batch
    of N = B * G rows: ``per_device_train_batch_size=n``, ``gradient_accumulation_steps`` =
    ``steps_per_generation`` = N / n; the trainer splits the scored batch into N / n equal
    parts (``split_tensor_dict``) and scales each part's loss by them. TRL needs n to divide N.
    """
    check_adapter(model)
    check_rollouts(records, completions, num_generations)
    beta, epsilon = check_settings(beta, epsilon, loss_type)
    n_rows = len(completions)
    if rows_per_backward is not None:
        whole_number(rows_per_backward, "rows_per_backward")
        if n_rows % rows_per_backward:
            raise ValueError(
                f"rows_per_backward must divide the batch's {n_rows} rows for TRL's gradient "
                f"accumulation (its parts are equal), got {rows_per_backward}"
            )
    parts = 1 if rows_per_backward is None else n_rows // rows_per_backward
    prompt_ids, completion_ids = encode_rollouts(tokenizer, records, completions, num_generations)
    seen: dict[str, list[float]] = {}

    def reward(completions, answer, **kwargs):  # TRL's reward signature; keeps what it returns
        seen["rewards"] = task_reward(completions, answer)
        return seen["rewards"]

    reward.__name__ = "task_reward"  # TRL logs each reward under its function's name

    def rollout(prompts, trainer):  # replaces generation: the given answers, already tokenized
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": None}

    with tempfile.TemporaryDirectory(prefix="grpo-") as output_dir:
        config = GRPOConfig(
            output_dir=output_dir,  # nothing is saved there (save_strategy="no")
            num_generations=num_generations,
            per_device_train_batch_size=n_rows // parts,  # one optimizer step: the whole batch
            gradient_accumulation_steps=parts,  # also steps_per_generation: one generation batch
            beta=beta,
            epsilon=epsilon,
            loss_type=loss_type,
            scale_rewards="group",
            temperature=1.0,
            pad_to_multiple_of=None,
            bf16=False,
            fp16=False,
            use_cpu=not torch.cuda.is_available(),
            report_to="none",
            save_strategy="no",
            disable_tqdm=True,
        )
        rows = [{"prompt": r["prompt"], "answer": r["completion"]} for r in records]
        trainer = _trainer(model, tokenizer, rows, reward, rollout, config)
        model.train()  # TRL scores and logs under "train" when the model is in training mode
        group_rows = [row for row in rows for _ in range(num_generations)]  # G copies, in order
        inputs = trainer._generate_and_score_completions(group_rows)
        if old_logps is not None:
            expected = tuple(inputs["completion_ids"].shape)
            if not isinstance(old_logps, torch.Tensor) or tuple(old_logps.shape) != expected:
                got = (
                    tuple(old_logps.shape)
                    if isinstance(old_logps, torch.Tensor)
                    else type(old_logps).__name__
                )
                raise ValueError(f"old_logps must be (N, C) = {expected}, got {got}")
            inputs["old_per_token_logps"] = old_logps.to(inputs["completion_ids"].device)
        if rows_per_backward is None:
            loss = trainer.compute_loss(model, inputs)
        else:  # as Trainer.train does in one optimizer step (TRL shuffles the rows first)
            trainer.current_gradient_accumulation_steps = parts
            loss = 0.0
            for part in split_tensor_dict(inputs, parts):
                part_loss = trainer.compute_loss(model, part)
                part_loss.backward()
                loss = loss + part_loss.detach()
    batch = {
        k: inputs[k].cpu()
        for k in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask")
    }
    return GRPOOutput(
        loss, torch.tensor(seen["rewards"]), inputs["advantages"].detach().cpu(), batch
    )
