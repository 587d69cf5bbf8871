"""Chapter 07's extras installed by the set-up cell on an image that lacks them, offline.

A scratch venv plays a Colab image: it sees this environment's packages (torch, transformers,
...) through a .pth file, except the deploy extra's (llm-compressor, compressed-tensors, gguf,
llama-cpp-python, loguru), which are hidden. ``prepare(root, extras=("deploy",))`` (the last line
of chapter 07's set-up cell) then runs with ``COLAB_RELEASE_TAG`` set and pip told to use a local
wheelhouse only (``PIP_NO_INDEX``, ``PIP_FIND_LINKS``). The fast tests use stand-in wheels that
carry the real names, versions and dependency declarations; the ``install`` test uses the real
wheels (``$COURSE_EXTRAS_WHEELHOUSE``, else downloaded first) and runs the GPTQ library twin.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

from helpers.notebook import LLAMA_CPP, NO_DEPS_EXTRAS, extra_packages
from helpers.paths import PACKAGE_DIR

COURSE = PACKAGE_DIR.parent
DEPLOY = {"gguf", "llama_cpp", "llama_cpp_python", "compressed_tensors", "llmcompressor", "loguru"}
RUN = """
import json, sys
from helpers.notebook import missing_extras, prepare
before = missing_extras("deploy")
prepare(sys.argv[1], extras=("deploy",))
import torch
print("RESULT", json.dumps({"before": sorted(before), "after": missing_extras("deploy"),
                            "torch": torch.__file__}))
"""


def colab_like_venv(tmp_path: Path, hidden: set[str]) -> Path:
    """A venv that sees this environment's packages but ``hidden`` ones; returns its python."""
    # "site-packages" in its path: dill (under datasets) pickles classes from elsewhere by value
    farm = tmp_path / "image" / "site-packages"
    farm.mkdir(parents=True)
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        top = entry.name.split("-")[0].split(".")[0].lower()
        if top in hidden or top.startswith(("__editable__", "budget_finetuning_course")):
            continue
        (farm / entry.name).symlink_to(entry)
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    site = next((env_dir / "lib").glob("python3*/site-packages"))
    for own in site.glob("setuptools*"):  # ensurepip's old setuptools would hide the image's
        shutil.rmtree(own)
    (site / "image.pth").write_text(f"{farm}\n")
    return env_dir / "bin" / "python"


