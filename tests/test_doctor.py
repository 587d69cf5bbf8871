"""The doctor exits 0 on a CPU machine naming the tiny profile, and says what to do on a P100."""

from __future__ import annotations

import json
import subprocess
import sys

from helpers import doctor
from helpers.hardware import Hardware


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
    monkeypatch.setattr(doctor, "detect", lambda: t4)
    monkeypatch.setattr(doctor, "self_test", lambda: [])
    report = doctor.diagnose()
    assert report["profile"] == "t4" and report["ok"]
    assert any("fp16" in w and "bf16" in w for w in report["warnings"])
