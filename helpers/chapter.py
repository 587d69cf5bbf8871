"""What every chapter's opening cell does, in one call.

    profile = open_chapter("03_qlora", PROFILE, seed=SEED)

quiets the library notices that teach nothing, names the chapter for ``helpers.report``,
resolves the profile, stops on a profile the chapter does not run on (``STOPS``, with the
profile to use instead), prints which profile runs and why, and seeds torch.
"""

from __future__ import annotations

import logging
import warnings

# The profiles a chapter stops on at its opening cell, and why (with what to run instead).
STOPS: dict[str, dict[str, str]] = {
    "01_quantization": {
        "t4-8b": "it reads the model's weights unquantized: Qwen2.5-7B in fp16 does not fit a "
        "T4. Run it with PROFILE='t4' (Qwen2.5-1.5B); t4-8b starts at chapter 03 (QLoRA)."
    },
    "02_lora": {
        "t4-8b": "it trains LoRA on an unquantized base: Qwen2.5-7B in fp16 does not fit a T4. "
        "Run it with PROFILE='t4' (Qwen2.5-1.5B); t4-8b starts at chapter 03 (QLoRA)."
    },
    "08_two_gpus": {
        "t4-8b": "it plans and runs Qwen2.5-1.5B on two T4s: run it with PROFILE='t4x2' "
        "(or 'tiny' on a CPU)."
    },
}
_MERGES_WHOLE_MODEL = (
    "it merges the whole model at once, and the merged 7B model in float16 is 15.2 GB, more "
    "than a T4's 14.7 GiB and Colab's 12.7 GB of host memory. Use PROFILE='t4' (Qwen2.5-1.5B)."
)
STOPS["06_gptq_awq"] = {"t4-8b": _MERGES_WHOLE_MODEL}
STOPS["07_deploy"] = {"t4-8b": _MERGES_WHOLE_MODEL}


class ProfileNotSupported(RuntimeError):
    """A chapter asked to run on a profile it stops on."""


def quiet_library_notices() -> None:
    """Silence what the libraries print that is not for the learner to act on.

    bitsandbytes logs, on CPUs with AVX512-BF16, that an optional kernel package is absent (its
    built-in CPU code, which the course uses, runs either way); transformers 5 renames raise
    FutureWarnings from inside peft and TRL; loading the shipped tiny model needs no progress
    bar. Errors and other warnings still show.
    """
    from transformers import logging as hf_logging

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    hf_logging.disable_progress_bar()


def open_chapter(chapter: str, profile: str = "auto", seed: int | None = None, **overrides):
    """Start a chapter: quiet notices, name it for the report, resolve and check its profile.

    Args:
        chapter: the chapter's stem, e.g. ``"03_qlora"``.
        profile: the ``PROFILE`` parameter: a profile name or ``"auto"``.
        seed: seeds torch's generators when given.
        **overrides: profile fields to replace (``None`` keeps the profile's), e.g.
            ``max_steps=MAX_STEPS``.
    Returns:
        The resolved ``helpers.profiles.Profile``.
    Raises:
        ProfileNotSupported: the chapter stops on this profile (the message names the profile
            to use instead).
        ValueError: an unknown profile or field, or a chapter stem that is not ``NN_name``.
    """
    import torch

    from helpers import report
    from helpers.profiles import resolve_profile

    number, _, name = chapter.partition("_")
    if len(number) != 2 or not number.isdigit() or not name:
        raise ValueError(f"chapter {chapter!r}: expected a stem such as '03_qlora'")
    quiet_library_notices()
    report.set_chapter(chapter)
    resolved, why = resolve_profile(profile, **overrides)
    stop = STOPS.get(chapter, {}).get(resolved.name)
    if stop:
        raise ProfileNotSupported(f"Chapter {number} does not run on {resolved.name}: {stop}")
    print(f"profile {resolved.name}: {why}")
    if seed is not None:
        torch.manual_seed(seed)
    return resolved
