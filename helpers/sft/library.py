"""Supervised fine-tuning with TRL's ``SFTTrainer`` and a peft ``LoraConfig``.

Checked against trl 1.16: ``SFTConfig`` holds the run (``max_length``, ``completion_only_loss``,
``packing``, ...), the tokenizer goes in as ``processing_class``, and ``peft_config`` makes the
trainer wrap the model with ``get_peft_model``. A prompt/completion dataset gets its labels set
to -100 on the prompt (``completion_only_loss=True``, also TRL's default for that format).

Defaults that differ from the course's loop and are set here: ``bf16=True`` (35x slower on a
CPU and not what the loop computes; a GPU profile's fp16 or bf16 follows ``run.mixed_precision``),
``gradient_checkpointing=True`` (follows ``run.gradient_checkpointing``), a linear learning-rate
decay (the loop keeps ``lr`` constant), ``weight_decay=0.0`` (the loop's torch AdamW uses 0.01)
and TRL's own shuffle (the records come in the loop's order, ``train_sampling_strategy``).
"""

from __future__ import annotations

import tempfile

import datasets
import torch
from peft import LoraConfig
from transformers import PrinterCallback, TrainerCallback
from trl import SFTConfig, SFTTrainer

from helpers.data import head_text
from helpers.sft import SFTRun, quiet_version_skew
from helpers.sft.naive import SFTResult, order_records


def to_prompt_completion(tokenizer, record: dict) -> dict:
    """A record as TRL's text prompt/completion: the chat template written out as text.

    A ``messages`` record must end with its only assistant turn (TRL trains several assistant
    turns only with ``assistant_only_loss`` and a template that marks them).

    Returns:
        ``{"prompt": str, "completion": str}``; TRL appends the eos token to the completion.
    Raises:
        ValueError: a conversation whose last turn is not its only assistant turn.
    """
    if "messages" not in record:
        turns = [{"role": "user", "content": record["prompt"]}]
        answer = record["completion"]
    else:
        turns, last = record["messages"][:-1], record["messages"][-1]
        if last["role"] != "assistant" or any(t["role"] == "assistant" for t in turns):
            raise ValueError(
                "to_prompt_completion: a messages record must end with its only assistant turn, "
                f"got roles {[t['role'] for t in record['messages']]}"
            )
        answer = last["content"]
    if not isinstance(answer, str) or not answer.strip():  # as helpers.data.encode refuses it
        raise ValueError(
            "to_prompt_completion: the record's completion (or assistant turn) is empty: nothing "
            "to learn but the eos token; drop the record"
        )
    prompt = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    return {"prompt": prompt, "completion": answer}


def _bounded(tokenizer, example: dict, max_length: int) -> dict:
    """The example with its prompt and completion cut to what TRL keeps: TRL tokenizes the
    whole text, then keeps its first ``max_length`` tokens, so a long line would cost its whole
    length; the cut texts give the same first tokens (``helpers.data.head_text``)."""
    return {k: head_text(tokenizer, v, max_length) for k, v in example.items()}


class _StepLog(TrainerCallback):
    """Keep every logged training step and evaluation; forward them to a tracker if given."""

    def __init__(self, tracker=None):
        self.tracker, self.rows = tracker, []

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = dict(logs or {})
        self.rows.append({"step": state.global_step, **logs})
        if self.tracker is not None:
            names = {"loss": "train/loss", "learning_rate": "train/learning_rate"}
            names |= {"grad_norm": "train/grad_norm", "eval_loss": "eval/loss"}
            picked = {names[k]: float(v) for k, v in logs.items() if k in names}
            if picked:
                self.tracker.log(picked, state.global_step)


def sft_config(run: SFTRun, output_dir: str, **changes) -> SFTConfig:
    """The ``SFTConfig`` of ``run``: the course loop's optimizer, schedule and batches.

    Args:
        changes: further ``SFTConfig`` fields (``packing=True``, ``eval_steps=10``, ...).
    """
    settings = dict(
        output_dir=output_dir,
        max_steps=run.max_steps,
        per_device_train_batch_size=run.micro_batch_size,
        gradient_accumulation_steps=run.grad_accum_steps,
        learning_rate=run.lr,
        lr_scheduler_type="constant",  # the course's loop keeps lr constant
        optim="adamw_torch",
        weight_decay=0.01,  # torch AdamW's default, which the course's loop uses
        max_grad_norm=run.max_grad_norm,
        max_length=run.max_seq_len,
        completion_only_loss=True,
        train_sampling_strategy="sequential",  # the records come already in the loop's order
        fp16=run.mixed_precision == "fp16",  # autocast + loss scaling, as the loop's
        bf16=run.mixed_precision == "bf16",
        gradient_checkpointing=run.gradient_checkpointing,
        use_cpu=not torch.cuda.is_available(),
        logging_steps=1,
        save_strategy="no",
        report_to="none",  # the course logs through helpers.tracking instead
        seed=run.seed,
    )
    return SFTConfig(**{**settings, **changes})


