"""The README's headline numbers for chapters 08 and 09 are the ones their stored run recorded.

Each chapter prints ``recorded <name> = <value>`` for every number it records
(``helpers.report.record``); the committed notebook keeps those lines. The README's row of that
chapter in "Measured run times" must state each headline as the run's values give it, and may
call a score "below" or "above" chance, or bytes "measured", only where the run says so. After a
chapter is re-executed, a failure here names the README phrase to write from the new run.
"""

from __future__ import annotations

import ast
import re

import nbformat
import pytest

from helpers.paths import CHAPTERS_DIR, PACKAGE_DIR

README = PACKAGE_DIR.parent / "README.md"


def outputs(stem: str) -> str:
    """Everything the committed notebook's cells printed."""
    cells = nbformat.read(CHAPTERS_DIR / f"{stem}.ipynb", as_version=4).cells
    return "".join(o.get("text", "") for c in cells for o in c.get("outputs", []))


def recorded(stem: str) -> dict:
    """The values the chapter's stored outputs say it recorded (the last one of each name)."""
    values = {}
    for name, text in re.findall(r"^recorded (\w+) = (.+)$", outputs(stem), re.M):
        try:
            values[name] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            values[name] = text  # a verdict: plain words
    return values


def readme_row(number: str) -> str:
    """The chapter's row of the README's "Measured run times" table."""
    section = README.read_text(encoding="utf-8").split("## Measured run times", 1)[-1]
    rows = [line for line in section.splitlines() if line.startswith(f"| {number} ")]
    assert rows, f"README.md: no row for chapter {number} under '## Measured run times'"
    return rows[0]


def sci(value: float) -> str:
    """A small number as the README writes it: 4.6e-7."""
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def interval(bounds: dict) -> str:
    return f"[{bounds['low']:.2f}, {bounds['high']:.2f}]"


def mc_intervals() -> list[tuple[str, str, str]]:
    """Chapter 09's printed multiple-choice rates with their 95% Wilson intervals."""
    found = re.findall(
        r"^(base|LoRA) \w+: acc_norm ([\d.]+) (\[[\d.]+, [\d.]+\]) \(95% Wilson\)",
        outputs("09_your_data"),
        re.M,
    )
    assert len(found) == 2, "chapters/09_your_data.ipynb: no multiple-choice verdict lines"
    return [("base" if who == "base" else "adapter", rate, bounds) for who, rate, bounds in found]


def chapter_08_claims(r: dict) -> list[str]:
    measured = "fsdp_bytes_per_rank_allocated" in r  # recorded only where CUDA's allocator ran
    return [
        f"DDP gradients {sci(r['ddp_grad_rel_diff_naive'])} from the full batch",
        f"wrong normalisation {r['ddp_wrong_normalisation_rel_diff']:.2f}",
        "FSDP2 bytes per rank measured by CUDA's allocator"
        if measured
        else "FSDP2 bytes per rank counted (tensor sizes, not measured)",
        f"within {r['planner_vs_counted_rel_error']:.2%} of the plan",
    ]


def chapter_09_claims(r: dict) -> list[str]:
    unpacked, packed = r["padding_fraction_unpacked"], r["padding_fraction_packed"]
    speed = r["tokens_per_s_packed"] / r["tokens_per_s_unpacked"]
    verdicts = {r["harness_mc_base_verdict"], r["harness_mc_lora_verdict"]}
    mc = (
        "neither distinguishable from chance"
        if verdicts == {"not distinguishable from"}
        else f"base {r['harness_mc_base_verdict']} chance, "
        f"adapter {r['harness_mc_lora_verdict']} chance"
    )
    fields = [k.removesuffix("_adapter_interval") for k in r
              if k.endswith("_accuracy_adapter_interval")]  # fmt: skip
    return [
        f"losses within {sci(r['sft_loss_max_abs_diff'])}",
        f"packed loss = examples alone ({sci(r['packed_loss_rel_diff'])})",
        f"padding {unpacked:.2%} -> {packed:.2%} packed",  # recorded to 4 digits
        f"{speed:.2f}x the padded run's tokens/s ({(1 - packed) / (1 - unpacked):.2f}x predicted",
        f"padding-free {r['tokens_per_s_padding_free'] / r['tokens_per_s_unpacked']:.2f}x",
        f"exact match {r['byod_exact_match_base']:.2f} -> {r['byod_exact_match_adapter']:.2f} "
        f"{interval(r['byod_exact_match_adapter_interval'])}",
        f"(majority {r['byod_exact_match_majority']:.2f})",
        *(
            f"{f.removeprefix('byod_').removesuffix('_accuracy')} {r[f + '_adapter']:.2f} "
            f"{interval(r[f + '_adapter_interval'])}"
            for f in fields
        ),
        f"(difference {r['harness_vs_course_mc_abs_diff']})",
        *(f"{who} {rate} {bounds}" for who, rate, bounds in mc_intervals()),
        f"{mc} ({r['harness_mc_acc_chance']:.2f})",
    ]


def chapter_10_claims(r: dict) -> list[str]:
    raising = r["dpo_sweep_settings_raising"]

    def pct(share: float) -> str:
        return f"{share * 100:.0f} %"

    return [
        f"exact match {r['exact_match_sft']:.3f} -> {r['exact_match_dpo']:.3f}",
        f"({r['urgency_high_sft']} -> {r['urgency_high_dpo']} of 200)",
        f"a sweep of {r['dpo_sweep_settings']} settings",
        "raised no label beyond SFT" if raising == 0 else f"{raising} settings raised a label",
        f"({pct(r['dpo_sweep_high_share_min'])} to {pct(r['dpo_sweep_high_share_max'])} of "
        f"answers, SFT {pct(r['dpo_sweep_high_share_sft'])})",
        f"GRPO's mean reward {r['grpo_reward_first_half']:.3f} -> {r['grpo_reward_last_half']:.3f}",
    ]


@pytest.mark.parametrize(
    "stem, claims",
    [
        ("08_two_gpus", chapter_08_claims),
        ("09_your_data", chapter_09_claims),
        ("10_preference", chapter_10_claims),
    ],
)
def test_readme_row_states_what_the_stored_run_recorded(stem, claims):
    values = recorded(stem)
    assert values, f"chapters/{stem}.ipynb: no 'recorded name = value' lines in its outputs"
    row = readme_row(stem[:2])
    missing = [claim for claim in claims(values) if claim not in row]
    assert not missing, (
        f"README.md's chapter {stem[:2]} row does not say what chapters/{stem}.ipynb recorded; "
        f"write these phrases from the run: {missing}"
    )


def test_chance_words_follow_the_recorded_verdicts():
    values, row = recorded("09_your_data"), readme_row("09")
    verdicts = {values["harness_mc_base_verdict"], values["harness_mc_lora_verdict"]}
    for word in ("below", "above"):
        if re.search(rf"\b{word} chance", row):
            assert word in verdicts, (
                f"README.md's chapter 09 row says '{word} chance' but the run's Wilson intervals "
                f"give {sorted(verdicts)}"
            )
    every_field = "every field's 95% interval above its majority rate"
    if every_field in row:
        out = outputs("09_your_data")
        above = re.search(r"fields whose interval lies above their majority rate: (.+)", out)
        named = {k for k in values if re.fullmatch(r"byod_\w+_accuracy_adapter", k)}
        said = [] if not above or above[1] == "none" else ast.literal_eval(above[1])
        assert {f"byod_{f}_adapter" for f in said} == named, (
            f"README.md says '{every_field}', but the run names {said} of {sorted(named)}"
        )
