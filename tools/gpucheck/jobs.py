"""Which chapter runs on which profile, with which short-run parameters."""

from __future__ import annotations

from helpers.hardware import CARD_TOTAL_GIB

# The chapters each GPU profile claims (README, "What runs where"; memory_guard.UNSUPPORTED lists
# what a chapter stops on): t4 and gpu-4gb run 00-05, 09 and 10 (10 on gpu-4gb planned to fit,
# never measured); t4-8b chapters 00, 03 and 04 (01, 02 and 05 stop at their first cell on it).
# Chapters 06, 07 and 08 join as they run on GPU profiles. t4 also claims chapter 11: its models
# are the tiny Llama's shape on every profile (trained on the CPU), and on a GPU section 4 trains
# that shape a few steps under FSDP with and without CPU offload and records the peaks and the
# slowdown (helpers/pretrain/offload.py; never run on a GPU yet). The memory guard does not
# predict chapter 11 (memory_guard.UNSUPPORTED says why); one profile's run is enough.
CLAIMS: dict[str, tuple[str, ...]] = {
    "t4": ("00", "01", "02", "03", "04", "05", "09", "10", "11"),
    "gpu-4gb": ("00", "01", "02", "03", "04", "05", "09", "10"),
    "t4-8b": ("00", "03", "04"),
}
# Short runs (the 2026-12-04 measurement's parameters, ../shared/gpu/run_chapters.py): the
# peaks are those of full runs (its t4 check at full evaluation sizes gave the same peaks).
PARAMS: dict[str, dict] = {
    "00": {"N_EXAMPLES": 16, "FEW_SHOT_EXAMPLES": 8},
    "01": {},
    "02": {"MAX_STEPS": 6, "EVAL_EXAMPLES": 16, "COMPARE_STEPS": 3},
    "03": {"MAX_STEPS": 12, "TRACK_STEPS": 2, "SAVE_EVERY": 5, "EVAL_EXAMPLES": 16},
    "04": {"GRAD_ACCUM_STEPS": 4, "TRAIN_STEPS": 2},
    "05": {"MAX_STEPS": 6, "EVAL_EXAMPLES": 16, "MC_EXAMPLES": 16, "N_RESAMPLES": 200,
           "OVERFIT_STEPS": 6, "USE_SAVED_ADAPTERS": False},
    "09": {"MAX_STEPS": 6, "PARITY_STEPS": 2, "EVAL_EXAMPLES": 16, "EVAL_EVERY": 3},
    "10": {"USE_SAVED_ADAPTER": False, "SFT_STEPS": 6, "EVAL_EXAMPLES": 16, "PAIR_RECORDS": 16,
           "DPO_STEPS": 3, "GRPO_STEPS": 2},
    "11": {"PRETRAIN_STEPS": 10, "EVAL_EVERY": 5, "HELDOUT_BLOCKS": 8, "PARITY_STEPS": 2,
           "REPLAY_STEPS": 1, "FSDP_STEPS": 6},
}  # fmt: skip
PARAMS_8B = {"03": {"MAX_STEPS": 4, "SAVE_EVERY": 2, "EVAL_EXAMPLES": 8, "TRACK_STEPS": 1}}


def default_jobs() -> list[tuple[str, str]]:
    """Every ``(profile, chapter)`` pair the profiles claim."""
    return [(p, ch) for p, chapters in CLAIMS.items() for ch in chapters]


def parse_jobs(text: str | None) -> list[tuple[str, str]]:
    """``"t4:01,gpu-4gb:03 t4-8b:04"`` -> ``[("t4", "01"), ...]``; None or "" -> every claim.

    A chapter may be written ``1``, ``01`` or ``01_quantization``; ``t4:all`` is every chapter
    t4 claims.

    Raises:
        ValueError: a pair without ``:``, a profile with no card, or a chapter that is not a
            two-digit number (the message names the pair).
    """
    if not text or not text.strip():
        return default_jobs()
    jobs: list[tuple[str, str]] = []
    for item in text.replace(",", " ").split():
        profile, sep, chapter = item.partition(":")
        if not sep or not profile or not chapter:
            raise ValueError(f"--jobs {item!r}: expected PROFILE:CHAPTER, e.g. t4:03")
        if profile not in CARD_TOTAL_GIB:
            raise ValueError(f"--jobs {item!r}: {profile!r} is not a GPU profile {sorted(CLAIMS)}")
        if chapter == "all":
            jobs += [(profile, ch) for ch in CLAIMS.get(profile, ())]
            continue
        number = chapter.split("_")[0]
        if not number.isdigit() or len(number) > 2:
            raise ValueError(f"--jobs {item!r}: the chapter must be a number such as 03")
        jobs.append((profile, number.zfill(2)))
    return list(dict.fromkeys(jobs))


def parameters(profile: str, chapter: str) -> dict:
    """The papermill parameters of one short run."""
    params = {"PROFILE": profile, **PARAMS.get(chapter, {})}
    if profile == "t4-8b":
        params.update(PARAMS_8B.get(chapter, {}))
    return params
