"""Chapter 10's DPO sweep: which settings, if any, beat the SFT model they start from.

On the tiny profile, DPO from chapter 03's adapter lowers every label's accuracy at the
chapter's settings. One run cannot say whether that is the setting or DPO on this model, and a
sweep of a dozen runs takes minutes, too long for the chapter. So this module runs the sweep
from the command line and writes a JSON file the chapter loads and prints; the chapter's own
main run is one of its rows, so the chapter can show that the file reproduces.

    python -m helpers.dpo.sweep                 # writes data/results/dpo_sweep.json
    python -m helpers.dpo.sweep --only main     # one row, printed, nothing written

Every run starts from chapter 03's saved LoRA adapter for the tiny model (run chapter 03
first), merged, with a fresh adapter on top (the reference is that adapter switched off, as in
the chapter), and is scored greedily on the chapter's 200 test records, each field against the
SFT model with McNemar's exact test (chapter 05). The settings varied:

- ``beta``, the learning rate and the steps (AdamW, gradient clipped to 1, constant rate or
  ``cosine``: 5 warm-up steps, then a cosine to 0);
- the pairs: flipped labels and on-policy mistakes mixed (the chapter's), either alone, or
  ``balanced``: flipped pairs added until, for every field, each label is the chosen answer
  as often as the rejected one (the on-policy mistakes otherwise push one label up overall);
- ``nll``: a term added to the loss, ``nll`` times the mean negative log-likelihood of the
  chosen answers' tokens (the RPO objective of Pang et al. 2024, arXiv:2404.19733), so that
  the chosen answer's probability cannot simply fall with the rejected one's;
- ``sft-only``: the same steps on the chosen answers' NLL alone and no DPO term: the control
  that says whether any further training from this adapter at this rate would hurt.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import random
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from helpers.atomic import write_text
from helpers.paths import REPO_ROOT, build_dir

SWEEP_FILE = REPO_ROOT / "data" / "results" / "dpo_sweep.json"
PAIRS = ("mixed", "flipped", "on-policy", "balanced")


@dataclass(frozen=True)
class Setting:
    """One DPO run of the sweep."""

    name: str
    beta: float = 0.1
    lr: float = 3e-4  # the chapter's: a tenth of the tiny profile's SFT rate
    steps: int = 30
    pairs: str = "mixed"
    micro_batch_size: int = 8
    schedule: str = "constant"  # or "cosine"
    nll: float = 0.0  # weight of the chosen answers' mean token NLL
    dpo: bool = True  # False: the NLL term alone (the sft-only control)
    seed: int = 0


SETTINGS = (
    Setting("main"),  # the chapter's main run (section 3)
    Setting("seed 1", seed=1),
    Setting("seed 2", seed=2),
    Setting("beta 0.5", beta=0.5),
    Setting("beta 1.0", beta=1.0),
    Setting("lr 1e-4, 90 steps", lr=1e-4, steps=90),
    Setting("lr 3e-5, 150 steps", lr=3e-5, steps=150),
    Setting("cosine schedule", schedule="cosine"),
    Setting("16 pairs a step", micro_batch_size=16),
    Setting("flipped pairs only", pairs="flipped"),
    Setting("on-policy pairs only", pairs="on-policy"),
    Setting("balanced pairs", pairs="balanced"),
    Setting("NLL term 1", nll=1.0),
    Setting("NLL term 1, balanced", nll=1.0, pairs="balanced"),
    Setting("sft-only control", nll=1.0, dpo=False),
)


def balance_pairs(pairs: list[dict], records, seed: int = 0) -> list[dict]:
    """``pairs`` plus flipped-label pairs from ``records`` until, within every field, each
    label's count of times chosen minus times rejected (over the pairs whose answers differ in
    that field) is within one of every other label's: no label is pushed up or down overall
    more than the others. An invalid rejected answer counts for the chosen side only.

    Each added pair takes a record whose label is the most pushed-down one as chosen and the
    most pushed-up label as rejected, until the counts are even.

    Raises:
        ValueError: a label that must be chosen more often but no record has it.
    """
    from helpers.task import FIELDS, parse_answer

    net = collections.Counter()
    for pair in pairs:
        chosen, rejected = parse_answer(pair["chosen"]), parse_answer(pair["rejected"]) or {}
        for field in FIELDS:
            if chosen[field] != rejected.get(field):
                net[(field, chosen[field])] += 1
                if rejected.get(field) is not None:
                    net[(field, rejected[field])] -= 1
    records = list(records)
    golds = [parse_answer(r["completion"]) for r in records]
    draw, extra = random.Random(seed), []
    for field in FIELDS:
        labels = sorted({g[field] for g in golds} | {lab for f, lab in net if f == field})
        while True:
            up = max(labels, key=lambda lab: (net[(field, lab)], lab))
            down = min(labels, key=lambda lab: (net[(field, lab)], lab))
            if net[(field, up)] - net[(field, down)] <= 1:
                break
            holders = [i for i, gold in enumerate(golds) if gold[field] == down]
            if not holders:
                raise ValueError(f"records: no record has the {field} {down!r} to choose")
            i = draw.choice(holders)
            rejected = json.dumps({**golds[i], field: up})
            extra.append({"prompt": records[i]["prompt"], "chosen": records[i]["completion"],
                          "rejected": rejected})  # fmt: skip
            net[(field, down)] += 1
            net[(field, up)] -= 1
    return pairs + extra


def _nll(model, batch) -> torch.Tensor:
    """Mean negative log-likelihood per token of the chosen answers (the first half of rows)."""
    from helpers.dpo import naive

    chosen, _ = naive.completion_logps(model, batch)
    rows = batch["completion_mask"][: len(chosen), 1:]
    return -chosen.sum() / rows.sum().clamp(min=1)


def run(setting: Setting, context: dict) -> dict:
    """One setting from a fresh adapter on the merged SFT model: its scores and its log."""
    from helpers.dpo import naive
    from helpers.evaluation.stats import mcnemar_exact, proportion_interval
    from helpers.lora.library import add_lora
    from helpers.task import FIELDS

    profile, tokenizer, merged = context["profile"], context["tokenizer"], context["merged"]
    pairs = context["pairs"][setting.pairs]
    torch.manual_seed(setting.seed)
    policy = add_lora(merged, profile.lora_r, profile.lora_alpha, profile.target_modules)
    pairs = list(pairs)
    random.Random(setting.seed).shuffle(pairs)
    trainable = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=setting.lr)
    warm = 5

    def factor(step):
        if setting.schedule == "constant":
            return 1.0
        return min(1.0, (step + 1) / warm) * 0.5 * (1 + np.cos(np.pi * step / setting.steps))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    starts = range(0, len(pairs), setting.micro_batch_size)
    log = {"loss": [], "logps/chosen": [], "logps/rejected": []}
    policy.train()
    for step in range(setting.steps):
        start = starts[step % len(starts)]
        out = naive.dpo_loss(policy, tokenizer, pairs[start : start + setting.micro_batch_size],
                             setting.beta)  # fmt: skip
        loss = out.loss if setting.dpo else 0.0
        if setting.nll:
            loss = loss + setting.nll * _nll(policy, out.batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        log["loss"].append(float(out.loss.detach()))
        log["logps/chosen"].append(out.metrics["logps/chosen"])
        log["logps/rejected"].append(out.metrics["logps/rejected"])
    table, answers = context["correctness"](policy)
    policy.unload()  # the merged SFT model as it was, for the next setting
    sft = context["sft_scores"]
    fields = {}
    for key in [*FIELDS, "exact"]:
        rate, low, high = proportion_interval(table[key])
        test = mcnemar_exact(table[key], sft[key])
        fields[key] = {"rate": round(rate, 4), "low": round(low, 4), "high": round(high, 4),
                       "dpo_only": int(test["a_only"]), "sft_only": int(test["b_only"]),
                       "p_value": float(f"{test['p_value']:.4g}")}  # fmt: skip
    return {"setting": asdict(setting), "pairs": len(pairs), "fields": fields,
            "valid": round(float(table["valid"].mean()), 4),
            "urgency_predicted": urgency_counts(answers),
            "final_loss": round(float(np.mean(log["loss"][-5:])), 4),
            "logps_chosen": [round(log["logps/chosen"][0], 3), round(log["logps/chosen"][-1], 3)],
            "logps_rejected": [round(log["logps/rejected"][0], 3),
                               round(log["logps/rejected"][-1], 3)]}  # fmt: skip


def urgency_counts(answers: list[str]) -> dict[str, int]:
    """How often each urgency label (or "invalid") is predicted."""
    from helpers.task import parse_answer

    labels = ((parse_answer(a) or {}).get("urgency", "invalid") for a in answers)
    return dict(sorted(collections.Counter(labels).items()))


def context(eval_examples: int = 200, pair_records: int = 256, seed: int = 0) -> dict:
    """The chapter's starting point: chapter 03's adapter merged, the test records scored, the
    pairs built, exactly as chapter 10's cells build them."""
    from peft import PeftModel

    from helpers.data import load_task
    from helpers.dpo.pairs import flipped_label_pairs, on_policy_pairs
    from helpers.lora.library import merge_and_unload
    from helpers.models import load_model
    from helpers.profiles import resolve_profile
    from helpers.task import FIELDS, generate_answers, score

    profile, _ = resolve_profile("tiny")
    manifest = build_dir() / "outputs" / "03_qlora" / "adapters.json"
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest}: no chapter 03 adapter; run chapter 03 first "
                                "(python -m tools.course run --only 03)")  # fmt: skip
    saved = json.loads(manifest.read_text())
    torch.manual_seed(seed)
    base, tokenizer = load_model(profile)
    if saved.get("model_id") != profile.model_id or "lora" not in saved:
        raise ValueError(f"{manifest}: no LoRA adapter for {profile.model_id}")
    sft = PeftModel.from_pretrained(base, manifest.parent / saved["lora"], is_trainable=False)
    test = load_task("test").select(range(eval_examples))
    max_new = max(len(tokenizer(c)["input_ids"]) for c in test["completion"]) + 4

    def correctness(model, records=test):
        model.eval()
        answers = generate_answers(model, tokenizer, records["prompt"], max_new, 64, False)
        scores = [score(a, g) for a, g in zip(answers, records["completion"], strict=True)]
        return {k: np.array([s[k] for s in scores]) for k in ["valid", "exact", *FIELDS]}, answers

    sft_scores, sft_answers = correctness(sft)
    train = load_task("train").shuffle(seed=seed).select(range(pair_records))
    flipped = flipped_label_pairs(train, seed=seed)
    on_policy = on_policy_pairs(train, correctness(sft, train)[1])
    pairs = {"mixed": flipped + on_policy, "flipped": flipped, "on-policy": on_policy,
             "balanced": balance_pairs(flipped + on_policy, train, seed)}  # fmt: skip
    merged = merge_and_unload(sft)
    return {"profile": profile, "tokenizer": tokenizer, "merged": merged, "pairs": pairs,
            "correctness": correctness, "sft_scores": sft_scores,
            "sft_answers": sft_answers, "adapter": saved}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.dpo.sweep", description=__doc__)
    parser.add_argument(
        "--only", nargs="+", help="names of settings to run; prints, writes nothing"
    )
    parser.add_argument("--out", default=str(SWEEP_FILE))
    args = parser.parse_args(argv)
    names = [s.name for s in SETTINGS]
    unknown = [n for n in args.only or [] if n not in names]
    if unknown:
        parser.error(f"--only: unknown setting(s) {unknown}; known: {names}")
    settings = [s for s in SETTINGS if not args.only or s.name in args.only]
    t0 = time.perf_counter()
    ctx = context()
    from helpers.task import FIELDS

    sft = {k: round(float(ctx["sft_scores"][k].mean()), 4) for k in [*FIELDS, "exact"]}
    print("SFT", sft, urgency_counts(ctx["sft_answers"]))
    runs = []
    for setting in settings:
        runs.append(run(setting, ctx))
        row = {k: v["rate"] for k, v in runs[-1]["fields"].items()}
        print(f"{setting.name:24s}", row, runs[-1]["urgency_predicted"], flush=True)
    if args.only:
        return 0
    doc = {
        "what": "chapter 10 DPO sweep from chapter 03's LoRA adapter on the tiny profile: greedy "
        "scores on the first 200 test records, McNemar against the SFT model",
        "command": "python -m helpers.dpo.sweep",
        "adapter": {k: ctx["adapter"][k] for k in ("steps", "seed")},
        "pairs": {k: len(v) for k, v in ctx["pairs"].items()},
        "sft": sft,
        "sft_urgency_predicted": urgency_counts(ctx["sft_answers"]),
        "torch": torch.__version__,
        "date": datetime.date.today().isoformat(),
        "seconds": round(time.perf_counter() - t0, 1),
        "runs": runs,
    }
    write_text(args.out, json.dumps(doc, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
