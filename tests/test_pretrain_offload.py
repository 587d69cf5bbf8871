"""``measure_fsdp_step`` (chapter 11, section 4) trains as the plain model does on the CPU, and
refuses CPU offload where no GPU can pin host memory.

On the CPU, one gloo process, the sharded model's losses equal the plain model's: the chapter
shows them equal to the bit, the test allows 1e-6 (the same sums in the same order). The CUDA
path (peaks, offload) needs a GPU and is run by ``make gpu-check`` through chapter 11.
"""

from __future__ import annotations

import tempfile

import pytest
import torch
import torch.distributed as dist
from transformers import LlamaConfig

from helpers.llama import library as llama_library
from helpers.pretrain.offload import measure_fsdp_step

LR = 3e-3
CONFIG = LlamaConfig(vocab_size=101, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                     num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64,
                     tie_word_embeddings=False)  # fmt: skip


@pytest.fixture(scope="module")
def group():
    if dist.is_initialized():
        pytest.skip("a process group is already set up in this process")
    store = dist.FileStore(tempfile.mktemp(prefix="test-offload-"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def plain_losses(state, batch, steps):
    model = llama_library.build_llama(CONFIG, state).train()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.95))
    losses = []
    for _ in range(steps):
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def test_fully_shard_on_the_cpu_trains_as_the_plain_model(group):
    torch.manual_seed(0)
    state = llama_library.build_llama(CONFIG).state_dict()
    batch = torch.randint(CONFIG.vocab_size, (3, 17))
    got = measure_fsdp_step(
        lambda: llama_library.build_llama(CONFIG, state), batch, 3, False, "cpu", lr=LR
    )
    assert got.compute_device == "cpu"
    assert got.peak_allocated is None and got.peak_reserved is None
    assert got.seconds_per_step > 0
    want = plain_losses(state, batch, 3)
    assert want[2] < want[0]  # it learns
    torch.testing.assert_close(got.losses, want, rtol=0, atol=1e-6)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_offload_without_a_gpu_says_a_gpu_is_needed(group):
    batch = torch.randint(CONFIG.vocab_size, (2, 9))
    with pytest.raises(RuntimeError, match="needs a GPU"):
        measure_fsdp_step(lambda: llama_library.build_llama(CONFIG), batch, 1, True, "cpu")


def test_bad_steps_are_refused(group):
    with pytest.raises(ValueError, match="steps"):
        measure_fsdp_step(
            lambda: llama_library.build_llama(CONFIG),
            torch.zeros(1, 4, dtype=torch.long),
            0,
            False,
            "cpu",
        )
