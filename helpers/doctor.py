"""Check a machine for the course: ``python -m helpers.doctor [--json] [--profile NAME]``.

Prints versions, platform, device, the profile ``auto`` picks and why, warnings that say what
to do, and a self-test on the shipped tiny model (forward and backward, a 4-bit load through
bitsandbytes, one LoRA step through peft). Exits non-zero when anything fails, so an instructor
can run it on every machine in the room before a workshop.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from helpers.hardware import Hardware, detect
from helpers.paths import PACKAGE_DIR, missing_data
from helpers.profiles import (
    Profile,
    UnsupportedHardwareError,
    get_profile,
    missing_kernels_advice,
    resolve_profile,
)

PACKAGES = (
    "torch",
    "transformers",
    "peft",
    "bitsandbytes",
    "accelerate",
    "datasets",
    "safetensors",
    "tokenizers",
    "papermill",
    "nbval",
)


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def warnings_for(hw: Hardware) -> list[str]:
    """Advice for this machine, each saying what to do."""
    out = []
    if hw.device == "cuda" and not hw.torch_supports_gpu:
        out.append(missing_kernels_advice(hw))
    if hw.gpu_count > 1:
        names = sorted(set(hw.gpu_names or (hw.gpu_name,)))
        kind = f"{names[0]}s" if len(names) == 1 else "GPUs (" + ", ".join(names) + ")"
        out.append(
            f"Found {hw.gpu_count} {kind}: the profiles train on the first; chapter 08 "
            "(two GPUs) uses both."
        )
    if hw.device == "cuda" and not hw.tensor_cores:
        out.append(
            f"The {hw.gpu_name} ({hw.sm}) has no tensor cores: fp16 runs on its CUDA cores, so "
            "steps are slower than on a T4; bitsandbytes' LLM.int8 needs compute capability "
            "7.5, so chapters skip the 8-bit path (4-bit NF4 runs)."
        )
    if hw.device == "cuda" and not hw.bf16_native:
        out.append(
            f"The {hw.gpu_name} has no native bf16: train in fp16 with loss scaling "
            "(the t4 profile does); bf16 here would be emulated and slow."
        )
    if hw.device == "cpu":
        out.append(
            "No CUDA GPU: chapters run the tiny profile on the CPU (seconds each). "
            "On Colab pick Runtime > Change runtime type > T4 GPU for the real models."
        )
    if hw.platform == "colab":
        out.append("Colab can disconnect: point chapter 03's CHECKPOINT_DIR at Google Drive.")
    return out


def data_problem() -> str | None:
    """Say what is missing when the course's data/ is incomplete (None when it is complete)."""
    missing = missing_data()
    if not missing:
        return None
    names = ", ".join(str(p) for p in missing)
    return (
        f"The course's data is missing ({names}): helpers was imported from {PACKAGE_DIR}, which "
        "has no data/ beside it. Run from a clone of the course (git clone, then pip install -e "
        ". in it), install it with pip install . from a clone, or set COURSE_ROOT to a clone."
    )


WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def local_model_problem(folder: str | os.PathLike) -> str | None:
    """What is missing from a local model folder (None when it has a config and weights).

    Args:
        folder: a folder such as ``COURSE_MODEL_DIR`` points at (a shape twin, a snapshot).
    Returns:
        A sentence naming the missing piece and what to do, or None.
    """
    path = Path(folder).expanduser()
    if not path.is_dir():
        return f"the folder {path} does not exist"
    if not (path / "config.json").is_file():
        return f"{path} has no config.json"
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        return f"{path} has no weights ({' or '.join(WEIGHT_FILES)})"
    return None


def _is_folder_id(model_id: str) -> bool:
    """A model id that names a local folder (an absolute or ./ path, or an existing folder)."""
    return (
        os.path.isabs(os.path.expanduser(model_id))
        or model_id.startswith(".")
        or (Path(model_id).is_dir())
    )


def _model_reachable(profile: Profile) -> bool:
    """Whether the profile's model can be read here: shipped, a complete local folder, cached,
    or the hub allowed."""
    if profile.is_local:
        return True
    if _is_folder_id(profile.model_id):  # COURSE_MODEL_DIR: a folder, never a hub id
        return local_model_problem(profile.model_id) is None
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("1", "true", "True", "YES", "yes"):
        return True
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(profile.model_id, "config.json"), str)


