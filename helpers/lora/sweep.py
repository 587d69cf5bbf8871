"""Chapter 02's rank and target sweep, run in full, and the size of LoRA's first update.

A converged sweep over ranks, target sets and seeds takes minutes on a CPU, too long for a
chapter that must run in well under a minute. So this module runs it from the command line
and writes a JSON file the chapter loads and plots; the chapter scores its main training run
(the profile's own rank) beside the file's point of the same length. Each run here reaches its
later lengths by continuing with a reshuffled data order, so only at the first length is the
file's seed-``SEED`` point the same run as the chapter's; at others the chapter checks that its
score lies within the seeds' range.

    python -m helpers.lora.sweep                      # writes data/results/lora_sweep.json
    python -m helpers.lora.sweep --seeds 0 --steps 50 100 --out /tmp/sweep.json  # a quick one

Step size and rank are kept apart: every point uses the scale s(r) = s0 * sqrt(r0 / r), where
r0 and s0 = alpha0 / r0 are the profile's rank and scale. That is rsLoRA's rule (Kalajdzievski
2023, arXiv:2312.03732), alpha / sqrt(r) with a fixed alpha = s0 * sqrt(r0), written as the
plain LoRA alpha = s(r) * r, so the profile's own rank gets exactly the profile's alpha.

Each point is scored on the task itself: greedy exact match and per-field (label) accuracy on
the first ``eval_examples`` validation records, after each of the step counts asked for (one
training run per point, continued with the same AdamW state).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

from helpers.atomic import write_text
from helpers.lora import naive
from helpers.paths import REPO_ROOT

SWEEP_FILE = REPO_ROOT / "data" / "results" / "lora_sweep.json"
RANKS = (1, 2, 4, 8, 16)
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
SCALINGS = ("alpha/r fixed", "alpha fixed", "rsLoRA")


def scaling(rule: str, r: int, r_ref: int, alpha_ref: float) -> float:
    """The factor in front of B A at rank r, for a rule that matches (r_ref, alpha_ref) at r_ref.

    Args:
        rule: "alpha/r fixed" (alpha grows with r), "alpha fixed" (the LoRA paper's sweeps),
            or "rsLoRA" (alpha / sqrt(r) with alpha fixed).
    Returns:
        The scale s; all three give alpha_ref / r_ref at r = r_ref.
    """
    if rule not in SCALINGS:
        raise ValueError(f"rule must be one of {SCALINGS}, got {rule!r}")
    for name, value in (("r", r), ("r_ref", r_ref)):
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    s_ref = alpha_ref / r_ref
    rules = {
        "alpha/r fixed": s_ref,
        "alpha fixed": alpha_ref / r,
        "rsLoRA": s_ref * (r_ref / r) ** 0.5,
    }
    return rules[rule]


def first_update_size(
    r: int, scale: float, in_features: int = 256, out_features: int = 640, seed: int = 0
) -> float:
    """Frobenius norm of the change of s * B A after one AdamW step, on one layer.

    A LoRALinear around a random (out, in) layer takes one AdamW step (lr 1e-3) on a random
    regression loss over a batch of 64 inputs. B starts at zero, so the change is s * B1 A
    (A's gradient is zero while B = 0: only AdamW's weight decay moves it, by lr * 0.01).

    Returns:
        ||s * B1 A||_F, a float.
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    layer = naive.LoRALinear(nn.Linear(in_features, out_features, bias=False), r, scale * r)
    x = torch.randn(64, in_features, generator=gen)  # (64, IN)
    target = torch.randn(64, out_features, generator=gen)  # (64, OUT)
    params = [layer.lora_A.weight, layer.lora_B.weight]
    opt = torch.optim.AdamW(params, lr=1e-3)
    (layer(x) - target).pow(2).mean().backward()
    opt.step()
    with torch.no_grad():
        return (layer.delta_weight()).norm().item()


def remove_lora(model: nn.Module) -> nn.Module:
    """Put each LoRALinear's base layer back, unmerged: the model as it was before add_lora.

    The frozen weights never change while an adapter trains, so one base model can host one
    adapter after another without a second copy of its weights.
    """
    for name, module in list(model.named_modules()):
        if isinstance(module, naive.LoRALinear):
            if module.merged:
                module.unmerge()
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, module.base_layer)
    if hasattr(model, "lora_config"):
        del model.lora_config
    for param in model.parameters():
        param.requires_grad = False
    return model


