"""A real benchmark subset through lm-evaluation-harness, when the hub can be reached.

On a GPU profile (a T4 and a real model) the same harness call that scores the course's local
tasks can score a public benchmark: MMLU's subjects are harness tasks (``mmlu_<subject>``)
whose questions ``datasets`` downloads from the hub (``cais/mmlu``). Without the hub (CI,
Binder, an offline laptop) nothing is run, and the result says so plainly instead of failing.
There is no naive twin: the course does not rebuild MMLU.
"""

from __future__ import annotations

import os
import time

import torch
from transformers import PreTrainedTokenizerBase

MMLU_DATASET = "cais/mmlu"  # dataset_path of lm-eval's mmlu tasks (tasks/mmlu/default)
DEFAULT_TASKS = ("mmlu_abstract_algebra", "mmlu_high_school_computer_science", "mmlu_marketing")
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


def hub_status(endpoint: str | None = None, timeout: float = 5.0) -> tuple[bool, str]:
    """Whether the benchmark's data can be fetched now, and why not.

    Args:
        endpoint: the hub's address; None: huggingface_hub's own (``HF_ENDPOINT``).
        timeout: seconds to wait for the hub to answer.
    Returns:
        ``(True, "")``, or ``(False, reason)`` when an offline switch is set or the hub does
        not answer with the dataset's details.
    """
    from huggingface_hub import HfApi, constants

    switched = [v for v in OFFLINE_VARIABLES if os.environ.get(v, "").upper() in ("1", "TRUE")]
    if switched or constants.HF_HUB_OFFLINE:
        names = ", ".join(f"{v}=1" for v in switched or ["HF_HUB_OFFLINE"])
        return False, f"offline mode is on ({names}): the hub is not asked"
    try:
        HfApi(endpoint=endpoint).dataset_info(MMLU_DATASET, timeout=timeout)
    except Exception as err:  # no network, a proxy, DNS, an HTTP error: all mean "not now"
        return False, f"the hub did not answer for {MMLU_DATASET} ({type(err).__name__}: {err})"
    return True, ""


def run_benchmark(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    tasks: tuple[str, ...] = DEFAULT_TASKS,
    *,
    limit: int = 20,
    batch_size: int = 8,
    apply_chat_template: bool = False,
    endpoint: str | None = None,
) -> dict:
    """Score ``model`` on a few benchmark tasks from the hub, or say that the hub is out of reach.

    Args:
        tasks: lm-evaluation-harness task names (MMLU subjects by default).
        limit: questions per task, from the top of each test split.
        apply_chat_template: False scores the plain "Question ... Answer:" prompt that MMLU's
            published numbers use; True wraps it in the model's chat template.
        endpoint: the hub's address for the reachability check (None: the default).
    Returns:
        ``{"status": "ok", "tasks": {name: {"acc": float, "n": int}}, "limit", "seconds"}``,
        or ``{"status": "not reachable", "reason": str, "tasks": {}, "limit"}``; never raises
        for a missing network.
    """
    reachable, reason = hub_status(endpoint)
    if not reachable:
        return {"status": "not reachable", "reason": reason, "tasks": {}, "limit": limit}
    from helpers.harness.library import _lm_eval

    simple_evaluate, HFLM, _ = _lm_eval()
    start = time.perf_counter()
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    out = simple_evaluate(
        model=lm,
        tasks=list(tasks),
        limit=limit,
        apply_chat_template=apply_chat_template,
        bootstrap_iters=0,
        log_samples=False,
    )
    scores = {
        name: {
            "acc": float(out["results"][name]["acc,none"]),
            "n": int(out["n-samples"][name]["effective"]),
        }
        for name in tasks
    }
    return {"status": "ok", "tasks": scores, "limit": limit, "seconds": time.perf_counter() - start}