def lora_config(run: SFTRun) -> LoraConfig:
    """The peft ``LoraConfig`` that ``helpers.lora.library.add_lora`` builds for ``run``."""
    return LoraConfig(
        r=run.r,
        lora_alpha=run.alpha,
        target_modules=list(run.target_modules),
        lora_dropout=0.0,
        task_type="CAUSAL_LM",
    )


def make_trainer(
    model, tokenizer, dataset, run: SFTRun, *, eval_dataset=None, tracker=None, **changes
) -> SFTTrainer:
    """An ``SFTTrainer`` over ``dataset``'s records in the course loop's order, LoRA by peft.

    Args:
        dataset: prompt/completion or messages records (``helpers.data.load_jsonl``).
        eval_dataset: records whose loss is logged every ``eval_steps`` (pass it in changes).
        tracker: a ``helpers.tracking.Tracker`` that receives every logged number.
        changes: ``SFTConfig`` fields to change (``output_dir`` defaults to a temporary one).
    Returns:
        The trainer; ``trainer.step_log.rows`` fills with the logs as it trains.
    """
    datasets.disable_progress_bars()  # tokenizing a few hundred records needs no bar
    as_text = lambda records: datasets.Dataset.from_list(  # noqa: E731
        [_bounded(tokenizer, to_prompt_completion(tokenizer, r), run.max_seq_len) for r in records]
    )
    output_dir = changes.pop("output_dir", None) or tempfile.mkdtemp(prefix="sft-")
    if eval_dataset is not None:
        changes.setdefault("eval_strategy", "steps")
        changes.setdefault("per_device_eval_batch_size", 16)
    torch.manual_seed(run.seed)  # the same initial adapter as add_lora after the same seed
    with quiet_version_skew():
        config = sft_config(run, output_dir, **changes)
        trainer = SFTTrainer(
            model=model,
            args=config,
            train_dataset=as_text(order_records(dataset, run)),
            eval_dataset=None if eval_dataset is None else as_text(list(eval_dataset)),
            processing_class=tokenizer,
            peft_config=lora_config(run),
        )
    if getattr(model, "is_loaded_in_4bit", False):
        # TRL 1.16 casts a QLoRA adapter to bf16 (sft_trainer.py, "the PEFT adapter weights are
        # converted to bf16"); the course's loop trains it in fp32, and a T4 has no native bf16.
        for param in trainer.model.parameters():
            if param.requires_grad:
                param.data = param.data.float()
    trainer.remove_callback(PrinterCallback)  # the logs go to step_log (and the tracker)
    trainer.step_log = _StepLog(tracker)
    trainer.add_callback(trainer.step_log)
    return trainer


def sft_train(
    model, tokenizer, dataset, run: SFTRun, *, progress: bool = True, tracker=None, **changes
) -> SFTResult:
    """Train a LoRA adapter with TRL's ``SFTTrainer``; the twin of ``naive.sft_train``.

    Args:
        changes: passed to ``make_trainer`` (``eval_dataset``, ``SFTConfig`` fields).
    Returns:
        An ``SFTResult`` read from the trainer's per-step logs; ``encoded`` holds TRL's own
        tokenization of the first micro-batch.
    """
    changes.setdefault("disable_tqdm", not progress)
    trainer = make_trainer(model, tokenizer, dataset, run, tracker=tracker, **changes)
    with quiet_version_skew():
        trainer.train()
    steps = [row for row in trainer.step_log.rows if "loss" in row and "grad_norm" in row]
    first = trainer.train_dataset.select(range(run.micro_batch_size))
    encoded = [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in first]
    result = SFTResult(
        trainer.model,
        [float(r["loss"]) for r in steps],
        [float(r["learning_rate"]) for r in steps],
        [float(r["grad_norm"]) for r in steps],
        encoded,
    )
    result.trainer = trainer
    return result