def stand_in_wheel(dest: Path, name: str, version: str, requires=(), module: str = "") -> Path:
    """A minimal wheel with a real name, version and ``Requires-Dist`` lines, and one module."""
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    meta += "".join(f"Requires-Dist: {r}\n" for r in requires)
    if any("extra ==" in r for r in requires):
        meta += "Provides-Extra: server\n"
    files = {
        f"{module or dist}/__init__.py": "STAND_IN = True\n",
        f"{info}/METADATA": meta,
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{path},,\n" for path in [*files, f"{info}/RECORD"])
    path = dest / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for name_in, text in files.items():
            wheel.writestr(name_in, text)
    return path


def stand_in_wheelhouse(dest: Path) -> None:
    """The deploy extra's wheels but llama-cpp-python's, as stand-ins. llm-compressor declares
    what the real 0.14.0 declares that no wheelhouse here holds (auto-round, an older
    transformers): only ``--no-deps`` installs it."""
    dest.mkdir(parents=True, exist_ok=True)
    versions = {name: spec.split("==")[1] for name, spec, _ in extra_packages("deploy")}
    stand_in_wheel(dest, "gguf", versions["gguf"])
    stand_in_wheel(dest, "loguru", versions["loguru"])
    stand_in_wheel(dest, "compressed-tensors", versions["compressed-tensors"], ["loguru"])
    stand_in_wheel(
        dest,
        "llmcompressor",
        versions["llmcompressor"],
        ["auto-round>=0.14.1", "transformers<=5.17.0"],
    )


def run_prepare(python: Path, tmp_path: Path, wheelhouse: Path, cache: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COLAB", "KAGGLE", "PIP_"))}
    env |= {"COLAB_RELEASE_TAG": "release-colab-test", "PIP_NO_INDEX": "1"}
    env |= {"PIP_FIND_LINKS": str(wheelhouse), "COURSE_WHEELS": str(cache)}
    env |= {
        "PYTHONPATH": str(COURSE),
        "COURSE_TORCH_THREADS": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    done = subprocess.run(
        [str(python), "-c", RUN, str(COURSE)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    result = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
    return out, result


@pytest.mark.slow
def test_colab_without_llm_compressor_installs_the_deploy_extra_offline(tmp_path):
    python = colab_like_venv(tmp_path, DEPLOY)
    wheelhouse, cache = tmp_path / "wheelhouse", tmp_path / "wheel-cache"
    stand_in_wheelhouse(wheelhouse)
    cache.mkdir()
    stand_in_wheel(cache, "llama-cpp-python", LLAMA_CPP.split("==")[1], module="llama_cpp")
    out, result = run_prepare(python, tmp_path, wheelhouse, cache)
    assert result["before"] == [
        "compressed-tensors",
        "gguf",
        "llama-cpp-python",
        "llmcompressor",
        "loguru",
    ]
    assert result["after"] == {}, out
    assert "llama.cpp is already built" in out and "compiling" not in out  # the cache's wheel
    assert f"installed {NO_DEPS_EXTRAS['deploy'][0]}" in out
    # torch is the image's, not a new one in the venv
    assert str(tmp_path / "image" / "site-packages") in result["torch"]
    assert not list((tmp_path / "venv").glob("lib/python3*/site-packages/torch"))


@pytest.mark.slow
def test_a_failed_install_is_recorded_and_the_rest_is_installed(tmp_path):
    python = colab_like_venv(tmp_path, DEPLOY)
    wheelhouse, cache = tmp_path / "wheelhouse", tmp_path / "wheel-cache"
    stand_in_wheelhouse(wheelhouse)  # no llama-cpp-python anywhere: its compile cannot start
    out, result = run_prepare(python, tmp_path, wheelhouse, cache)
    assert list(result["after"]) == ["llama-cpp-python"], out
    why = result["after"]["llama-cpp-python"]
    assert (
        why.startswith(f"pip could not install {LLAMA_CPP}") and "No matching distribution" in why
    )
    assert "compiling llama.cpp (llama-cpp-python==0.3.36) once for this machine, about 10" in out
    assert "was not installed, the rest goes on" in out


@pytest.mark.install
def test_real_wheels_install_offline_and_the_gptq_library_twin_runs(tmp_path):
    wheelhouse = os.environ.get("COURSE_EXTRAS_WHEELHOUSE")
    specs = [spec for _, spec, _ in extra_packages("deploy") if "llama" not in spec]
    if not wheelhouse:  # what a workshop's wheelhouse holds, fetched before going offline
        wheelhouse = tmp_path / "wheelhouse"
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(wheelhouse)]
        subprocess.run([*cmd, *specs], check=True, timeout=600)
    built = sorted(
        Path.home().glob(".cache/budget-finetuning-course/wheels/llama_cpp_python-*.whl")
    )
    if not built:
        pytest.skip("no llama-cpp-python wheel built on this machine (make builds one)")
    cache = tmp_path / "wheel-cache"
    cache.mkdir()
    shutil.copy(built[-1], cache)
    python = colab_like_venv(tmp_path, DEPLOY)
    out, result = run_prepare(python, tmp_path, Path(wheelhouse), cache)
    assert result["after"] == {}, out
    check = (
        "import torch; from helpers.gptq import library, naive\n"
        "w, x = torch.randn(16, 64), torch.randn(256, 64)\n"
        "res = library.gptq_quantize(w, naive.hessian(x), group_size=32)\n"
        "print('GPTQ', naive.layer_rel_error(res.weight, w, x))"
    )
    env = {**os.environ, "PYTHONPATH": str(COURSE), "COURSE_TORCH_THREADS": "1"}
    done = subprocess.run([str(python), "-c", check], env=env, capture_output=True, text=True)
    assert done.returncode == 0 and "GPTQ" in done.stdout, done.stderr[-3000:]


def test_the_workshop_wheelhouse_holds_the_extras_and_llm_compressor_without_its_deps(tmp_path):
    from tools.workshop.wheels import COURSE_EXTRAS, prepare_wheelhouse, requirements

    reqs = requirements(list(COURSE_EXTRAS), False)
    for wanted in ("compressed-tensors", "gguf", "loguru", "trl", "trackio", "lm-eval"):
        assert any(r.startswith(wanted) for r in reqs), wanted
    assert not any(r.startswith("llama-cpp-python") for r in reqs)  # source only on PyPI
    calls = []

    def fake_pip(cmd):
        calls.append(cmd)
        if "--report" in cmd:
            asked = [a for a in cmd if "==" in a or ">=" in a]
            install = [
                {"metadata": {"name": a.split("==")[0], "version": a.split("==")[1]}}
                for a in asked
                if "==" in a and "[" not in a
            ]
            Path(cmd[cmd.index("--report") + 1]).write_text(json.dumps({"install": install}))
        else:
            out = Path(cmd[cmd.index("-d") + 1])
            for pin in [a for a in cmd if "==" in a]:
                name, version = pin.split("==")
                (out / f"{name.replace('-', '_')}-{version}-py3-none-any.whl").write_bytes(b"w")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    files = prepare_wheelhouse(tmp_path, "win_amd64", "3.11", COURSE_EXTRAS, run=fake_pip)
    no_deps = [c for c in calls if "--report" in c and "--no-deps" in c]
    assert len(no_deps) == 1 and NO_DEPS_EXTRAS["deploy"][0] in no_deps[0]
    assert any("llmcompressor-0.14.0" in f for f in files)


def test_the_set_up_cell_installs_what_make_installs():
    from helpers.notebook import LLAMA_CMAKE_ARGS

    makefile = (COURSE / "Makefile").read_text()
    assert f"LLAMA_CPP := {LLAMA_CPP}\n" in makefile
    assert f"LLAMA_CMAKE_ARGS := {LLAMA_CMAKE_ARGS}\n" in makefile
    assert f"LLMCOMPRESSOR := {NO_DEPS_EXTRAS['deploy'][0]}\n" in makefile
    assert "wheels" in makefile and ".cache/budget-finetuning-course/wheels" in makefile
