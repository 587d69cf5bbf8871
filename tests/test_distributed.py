"""Data parallelism on 2 CPU processes (gloo): the naive DDP, accelerate's DDP and FSDP2 give
the single-process full-batch gradient; the planner's bytes per rank match FSDP2's; launches
always end, with a clear error, when a rank fails or hangs."""

import time

import pytest
import torch
from transformers import AutoConfig

from helpers.accumulation import naive as acc_naive
from helpers.distributed import library, naive, plan
from helpers.distributed.job import (
    build_model,
    join_batches,
    parity_tolerance,
    rel_diff,
    task_job,
    trainable_state,
)
from helpers.distributed.launch import launch
from helpers.memory import ModelShape, RunSpec
from helpers.profiles import resolve_profile

WORLD = 2
STEPS = 2


@pytest.fixture(scope="module")
def runs():
    """One job, run by the three multi-process twins and by a single process."""
    torch.set_num_threads(1)
    profile = resolve_profile("tiny", micro_batch_size=4)[0]
    job = task_job(profile, WORLD, grad_accum_steps=1, steps=STEPS, seed=3)
    out = {
        "job": job,
        "naive": launch(naive.worker, WORLD, (job,), timeout_s=120),
        "accelerate": launch(library.worker, WORLD, (job,), timeout_s=120, init_group=False),
        "fsdp": launch(library.fsdp_worker, WORLD, (job,), timeout_s=120),
    }
    model = build_model(job, seed=job.seed)
    out["reference"] = acc_naive.full_batch_gradients(model, join_batches(job.grad_window, 0))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=job.lr)
    acc_naive.train(model, job.train_windows, lr=job.lr, optimizer=optimizer)
    out["single"] = trainable_state(model)
    return out


@pytest.mark.parametrize("twin", ["naive", "accelerate"])
def test_ddp_gradient_equals_the_full_batch(runs, twin):
    results = runs[twin]
    assert [r["world_size"] for r in results] == [WORLD, WORLD]
    for r in results:
        assert rel_diff(r["grads_global"], runs["reference"]) < parity_tolerance("float32").grads
        # each rank's own mean, averaged: the ranks hold different target counts
        assert rel_diff(r["grads_local"], runs["reference"]) > 1e-2


def test_broadcast_makes_the_ranks_start_equal(runs):
    for twin in ("naive", "accelerate"):
        r0, r1 = runs[twin]
        assert r0["changed_by_broadcast"] == 0.0 and r1["changed_by_broadcast"] > 0.0
        assert all(torch.equal(r0["start"][k], r1["start"][k]) for k in r0["start"])


def test_naive_equals_accelerate(runs):
    naive_grads = runs["naive"][0]["grads_global"]
    assert rel_diff(runs["accelerate"][0]["grads_global"], naive_grads) < 1e-6


@pytest.mark.parametrize("twin", ["naive", "accelerate"])
def test_after_steps_ranks_identical_and_equal_to_one_process(runs, twin):
    r0, r1 = runs[twin]
    assert all(torch.equal(r0["params"][k], r1["params"][k]) for k in r0["params"])
    # AdamW divides by each gradient's RMS, so 1e-7 rounding differences grow
    assert rel_diff(r0["params"], runs["single"]) < parity_tolerance("float32").steps