def run_point(
    model, tokenizer, train_set, eval_set, *, r, targets, alpha, seed, steps, train_kwargs
):
    """Train one adapter on ``model`` (in place, removed after) and score it at each step count.

    Args:
        steps: increasing step counts, e.g. (100, 200); training continues between them with
            the same AdamW state and a reshuffled data order.
        train_kwargs: passed to ``helpers.train.train`` (micro_batch_size, lr, max_seq_len...).
    Returns:
        ``{"r", "targets", "alpha", "seed", "trainable", "scores": [{"steps", "exact_match",
        "<field>_accuracy", "final_loss"}]}``.
    """
    from helpers.task import FIELDS, evaluate
    from helpers.train import train

    torch.manual_seed(seed)
    naive.add_lora(model, r, alpha, targets)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=train_kwargs["lr"])  # train()'s default optimizer
    scores, done = [], 0
    for chunk, n_steps in enumerate(steps):
        losses = train(model, tokenizer, train_set, max_steps=n_steps - done, seed=seed + 1000 * chunk,
                       optimizer=opt, progress=False, **train_kwargs)  # fmt: skip
        done = n_steps
        result = evaluate(model, tokenizer, eval_set, progress=False)
        scores.append({"steps": n_steps, "exact_match": result["exact_match"],
                       **{f"{f}_accuracy": result[f"{f}_accuracy"] for f in FIELDS},
                       "final_loss": losses[-1]})  # fmt: skip
    trainable = naive.count_parameters(model)[0]
    remove_lora(model)
    return {"r": r, "targets": list(targets), "alpha": alpha, "seed": seed,
            "trainable": trainable, "scores": scores}  # fmt: skip


def sweep_configs(
    r_ref: int, alpha_ref: float, targets: tuple[str, ...], ranks: tuple[int, ...] = RANKS
) -> list[dict]:
    """The sweep's points: each rank on ``targets``, and r_ref on attention only, all rsLoRA."""
    configs = [
        {"r": r, "targets": tuple(targets), "alpha": scaling("rsLoRA", r, r_ref, alpha_ref) * r}
        for r in ranks
    ]
    attention = tuple(t for t in targets if t in ATTENTION)
    configs.append({"r": r_ref, "targets": attention, "alpha": float(alpha_ref)})
    return configs


def run_sweep(
    profile_name: str, seeds, steps, eval_examples: int, ranks=RANKS, on_run=None
) -> dict:
    """Every point of ``sweep_configs`` for every seed, on one base model (see run_point).

    Seeds are the outer loop, so a sweep cut short holds every point for its first seeds.
    ``on_run`` (optional) is called with the results so far after each run, e.g. to save them.
    """
    from helpers.data import load_task
    from helpers.models import load_model
    from helpers.profiles import resolve_profile

    profile, _ = resolve_profile(profile_name)
    model, tokenizer = load_model(profile, load_in_4bit=False)
    train_set, valid_set = load_task("train"), load_task("valid")
    eval_set = valid_set.select(range(min(eval_examples, len(valid_set))))
    train_kwargs = {"micro_batch_size": profile.micro_batch_size, "lr": profile.lr,
                    "grad_accum_steps": profile.grad_accum_steps, "max_seq_len": profile.max_seq_len}  # fmt: skip
    runs, start = [], time.perf_counter()
    configs = sweep_configs(profile.lora_r, profile.lora_alpha, profile.target_modules, ranks)
    for seed in seeds:
        for config in configs:
            runs.append(run_point(model, tokenizer, train_set, eval_set, seed=seed, steps=steps,
                                  train_kwargs=train_kwargs, **config))  # fmt: skip
            print(f"r={config['r']:>2} {len(config['targets'])} targets seed {seed}: "
                  f"{runs[-1]['scores']}", flush=True)  # fmt: skip
            if on_run is not None:
                on_run(_sweep_record(profile, steps, seeds, eval_set, runs, start))
    return _sweep_record(profile, steps, seeds, eval_set, runs, start)


