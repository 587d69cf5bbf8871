"""Checkers for the exercises of chapter 04 (gradient accumulation and the memory budget).

Each takes the learner's function and raises AssertionError with a hint when it is wrong.
"""

from __future__ import annotations

import math
import random

from helpers.memory import RunSpec, naive


def _window(rng: random.Random) -> tuple[list[float], list[int]]:
    """Summed losses and target counts of k micro-batches with k distinct counts.

    Distinct counts matter: with equal counts the mean of means equals the right answer, so the
    check could not tell them apart (and used to reject right answers when counts tied).
    """
    k = rng.randint(2, 5)
    counts = rng.sample(range(1, 201), k)  # without replacement: all different
    return [rng.uniform(0.5, 3.0) * c for c in counts], counts


def check_scaled_losses(fn, seed: int | None = None) -> None:
    """``fn(loss_sums, target_counts)`` must divide each summed loss by the window's count.

    Args:
        seed: the draws' seed (None: fresh draws each time, so no answer can be memorised).
    """
    rng = random.Random(seed)
    for _ in range(5):
        sums, counts = _window(rng)
        got = fn(list(sums), list(counts))
        assert len(got) == len(counts), (
            f"return one loss per micro-batch ({len(counts)}), got {len(got)}"
        )
        expected = [s / sum(counts) for s in sums]
        if all(math.isclose(float(g), e, rel_tol=1e-6) for g, e in zip(got, expected, strict=True)):
            continue  # right: checked first, so a right answer can never be called wrong
        mean_of_means = [s / c / len(counts) for s, c in zip(sums, counts, strict=True)]
        is_mean_of_means = all(
            math.isclose(float(g), m, rel_tol=1e-6) for g, m in zip(got, mean_of_means, strict=True)
        )
        assert not is_mean_of_means, (
            "that is the mean of means: divide by the window's token count instead"
        )
        raise AssertionError(
            "each micro-batch's summed loss / the number of target tokens in the whole window"
        )


def check_adamw_state_bytes(fn) -> None:
    """``fn(n, eight_bit)`` must give the bytes of AdamW's two moments."""
    for n in (100, 4095, 4096, 5000, 1_000_000):
        assert fn(n, False) == 8 * n, f"fp32 AdamW: two moments of 4 bytes for each of {n} values"
        expected = 8 * n if n < 4096 else 2 * n + 8 * math.ceil(n / 256)
        got = fn(n, True)
        if n < 4096:
            assert got == expected, (
                f"n={n}: bitsandbytes keeps fp32 moments for tensors under 4096 values "
                "(min_8bit_size)"
            )
        else:
            assert got == expected, (
                f"n={n}: two uint8 moments, plus one fp32 absmax per block of 256 for each"
            )


def check_largest_micro_batch(fn) -> None:
    """``fn(planner, shape, run, card_gib)`` must agree with ``naive.fits``."""
    cases = [
        ("Qwen2.5-0.5B", RunSpec("qlora", 1, 512, gradient_checkpointing=True), 4.0),
        ("Qwen2.5-1.5B", RunSpec("lora", 1, 1024), 15.0),
        ("Llama-3.1-8B", RunSpec("qlora", 1, 2048, gradient_checkpointing=True), 15.0),
        ("Llama-3.1-8B", RunSpec("full", 1, 512), 24.0),
    ]
    for name, run, card in cases:
        shape = naive.MODELS[name]
        expected = naive.fits(shape, run, card).largest_micro_batch
        got = fn(naive, shape, run, card)
        assert got == expected, (
            f"{name}, {run.method}, T={run.seq_len}, {card} GiB: expected {expected}, got {got}. "
            "The largest B whose planned peak is <= the card (0 when B=1 does not fit)."
        )