def _expected_states(config, job, world: int, stage: str) -> dict[str, int]:
    """Bytes of weights, gradients and AdamW state per rank, worked out by hand from a Llama
    config, apart from the planner: fp32 base weights; LoRA's A (r x in) and B (out x r) in
    fp32 on each targeted projection; AdamW's two fp32 moments and a 4-byte step per adapter
    tensor; ZeRO's shares ceil(bytes / N) (ZeRO-1: optimizer; ZeRO-3: all three)."""
    h, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    q, kv = (
        config.num_attention_heads * config.head_dim,
        config.num_key_value_heads * config.head_dim,
    )
    shapes = {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
              "gate_proj": (h, inter), "up_proj": (h, inter), "down_proj": (inter, h)}  # fmt: skip
    base = layers * (sum(i * o for i, o in shapes.values()) + 2 * h) + h  # + 2 RMSNorms each
    base += config.vocab_size * h * (1 if config.tie_word_embeddings else 2)  # embed, lm_head
    lora = layers * sum(job.lora_r * sum(shapes[m]) for m in job.target_modules)
    tensors = layers * 2 * len(job.target_modules)
    whole = {
        "weights": 4 * (base + lora),
        "gradients": 4 * lora,
        "optimizer": 8 * lora + 4 * tensors,
    }
    sharded = {"none": (), "zero1": ("optimizer",), "zero3": ("weights", "gradients", "optimizer")}
    return {k: -(-v // world) if k in sharded[stage] else v for k, v in whole.items()}


def test_fsdp_gradient_and_bytes_per_rank(runs):
    """The planner equals bytes worked out by hand, and the bytes the runs hold (counted by
    tensor size and by the storages behind them) equal the planner's, to the AdamW step
    counters (4 bytes a tensor: FSDP2 keeps every tensor's counter on every rank)."""
    job, fsdp = runs["job"], runs["fsdp"]
    assert rel_diff(fsdp[0]["grads"], runs["reference"]) < parity_tolerance("float32").grads
    config = AutoConfig.from_pretrained(job.model_dir)
    shape = ModelShape.from_config(config)
    micro = job.grad_window[0]["input_ids"].shape
    run = RunSpec("lora", micro[0], micro[1], "float32", lora_r=job.lora_r,
                  target_modules=job.target_modules)  # fmt: skip
    accel = runs["accelerate"][0]
    zero1 = {**accel["bytes"], "optimizer": accel["zero1_optimizer_bytes"]}
    steps = 4 * config.num_hidden_layers * 2 * len(job.target_modules)  # one counter a tensor
    held = {"zero3": fsdp[0], "none": runs["naive"][0]}
    for stage, got_bytes in (("zero3", fsdp[0]["bytes"]), ("none", runs["naive"][0]["bytes"]),
                             ("zero1", zero1)):  # fmt: skip
        planned = plan.per_rank_memory(shape, run, WORLD, stage, device="cpu")
        expected = _expected_states(config, job, WORLD, stage)
        for name in ("weights", "gradients", "optimizer"):
            assert getattr(planned, name) == expected[name], (stage, name)
            assert abs(getattr(planned, name) - got_bytes[name]) <= steps, (stage, name)
            if stage in held:  # the storages: padding and shared buffers show here
                storage = held[stage]["storage_bytes"][name]
                assert got_bytes[name] <= storage <= got_bytes[name] * 1.01, (stage, name)
        assert held.get(stage, {"allocated": None})["allocated"] is None  # no CUDA allocator
    ddp, sharded = sum(runs["naive"][0]["bytes"].values()), sum(fsdp[0]["bytes"].values())
    assert abs(sharded / ddp - 1 / WORLD) < 0.02


def _fails_on_rank_1(rank, world_size):
    if rank == 1:
        raise ValueError("rank 1 broke on purpose")
    return {"rank": rank}


def _hangs_on_rank_1(rank, world_size):
    if rank == 1:
        time.sleep(120)
    return {"rank": rank}


def test_a_failing_rank_is_named():
    with pytest.raises(RuntimeError, match="rank 1 failed"):
        launch(_fails_on_rank_1, 2, timeout_s=60, init_group=False)


def test_a_hanging_launch_is_killed():
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=r"ranks \[1\]"):
        launch(_hangs_on_rank_1, 2, timeout_s=3, init_group=False)
    assert time.monotonic() - start < 30


def test_launch_rejects_bad_arguments():
    with pytest.raises(ValueError, match="world_size"):
        launch(_fails_on_rank_1, 0)
    with pytest.raises(ValueError, match="timeout_s"):
        launch(_fails_on_rank_1, 2, timeout_s=0)
    with pytest.raises(ValueError, match="rank 2"):
        naive.shard([1, 2, 3], 2, 2)


@pytest.mark.slow
def test_accelerate_launch_script_runs_two_ranks(runs, tmp_path):
    """``accelerate launch --multi_gpu --num_processes 2`` on a CPU: two gloo ranks that
    compute what the in-process accelerate twin computed (a fresh Python each: slow)."""
    from pathlib import Path

    from helpers.distributed.launch import accelerate_launch, free_port

    torch.save(runs["job"].to_dict(), tmp_path / "job.pt")
    script = Path(__file__).parents[1] / "helpers" / "distributed" / "accelerate_script.py"
    flags = ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
             "no", "--dynamo_backend", "no", "--main_process_port", str(free_port())]  # fmt: skip
    args = ["--job", str(tmp_path / "job.pt"), "--out", str(tmp_path)]
    accelerate_launch(str(script), args, flags, timeout_s=300)
    from helpers.distributed.accelerate_script import read_records

    assert read_records(tmp_path) == [{"rank": r, "world_size": 2} for r in range(2)]
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    expected = runs["accelerate"][0]
    for r in results:
        assert rel_diff(r["grads_global"], expected["grads_global"]) < 1e-6
        assert all(torch.equal(r["params"][k], expected["params"][k]) for k in r["params"])


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_16_bit_tolerance_covers_the_reordering_spread_and_not_the_shortcut(dtype):
    """In one process, in the dtype: the window micro-batch by micro-batch differs from the full
    batch by less than the tolerance (the spread it rests on), and the mean of means (the
    shortcut) by more than 10x it, so a check at this tolerance still tells them apart."""
    torch.set_num_threads(1)
    profile = resolve_profile("tiny", micro_batch_size=4)[0]
    job = task_job(profile, WORLD, grad_accum_steps=2, steps=1, seed=0)
    job.compute_dtype = dtype
    tol = parity_tolerance(dtype)
    model = build_model(job, seed=job.seed)
    reference = acc_naive.full_batch_gradients(model, join_batches(job.grad_window, 0))
    spread = rel_diff(acc_naive.window_gradients(model, job.grad_window), reference)
    shortcut = rel_diff(acc_naive.mean_of_means_gradients(model, job.grad_window), reference)
    assert spread < tol.grads and shortcut > 10 * tol.grads, (spread, shortcut)


def test_parity_tolerance_rejects_an_unknown_dtype():
    with pytest.raises(ValueError, match="float16"):
        parity_tolerance("int8")


def _who(rank, world_size):
    import torch.distributed as dist

    return {"rank": rank, "world_size": dist.get_world_size()}


def test_launch_spawns_once_cuda_is_initialised(monkeypatch):
    """After the kernel has initialised CUDA (chapter 08's reference on the GPU), a fork could not
    use it: launch then spawns fresh interpreters. Faked here by reporting CUDA initialised."""
    import torch.multiprocessing as mp

    from helpers.distributed import launch as launch_module

    methods = []
    real = mp.start_processes

    def recording(*args, **kwargs):
        methods.append(kwargs["start_method"])
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(launch_module.mp, "start_processes", recording)
    results = launch(_who, 2, timeout_s=120, backend="gloo")
    assert methods == ["spawn"] and results == [{"rank": r, "world_size": 2} for r in range(2)]