def profile_problems(profile: Profile, hw: Hardware) -> list[str]:
    """Why a profile cannot run on this hardware (empty when it can), each saying what to do."""
    out = []
    if profile.min_gpu_memory_gb > 0 and hw.device != "cuda":
        out.append(
            f"Profile {profile.name!r} needs a CUDA GPU with {profile.min_gpu_memory_gb:g} GiB; "
            "this machine has none. Use PROFILE='auto' (tiny on a CPU)."
        )
    elif profile.min_gpu_memory_gb > hw.total_memory_gb and hw.device == "cuda":
        out.append(
            f"Profile {profile.name!r} needs {profile.min_gpu_memory_gb:g} GiB of GPU memory; "
            f"the {hw.gpu_name} has {hw.total_memory_gb:.1f}. Use PROFILE='auto'."
        )
    if profile.compute_dtype == "bfloat16" and hw.device == "cuda" and not hw.bf16_native:
        out.append(
            f"Profile {profile.name!r} computes in bf16, which the {hw.gpu_name} only emulates. "
            "Use PROFILE='auto' (fp16 here)."
        )
    if _is_folder_id(profile.model_id) and not profile.is_local:
        problem = local_model_problem(profile.model_id)
        if problem:
            out.append(
                f"Profile {profile.name!r} loads the local folder {profile.model_id} "
                f"(COURSE_MODEL_DIR), but {problem}. Point COURSE_MODEL_DIR at a folder with "
                "config.json and the weights (python -m helpers.shapes build <profile> makes "
                "one), or unset it to load the profile's hub model."
            )
    elif not _model_reachable(profile):
        out.append(
            f"Profile {profile.name!r} loads {profile.model_id}, which is not in the local cache, "
            "and HF_HUB_OFFLINE is set. Download it first, or use PROFILE='tiny'."
        )
    return out


def _self_test_steps() -> list[tuple[str, Callable[[], None]]]:
    from peft import LoraConfig, get_peft_model

    from helpers.models import load_model

    tiny = get_profile("tiny")

    def encode(model, tok, text: str):
        """The text's ids on the model's device (the GPU when load_model put it there)."""
        return tok([text], return_tensors="pt").to(next(model.parameters()).device)

    def forward_backward():
        model, tok = load_model(tiny)
        batch = encode(model, tok, "The parcel arrived two days early.")
        model(**batch, labels=batch["input_ids"]).loss.backward()

    def four_bit_load():
        model, tok = load_model(tiny, load_in_4bit=True)
        batch = encode(model, tok, "The invoice shows a fee.")
        with torch.no_grad():
            assert torch.isfinite(model(**batch).logits).all(), "non-finite 4-bit logits"

    def lora_step():
        model, tok = load_model(tiny)
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"]))
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        batch = encode(model, tok, "I returned the kettle.")
        model(**batch, labels=batch["input_ids"]).loss.backward()
        opt.step()

    return [
        ("tiny model forward + backward", forward_backward),
        ("4-bit load through bitsandbytes", four_bit_load),
        ("LoRA step through peft", lora_step),
    ]


def self_test() -> list[dict]:
    """Run the self-test steps; each result says what failed and why."""
    problem = data_problem()
    if problem:  # every step loads the tiny model: name the cause once, not three tracebacks
        return [{"check": "course data present", "ok": False, "seconds": 0.0, "detail": problem}]
    results = []
    for name, step in _self_test_steps():
        start = time.perf_counter()
        try:
            with warnings.catch_warnings():  # library deprecation notices are not findings
                warnings.simplefilter("ignore")
                step()
            ok, detail = True, ""
        except Exception as err:  # noqa: BLE001 - every failure is reported, none is fatal
            ok, detail = False, f"{type(err).__name__}: {err}"
        results.append(
            {
                "check": name,
                "ok": ok,
                "seconds": round(time.perf_counter() - start, 2),
                "detail": detail,
            }
        )
    return results


def diagnose(profile_name: str = "auto") -> dict:
    """Check this machine against a profile (``auto``: the one it would pick).

    Returns:
        A report dict: versions, hardware, warnings, profile and reason, profile problems,
        self-test results, and ``ok``.
    """
    hw = detect()
    report = {"versions": versions(), "hardware": hw.to_dict(), "warnings": warnings_for(hw)}
    report["problems"] = []
    try:
        profile, why = resolve_profile(profile_name, hw=hw)
        report["profile"], report["profile_reason"] = profile.name, why
        report["problems"] = profile_problems(profile, hw)
    except (UnsupportedHardwareError, ValueError) as err:
        report["profile"], report["profile_reason"] = None, str(err)
    report["self_test"] = self_test()
    report["ok"] = (
        report["profile"] is not None
        and not report["problems"]
        and all(t["ok"] for t in report["self_test"])
    )
    return report


def print_report(report: dict) -> None:
    hw = report["hardware"]
    print("Course doctor")
    print("  versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()))
    gpu = f"{hw['gpu_name']} ({hw['sm']}), " if hw["device"] == "cuda" else ""
    print(
        f"  platform: {hw['platform']}; device: {hw['device']}; {gpu}"
        f"memory {hw['total_memory_gb']:.1f} GiB; bf16 native: {hw['bf16_native']}"
    )
    print(f"  profile: {report['profile']} ({report['profile_reason']})")
    for text in report["warnings"]:
        print(f"  note: {text}")
    for text in report.get("problems", []):
        print(f"  PROBLEM: {text}")
    for t in report["self_test"]:
        mark = "ok  " if t["ok"] else "FAIL"
        print(f"  [{mark}] {t['check']} ({t['seconds']} s) {t['detail']}")
    print("All checks passed." if report["ok"] else "Some checks failed: see above.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.doctor", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--profile", default="auto", help="profile to check (default: auto)")
    args = parser.parse_args(argv)
    report = diagnose(args.profile)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
