"""The per-rank planner: what each ZeRO stage and offload shards, and its bad-input errors."""

import math

import pytest

from helpers.distributed import plan
from helpers.memory import RunSpec
from helpers.memory import naive as mem_naive

SHAPE = mem_naive.MODELS["Qwen2.5-1.5B"]
RUN = RunSpec("full", 1, 512, gradient_checkpointing=True)


@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_each_stage_shards_what_zero_says(world):
    whole = mem_naive.training_memory(SHAPE, RUN)
    none, z1, z2, z3 = (plan.per_rank_memory(SHAPE, RUN, world, s) for s in plan.STAGES)
    assert (none.weights, none.gradients, none.optimizer) == (
        whole.weights, whole.gradients, whole.optimizer,
    )  # fmt: skip
    assert z1.optimizer == math.ceil(whole.optimizer / world) and z1.gradients == whole.gradients
    assert z2.gradients == math.ceil(whole.gradients / world) and z2.weights == whole.weights
    assert z3.weights == math.ceil(whole.weights / world)
    assert none.activations == z3.activations == whole.activations  # each rank's own batch
    if world > 1:
        assert none.model_states > z1.model_states > z2.model_states > z3.model_states


def test_offload_moves_states_to_host():
    z3 = plan.per_rank_memory(SHAPE, RUN, 2, "zero3")
    opt = plan.per_rank_memory(SHAPE, RUN, 2, "zero3", "optimizer")
    everything = plan.per_rank_memory(SHAPE, RUN, 2, "zero3", "all")
    assert opt.optimizer == opt.gradients == 0 and opt.host == z3.gradients + z3.optimizer
    assert everything.weights == 0 and everything.host == z3.model_states
    assert everything.peak < opt.peak < z3.peak


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"world_size": 0}, "world_size"),
        ({"world_size": 2.0}, "world_size"),
        ({"world_size": 2, "stage": "zero4"}, "stage"),
        ({"world_size": 2, "offload": "disk"}, "offload"),
        ({"world_size": 2, "offload": "optimizer"}, "needs a ZeRO stage"),
        ({"world_size": 2, "stage": "zero2", "offload": "all"}, "zero3"),
    ],
)
def test_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        plan.per_rank_memory(SHAPE, RUN, **kwargs)