def _sweep_record(profile, steps, seeds, eval_set, runs, start) -> dict:
    """The results file's content: how the sweep was made, and its runs so far."""
    return {
        "what": "chapter 02 rank / target sweep: rsLoRA scale, exact match on validation",
        "command": "python -m helpers.lora.sweep " + " ".join(sys.argv[1:]),
        "profile": profile.name, "r_ref": profile.lora_r, "alpha_ref": profile.lora_alpha,
        "lr": profile.lr, "micro_batch_size": profile.micro_batch_size,
        "eval_split": "valid", "eval_examples": len(eval_set), "steps": list(steps),
        "seeds": list(seeds), "torch": torch.__version__,
        "date": datetime.date.today().isoformat(),
        "seconds": round(time.perf_counter() - start, 1), "runs": list(runs),
    }  # fmt: skip


def load_sweep(path: str | Path = SWEEP_FILE) -> dict:
    """Read a sweep file written by ``python -m helpers.lora.sweep``.

    Raises:
        FileNotFoundError: no file at ``path`` (the message says how to make it).
        ValueError: the file is not a sweep result (names the file and the missing key).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no sweep results; make them with python -m helpers.lora.sweep"
        )
    data = json.loads(path.read_text())
    for key in ("runs", "steps", "seeds", "eval_examples", "r_ref", "command"):
        if key not in data:
            raise ValueError(f"{path}: not a sweep result, the key {key!r} is missing")
    return data


def summarize(data: dict, steps: int, metric: str = "exact_match") -> list[dict]:
    """Per point (r, targets): the seeds' ``metric`` after ``steps``, with mean, min and max.

    Returns:
        One dict per point, in the file's order: ``r``, ``targets``, ``trainable``, ``values``
        and ``seeds`` (one per seed), ``mean``, ``low``, ``high``.
    """
    if steps not in data["steps"]:
        raise ValueError(f"steps must be one of the file's {data['steps']}, got {steps!r}")
    points: dict[tuple, dict] = {}
    for run in data["runs"]:
        key = (run["r"], tuple(run["targets"]))
        score = next(s for s in run["scores"] if s["steps"] == steps)
        point = points.setdefault(key, {"r": run["r"], "targets": run["targets"],
                                        "trainable": run["trainable"], "values": [],
                                        "seeds": []})  # fmt: skip
        point["values"].append(score[metric])
        point["seeds"].append(run["seed"])
    for point in points.values():
        vals = point["values"]
        point.update(mean=sum(vals) / len(vals), low=min(vals), high=max(vals))
    return list(points.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.lora.sweep", description=__doc__)
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, nargs="+", default=[100, 200, 300, 400])
    parser.add_argument("--ranks", type=int, nargs="+", default=list(RANKS))
    parser.add_argument("--eval-examples", type=int, default=100)
    parser.add_argument("--out", type=Path, default=SWEEP_FILE)
    args = parser.parse_args(argv)
    if sorted(set(args.steps)) != args.steps or args.steps[0] <= 0:
        parser.error(f"--steps must be positive and increasing, got {args.steps}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_suffix(".partial.json")

    def save(data: dict, path: Path) -> None:
        write_text(path, json.dumps(data, indent=1) + "\n")  # never a half-written file

    data = run_sweep(args.profile, args.seeds, args.steps, args.eval_examples,
                     tuple(args.ranks), on_run=lambda d: save(d, partial))  # fmt: skip
    save(data, args.out)
    partial.unlink(missing_ok=True)
    print(f"wrote {args.out} ({data['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
