"""Chapter 09's solutions pass their checkers, and plausible wrong answers fail them."""

import pytest
import torch

from helpers.exercises import ExerciseFailed, check
from helpers.exercises import ch09_your_data as checkers
from solutions import ch09_your_data as solutions


def test_solutions_pass():
    assert check("labels", solutions.completion_labels, checkers.check_completion_labels)
    assert check("mask", solutions.block_causal_mask, checkers.check_block_causal_mask)
    assert check("settings", solutions.TRL_MATCHING_SETTINGS, checkers.check_trl_matching_settings)


def test_stub_is_not_attempted():
    def stub(*args):
        raise NotImplementedError

    assert check("labels", stub, checkers.check_completion_labels) is False


def _trains_on_prompt(prompt, completion, eos):
    ids = prompt + completion + [eos]
    return ids, list(ids)


def _forgets_eos(prompt, completion, eos):
    return prompt + completion, [-100] * len(prompt) + completion


def _eos_not_learned(prompt, completion, eos):
    return prompt + completion + [eos], [-100] * len(prompt) + completion + [-100]


def _plain_causal(lengths, length):
    return torch.ones(length, length, dtype=torch.bool).tril()


def _not_causal(lengths, length):
    segment = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    segment = torch.cat([segment, torch.full((length - len(segment),), -1)])
    return segment[:, None] == segment[None, :]


def _padding_joins_last_example(lengths, length):
    segment = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    segment = torch.cat([segment, torch.full((length - len(segment),), len(lengths) - 1)])
    return (segment[:, None] == segment[None, :]) & torch.ones(length, length).bool().tril()


def _padding_sees_nothing(lengths, length):
    mask = solutions.block_causal_mask(lengths, length)
    mask[sum(lengths) :] = False
    return mask


def _real_tokens_see_padding(lengths, length):
    mask = solutions.block_causal_mask(lengths, length)
    mask[: sum(lengths), sum(lengths) :] = True
    return mask


def _first_example_leaks(lengths, length):
    mask = solutions.block_causal_mask(lengths, length)
    if len(lengths) > 1:  # the second example's first token sees the first example
        mask[lengths[0], : lengths[0]] = True
    return mask


@pytest.mark.parametrize("wrong", [_trains_on_prompt, _forgets_eos, _eos_not_learned])
def test_wrong_labels_fail(wrong):
    with pytest.raises(ExerciseFailed):
        check("labels", wrong, checkers.check_completion_labels)


@pytest.mark.parametrize(
    "wrong", [_plain_causal, _not_causal, _real_tokens_see_padding, _first_example_leaks]
)
def test_wrong_masks_fail(wrong):
    with pytest.raises(ExerciseFailed):
        check("mask", wrong, checkers.check_block_causal_mask)


@pytest.mark.parametrize("convention", [_padding_joins_last_example, _padding_sees_nothing])
def test_every_padding_convention_passes(convention):
    """The exercise leaves the padding rows free (its text says so): each convention passes."""
    assert check("mask", convention, checkers.check_block_causal_mask)


@pytest.mark.parametrize(
    "change",
    [
        {"lr_scheduler_type": "linear"},
        {"weight_decay": 0.0},
        {"bf16": True},
        {"train_sampling_strategy": "random"},
    ],
)
def test_wrong_settings_fail(change):
    with pytest.raises(ExerciseFailed):
        check(
            "settings",
            solutions.TRL_MATCHING_SETTINGS | change,
            checkers.check_trl_matching_settings,
        )
    missing = dict(solutions.TRL_MATCHING_SETTINGS)
    missing.pop(next(iter(change)))
    with pytest.raises(ExerciseFailed):
        check("settings", missing, checkers.check_trl_matching_settings)


@pytest.mark.parametrize(
    "extra",
    [
        {"packing": True, "learning_rate": 1.0},  # issue 27's named wrong answer
        {"packing": True},
        {"learning_rate": 1.0},
        {"completion_only_loss": False},
        {"warmup_steps": 10},
    ],
)
def test_settings_that_change_training_fail(extra):
    with pytest.raises(ExerciseFailed):
        check(
            "settings",
            solutions.TRL_MATCHING_SETTINGS | extra,
            checkers.check_trl_matching_settings,
        )


def test_explicit_defaults_beside_the_four_pass():
    answer = solutions.TRL_MATCHING_SETTINGS | {"completion_only_loss": True, "packing": False}
    assert check("settings", answer, checkers.check_trl_matching_settings)
    assert len(solutions.TRL_MATCHING_SETTINGS) == 4  # the exercise's text says four


def test_the_chapter_states_the_number_of_settings_the_checker_asks_for():
    """Exercise 3's text and section 2's prose name as many settings as the checker wants."""
    import re

    import nbformat

    from helpers.paths import CHAPTERS_DIR

    words = {"three": 3, "four": 4, "five": 5, "six": 6}
    cells = nbformat.read(CHAPTERS_DIR / "09_your_data.ipynb", as_version=4).cells
    prose = " ".join(" ".join(c.source.split()) for c in cells if c.cell_type == "markdown")
    exercise = re.search(r"\*\*3\.\*\* Which `SFTConfig` fields.*?(\w+) are checked", prose)
    section = re.search(r"(\w+) of `SFTConfig`'s defaults must change", prose)
    assert exercise and section, "chapter 09: exercise 3 or section 2 no longer counts settings"
    stated = {words.get(m.group(1).lower()) for m in (exercise, section)}
    missing = dict(solutions.TRL_MATCHING_SETTINGS)
    missing.popitem()
    with pytest.raises(ExerciseFailed):  # the checker wants every one of them
        check("settings", missing, checkers.check_trl_matching_settings)
    assert stated == {len(solutions.TRL_MATCHING_SETTINGS)}, (
        f"chapter 09 says {exercise.group(1)!r} (exercise 3) and {section.group(1)!r} (section 2); "
        f"the checker asks for {len(solutions.TRL_MATCHING_SETTINGS)}"
    )
