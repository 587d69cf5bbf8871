"""Chapter 03's QLoRA adapter, for the chapters that start from it (06 quantizes it, 07 exports
it): the folder a learner names, else the one chapter 03 saved for this profile's model, else a
new one trained the same way (QLoRA on the NF4 base)."""

from __future__ import annotations

import json
from pathlib import Path

from helpers.checks import whole_number
from helpers.paths import build_dir

# What chapter 03 writes beside its adapters: {"model_id", "steps", "qlora": <folder name>, ...}
CHAPTER03_MANIFEST = Path("outputs") / "03_qlora" / "adapters.json"


def saved_adapter(model_id: str) -> tuple[Path, int] | None:
    """Chapter 03's saved QLoRA adapter for ``model_id``: ``(folder, steps)``, or None."""
    manifest = build_dir() / CHAPTER03_MANIFEST
    if not manifest.is_file():
        return None
    pair = json.loads(manifest.read_text())
    folder = manifest.parent / pair["qlora"]
    if pair.get("model_id") != model_id or not (folder / "adapter_config.json").is_file():
        return None
    return folder, int(pair["steps"])


def load_adapter_model(
    profile,
    out_dir: Path,
    adapter_dir: str | Path | None = None,
    use_saved: bool = True,
    max_steps: int | None = None,
    seed: int = 0,
):
    """A QLoRA adapter on a fresh NF4 base of ``profile``'s model, in eval mode.

    Args:
        profile: the chapter's profile (``helpers.profiles``).
        out_dir: where an adapter trained here is saved (``<out_dir>/qlora-adapter``).
        adapter_dir: a folder saved by peft's ``save_pretrained`` for this model; None: chapter
            03's when ``use_saved`` and it saved one for this model, else one trained here.
        use_saved: reuse chapter 03's adapter when there is one.
        max_steps: steps when training here; None: half the profile's ``max_steps``.
        seed: the training seed.
    Returns:
        ``(model, tokenizer, source)``: the peft model, its tokenizer, and a few words that say
        where the adapter came from.
    Raises:
        FileNotFoundError: ``adapter_dir`` holds no ``adapter_config.json``.
    """
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training

    from helpers.data import load_task
    from helpers.models import load_model
    from helpers.train import train

    if adapter_dir is not None:  # checked before the model is loaded
        folder = Path(adapter_dir)
        if not (folder / "adapter_config.json").is_file():
            raise FileNotFoundError(
                f"ADAPTER_DIR={str(adapter_dir)!r}: no adapter_config.json there "
                "(save the adapter with peft's save_pretrained)"
            )
    base, tokenizer = load_model(profile, load_in_4bit=True)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(base, folder)
        return model.eval(), tokenizer, f"ADAPTER_DIR ({folder})"
    saved = saved_adapter(profile.model_id) if use_saved else None
    if saved is not None:
        model = PeftModel.from_pretrained(base, saved[0])
        return model.eval(), tokenizer, f"chapter 03's ({saved[1]} steps)"
    steps = whole_number(max_steps, "MAX_STEPS") if max_steps else profile.max_steps // 2
    base = prepare_model_for_kbit_training(base, profile.gradient_checkpointing)
    config = LoraConfig(
        r=profile.lora_r,
        lora_alpha=profile.lora_alpha,
        target_modules=list(profile.target_modules),
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(base, config)
    torch.manual_seed(seed)
    train(
        model,
        tokenizer,
        load_task("train"),
        max_steps=steps,
        micro_batch_size=profile.micro_batch_size,
        lr=profile.lr,
        grad_accum_steps=profile.grad_accum_steps,
        max_seq_len=profile.max_seq_len,
        seed=seed,
    )
    folder = Path(out_dir) / "qlora-adapter"
    model.save_pretrained(folder)
    base, _ = load_model(profile, load_in_4bit=True)  # reload: training left fp32 norms
    return (
        PeftModel.from_pretrained(base, folder).eval(),
        tokenizer,
        f"trained here ({steps} steps)",
    )
