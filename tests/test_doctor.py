"""The doctor exits 0 on a CPU machine naming the tiny profile, and says what to do on a P100."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helpers import doctor
from helpers.hardware import Hardware


def _quiet(monkeypatch, hw, hub=True):
    """Fake the hardware, skip the self-test; ``hub``: the profile's model can be reached."""
    monkeypatch.setattr(doctor, "detect", lambda: hw)
    monkeypatch.setattr(doctor, "self_test", lambda: [])
    if hub:
        monkeypatch.setattr(doctor, "_model_reachable", lambda profile: True)


def test_doctor_passes_on_this_cpu_and_names_tiny():
    out = subprocess.run(
        [sys.executable, "-m", "helpers.doctor", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    if report["hardware"]["device"] == "cpu":
        assert report["profile"] == "tiny"
    assert [t["ok"] for t in report["self_test"]] == [True, True, True]
    assert {"torch", "bitsandbytes", "peft"} <= set(report["versions"])


def test_doctor_fails_on_a_p100_without_kernels_and_says_switch_to_t4(monkeypatch, capsys):
    p100 = Hardware(
        device="cuda",
        gpu_name="Tesla P100-PCIE-16GB",
        capability=(6, 0),
        total_memory_gb=15.9,
        arch_list=("sm_70", "sm_75", "sm_80"),
    )
    monkeypatch.setattr(doctor, "detect", lambda: p100)
    monkeypatch.setattr(doctor, "self_test", lambda: [])
    assert doctor.main([]) == 1
    text = capsys.readouterr().out
    assert "T4 x2" in text and "sm_60" in text and "Some checks failed" in text


def test_doctor_warns_fp16_on_a_t4(monkeypatch):
    t4 = Hardware(device="cuda", gpu_name="Tesla T4", capability=(7, 5), total_memory_gb=14.7)
    _quiet(monkeypatch, t4)
    report = doctor.diagnose()
    assert report["profile"] == "t4" and report["ok"]
    assert any("fp16" in w and "bf16" in w for w in report["warnings"])


def test_doctor_offers_the_p100_fix_and_names_the_missing_int8(monkeypatch, capsys):
    p100 = Hardware(
        device="cuda",
        gpu_name="Tesla P100-PCIE-16GB",
        capability=(6, 0),
        total_memory_gb=15.9,
        arch_list=("sm_70", "sm_75", "sm_80"),
        gpu_count=1,
        torch_version="2.11.0",
    )
    _quiet(monkeypatch, p100)
    assert doctor.main([]) == 1
    text = capsys.readouterr().out
    assert "P100_FIX = True" in text and "torch==2.11.0 --index-url" in text and "cu126" in text
    assert "no tensor cores" in text and "LLM.int8 needs compute capability 7.5" in text


def test_doctor_says_two_t4s_were_found_and_which_chapter_uses_both(monkeypatch):
    t4x2 = Hardware(
        device="cuda",
        gpu_name="Tesla T4",
        capability=(7, 5),
        total_memory_gb=14.7,
        gpu_count=2,
        gpu_names=("Tesla T4", "Tesla T4"),
    )
    _quiet(monkeypatch, t4x2)
    report = doctor.diagnose()
    assert report["profile"] == "t4" and report["ok"]
    assert any("Found 2 Tesla T4s" in w and "chapter 08" in w for w in report["warnings"])
    one_t4 = Hardware(device="cuda", gpu_name="Tesla T4", capability=(7, 5), total_memory_gb=14.7)
    _quiet(monkeypatch, one_t4)
    assert not any("chapter 08" in w for w in doctor.diagnose()["warnings"])


def test_doctor_judges_a_named_profile_against_the_hardware(monkeypatch, capsys):
    _quiet(monkeypatch, Hardware(device="cpu", total_memory_gb=24), hub=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert doctor.main(["--profile", "t4"]) == 1
    text = capsys.readouterr().out
    assert "needs a CUDA GPU with 12 GiB; this machine has none" in text
    assert "not in the local cache" in text
    assert doctor.main(["--profile", "tiny"]) == 0
    small = Hardware(device="cuda", gpu_name="GTX 1650", capability=(7, 5), total_memory_gb=3.8)
    _quiet(monkeypatch, small)
    report = doctor.diagnose("gpu-bf16")
    assert not report["ok"] and any("12 GiB of GPU memory" in p for p in report["problems"])
    assert any("only emulates" in p for p in report["problems"])


def test_doctor_names_missing_data_as_the_cause(monkeypatch, tmp_path):
    monkeypatch.setattr(doctor, "missing_data", lambda: [tmp_path / "data" / "tiny-llama"])
    results = doctor.self_test()
    assert [r["ok"] for r in results] == [False]
    assert "course's data is missing" in results[0]["detail"]
    assert "COURSE_ROOT" in results[0]["detail"] and "PROFILE" not in results[0]["detail"]


def test_loading_the_tiny_model_without_data_names_the_missing_files(monkeypatch, tmp_path):
    from helpers import models
    from helpers.profiles import get_profile

    monkeypatch.setattr(models, "TINY_MODEL_DIR", tmp_path / "data" / "tiny-llama")
    profile = get_profile("tiny", model_id=str(tmp_path / "data" / "tiny-llama"))
    monkeypatch.setattr(type(profile), "is_local", property(lambda self: True))
    with pytest.raises(models.ModelUnavailableError) as err:
        models.load_model(profile)
    assert "tiny model" in str(err.value) and "COURSE_ROOT" in str(err.value)
    assert "Repo id" not in str(err.value)


def test_doctor_checks_a_course_model_dir_as_a_folder_not_a_hub_id(monkeypatch, tmp_path):
    """COURSE_MODEL_DIR (a shape twin) is read from disk: offline, a complete folder is fine;
    a folder without weights is named as such, with what to do."""
    t4 = Hardware(device="cuda", gpu_name="Tesla T4", capability=(7, 5), total_memory_gb=14.7)
    _quiet(monkeypatch, t4, hub=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    twin = tmp_path / "twin"
    twin.mkdir()
    (twin / "config.json").write_text("{}")
    monkeypatch.setenv("COURSE_MODEL_DIR", str(twin))
    report = doctor.diagnose("t4")
    assert any("has no weights" in p and "COURSE_MODEL_DIR" in p for p in report["problems"])
    (twin / "model.safetensors").write_bytes(b"")
    report = doctor.diagnose("t4")
    assert report["problems"] == [] and report["ok"], report["problems"]
    monkeypatch.setenv("COURSE_MODEL_DIR", str(tmp_path / "gone"))
    report = doctor.diagnose("t4")
    assert any("does not exist" in p for p in report["problems"])
