"""Profiles chosen from faked machines: T4, P100 with and without sm_60 kernels, A100, CPU."""

from __future__ import annotations

import dataclasses

import pytest

from helpers.hardware import Hardware, detect, detect_platform
from helpers.profiles import PROFILES, UnsupportedHardwareError, get_profile, resolve_profile

BUILD_WITHOUT_SM60 = ("sm_70", "sm_75", "sm_80", "sm_86", "sm_90")
T4 = Hardware(
    device="cuda",
    gpu_name="Tesla T4",
    capability=(7, 5),
    total_memory_gb=14.7,
    bf16_native=False,
    arch_list=BUILD_WITHOUT_SM60,
)
A100 = Hardware(
    device="cuda",
    gpu_name="NVIDIA A100-SXM4-40GB",
    capability=(8, 0),
    total_memory_gb=39.4,
    bf16_native=True,
    arch_list=BUILD_WITHOUT_SM60,
)
GTX1650 = Hardware(
    device="cuda",
    gpu_name="GeForce GTX 1650",
    capability=(7, 5),
    total_memory_gb=3.8,
    arch_list=BUILD_WITHOUT_SM60,
)


def p100(arch_list):
    return Hardware(
        device="cuda",
        gpu_name="Tesla P100-PCIE-16GB",
        capability=(6, 0),
        total_memory_gb=15.9,
        arch_list=arch_list,
        gpu_count=1,
        torch_version="2.11.0",
    )


def test_cpu_gets_tiny():
    profile, why = resolve_profile("auto", hw=Hardware(device="cpu"))
    assert profile.name == "tiny" and "CPU" in why
    assert profile.compute_dtype == "float32"


def test_t4_gets_fp16_never_bf16():
    profile, why = resolve_profile("auto", hw=T4)
    assert profile.name == "t4" and profile.compute_dtype == "float16" and profile.load_in_4bit
    assert "no native bf16" in why


def test_a100_gets_bf16():
    assert resolve_profile("auto", hw=A100)[0].compute_dtype == "bfloat16"


def test_small_card_gets_small_profile():
    profile, _ = resolve_profile("auto", hw=GTX1650)
    assert profile.name == "gpu-4gb" and profile.gradient_checkpointing


def test_p100_without_sm60_kernels_offers_the_cu126_fix():
    hw = p100(BUILD_WITHOUT_SM60)
    assert not hw.torch_supports_gpu
    assert hw.fix_command == (
        "pip install --force-reinstall --no-deps torch==2.11.0 "
        "--index-url https://download.pytorch.org/whl/cu126"
    )
    with pytest.raises(UnsupportedHardwareError) as err:
        resolve_profile("auto", hw=hw)
    text = str(err.value)
    assert "sm_60" in text and "T4 x2" in text and "P100_FIX = True" in text
    assert hw.fix_command in text and "restart" in text


def test_p100_with_sm60_or_ptx_kernels_gets_the_p100_profile():
    assert p100(("sm_60", "sm_70")).torch_supports_gpu
    assert p100(("sm_70", "compute_50")).torch_supports_gpu  # PTX compiles forward
    assert p100(("sm_60",)).fix_command == ""  # nothing to fix
    profile, why = resolve_profile("auto", hw=p100(("sm_60",)))
    assert profile.name == "p100" and profile.compute_dtype == "float16"
    assert profile.load_in_4bit and "no tensor cores" in why


def test_int8_and_tensor_core_flags_follow_compute_capability():
    hw = p100(("sm_60",))
    assert not hw.tensor_cores and not hw.int8_matmul  # LLM.int8 needs 7.5
    assert T4.tensor_cores and T4.int8_matmul and A100.int8_matmul
    volta = Hardware(device="cuda", gpu_name="V100", capability=(7, 0), total_memory_gb=16)
    assert volta.tensor_cores and not volta.int8_matmul
    assert Hardware(device="cpu").int8_matmul and not Hardware(device="cpu").tensor_cores


def test_two_t4s_are_counted_and_profiles_stay_on_one():
    t4x2 = Hardware(**{**dataclasses.asdict(T4), "gpu_count": 2, "gpu_names": ("Tesla T4",) * 2})
    assert t4x2.gpu_count == 2
    assert resolve_profile("auto", hw=t4x2)[0].name == "t4"


def test_unknown_profile_lists_the_valid_ones():
    with pytest.raises(ValueError) as err:
        get_profile("t5")
    for name in ["auto", *PROFILES]:
        assert name in str(err.value)


def test_overrides_replace_fields_and_reject_typos():
    assert get_profile("tiny", max_steps=5, lr=None).max_steps == 5
    with pytest.raises(ValueError, match="max_step"):
        get_profile("tiny", max_step=5)


def test_every_gpu_profile_computes_in_half_precision_on_a_4bit_base():
    for profile in PROFILES.values():
        if profile.name != "tiny":
            assert profile.load_in_4bit and profile.compute_dtype in ("float16", "bfloat16")


def test_platform_detection():
    assert detect_platform({"COLAB_RELEASE_TAG": "x"}) == "colab"
    assert detect_platform({"KAGGLE_KERNEL_RUN_TYPE": "Interactive"}) == "kaggle"
    assert detect_platform({"BINDER_SERVICE_HOST": "1.2.3.4"}) == "binder"
    assert detect_platform({"CI": "true"}) == "ci"
    assert detect_platform({}) == "local"


def test_detect_reads_this_machine():
    hw = detect()
    assert hw.device in ("cpu", "cuda") and hw.cpu_count >= 1 and hw.total_memory_gb > 0
    assert hw.gpu_count == len(hw.gpu_names) and hw.torch_version
