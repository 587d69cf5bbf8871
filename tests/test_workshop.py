"""The workshop folder: models fetched from a local stand-in for the hub (no test reaches a
hub), checked file by file, loaded offline by hub id; the wheelhouse with a fake pip."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.paths import PACKAGE_DIR, TINY_MODEL_DIR
from helpers.profiles import PROFILES
from tools.workshop import MANIFEST, RemoteFile, check_folder
from tools.workshop.__main__ import main
from tools.workshop.model_files import repo_folder
from tools.workshop.wheels import WheelhouseError, prepare_wheelhouse, requirements

COURSE = PACKAGE_DIR.parent
SMALL = "Qwen/Qwen2.5-0.5B-Instruct"  # gpu-4gb's model id, served here by the tiny model
REVISION = PROFILES["gpu-4gb"].revision  # the commit the profile pins


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


class FolderSource:
    """A hub stand-in serving a local folder: large files as LFS (sha256), small ones as git
    blobs (sha1), as the hub lists them. ``corrupt``/``fail`` name files to spoil."""

    def __init__(self, folder: Path, corrupt=(), fail=()):
        self.folder, self.corrupt, self.fail, self.downloads = folder, set(corrupt), set(fail), []
        self.revisions = []

    def listing(self, repo_id, revision):
        self.revisions.append(revision)
        files = []
        for path in sorted(self.folder.iterdir()):
            data = path.read_bytes()
            lfs = path.suffix == ".safetensors"
            sha = hashlib.sha256(data).hexdigest() if lfs else None
            files.append(RemoteFile(path.name, len(data), sha, None if lfs else git_sha1(data)))
        return revision or REVISION, files

    def download(self, repo_id, revision, filename, staging):
        self.downloads.append(filename)
        if filename in self.fail:
            raise ConnectionError("connection reset by peer")
        staging.mkdir(parents=True, exist_ok=True)
        data = (self.folder / filename).read_bytes()
        if filename in self.corrupt:
            data = data[:-1] + bytes([data[-1] ^ 1])
        (staging / filename).write_bytes(data)
        return staging / filename


def prepare(dest, source, *extra):
    return main(["prepare", str(dest), "--profiles", "gpu-4gb,tiny", "--no-wheels", *extra], source)


def test_prepare_writes_verified_files_and_a_manifest_that_check_accepts(tmp_path, capsys):
    source = FolderSource(TINY_MODEL_DIR)
    assert prepare(tmp_path / "room", source) == 0
    snapshot = repo_folder(tmp_path / "room", SMALL) / "snapshots" / REVISION
    assert (snapshot / "model.safetensors").read_bytes() == (
        TINY_MODEL_DIR / "model.safetensors"
    ).read_bytes()
    assert "training_log.json" in source.downloads and "chat_template.jinja" in source.downloads
    assert source.revisions == [REVISION]  # listed at the profile's pinned commit
    assert (repo_folder(tmp_path / "room", SMALL) / "refs" / "main").read_text() == REVISION
    manifest = json.loads((tmp_path / "room" / MANIFEST).read_text())
    assert manifest["profiles"] == {SMALL: ["gpu-4gb"]}  # tiny ships with the course
    assert not (tmp_path / "room" / ".partial").exists()
    assert check_folder(tmp_path / "room", progress=False) == []
    assert main(["check", str(tmp_path / "room")]) == 0


def test_check_names_a_missing_and_a_corrupted_file(tmp_path, capsys):
    prepare(tmp_path, FolderSource(TINY_MODEL_DIR))
    snapshot = repo_folder(tmp_path, SMALL) / "snapshots" / REVISION
    (snapshot / "tokenizer.json").unlink()
    weights = snapshot / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[1000] ^= 0xFF  # same size, one byte flipped
    weights.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["check", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert (
        f"missing: hf/hub/models--Qwen--Qwen2.5-0.5B-Instruct/snapshots/{REVISION}/tokenizer.json"
        in out
    )
    assert "corrupt: hf/hub/" in out and "model.safetensors (sha256" in out
    assert "config.json" not in out  # an intact file is not reported


def test_check_without_a_manifest_says_prepare_did_not_finish(tmp_path):
    (problem,) = check_folder(tmp_path, progress=False)
    assert MANIFEST in problem and "prepare" in problem


def test_a_corrupted_download_is_refused_and_nothing_looks_complete(tmp_path, capsys):
    source = FolderSource(TINY_MODEL_DIR, corrupt={"model.safetensors"})
    assert prepare(tmp_path, source) == 1
    err = capsys.readouterr().err
    assert f"{SMALL}/model.safetensors: sha256" in err and "the hub says" in err
    snapshot = repo_folder(tmp_path, SMALL) / "snapshots" / REVISION
    assert not (snapshot / "model.safetensors").exists()
    assert not (repo_folder(tmp_path, SMALL) / "refs" / "main").exists()
    assert not (tmp_path / MANIFEST).exists()


def test_a_failed_download_names_repo_and_file_then_a_rerun_resumes(tmp_path, capsys):
    assert prepare(tmp_path, FolderSource(TINY_MODEL_DIR, fail={"tokenizer.json"})) == 1
    assert f"Could not fetch {SMALL}/tokenizer.json: ConnectionError" in capsys.readouterr().err
    assert not (tmp_path / MANIFEST).exists()
    assert not (repo_folder(tmp_path, SMALL) / "refs" / "main").exists()
    again = FolderSource(TINY_MODEL_DIR)
    assert prepare(tmp_path, again) == 0
    assert "model.safetensors" not in again.downloads  # verified earlier, kept
    assert "tokenizer.json" in again.downloads
    assert check_folder(tmp_path, progress=False) == []


def test_unknown_profile_is_refused_with_the_valid_names(tmp_path, capsys):
    assert (
        main(["prepare", str(tmp_path / "x"), "--profiles", "t5"], FolderSource(TINY_MODEL_DIR))
        == 1
    )
    assert "'t5'" in capsys.readouterr().err and not (tmp_path / "x").exists()


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "COURSE_MODEL"))}
    return env | {"COURSE_TORCH_THREADS": "1", "TQDM_DISABLE": "1"} | extra


def test_without_the_hub_prepare_names_each_model_and_writes_nothing(tmp_path):
    dest = tmp_path / "room"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tools.workshop",
            "prepare",
            str(dest),
            "--profiles",
            "t4,gpu-4gb",
        ],
        cwd=COURSE,
        env=_env(HF_HUB_OFFLINE="1"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "Qwen/Qwen2.5-1.5B-Instruct: could not list its files" in done.stderr
    assert "Qwen/Qwen2.5-0.5B-Instruct: could not list its files" in done.stderr
    assert "HF_HUB_OFFLINE is set" in done.stderr
    assert not dest.exists()


@pytest.mark.slow
def test_an_offline_run_loads_the_profile_model_by_hub_id_from_the_folder(tmp_path):
    prepare(tmp_path, FolderSource(TINY_MODEL_DIR))
    code = (
        "from transformers import AutoModelForCausalLM\n"
        "from helpers.models import load_tokenizer\n"
        "from helpers.profiles import get_profile\n"
        "p = get_profile('gpu-4gb')\n"
        "tok = load_tokenizer(p)\n"
        "model = AutoModelForCausalLM.from_pretrained(p.model_id)\n"
        "print(p.model_id, model.num_parameters(), len(tok))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=COURSE,
        env=_env(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    config = json.loads((TINY_MODEL_DIR / "config.json").read_text())
    assert done.stdout.split()[0] == SMALL
    assert int(done.stdout.split()[2]) == config["vocab_size"]


# The wheelhouse, with a fake pip that answers the dry run with a report and "downloads" wheels.
WHEELS = {
    "transformers": ("5.23.0", b"t" * 10),
    "torch": ("2.13.0", b"torch"),
    "nvidia-cublas-cu12": ("12.8.4", b"cublas"),
    "tqdm": ("4.67.1", b"q" * 3),
}


def fake_pip(calls, spoil=None, fail=None):
    def run(cmd):
        calls.append(cmd)
        if fail and fail in cmd:
            return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution\n")
        if "--report" in cmd:
            report = [
                {
                    "metadata": {"name": n, "version": v},
                    "download_info": {
                        "archive_info": {"hashes": {"sha256": hashlib.sha256(d).hexdigest()}}
                    },
                }
                for n, (v, d) in WHEELS.items()
            ]
            Path(cmd[cmd.index("--report") + 1]).write_text(json.dumps({"install": report}))
        else:
            out = Path(cmd[cmd.index("-d") + 1])
            for pin in [a for a in cmd if "==" in a]:
                name, version = pin.split("==")
                data = WHEELS[name][1] + (b"!" if name == spoil else b"")
                (out / f"{name.replace('-', '_')}-{version}-py3-none-any.whl").write_bytes(data)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    return run


def test_wheelhouse_targets_the_platform_and_leaves_torch_out(tmp_path):
    calls = []
    files = prepare_wheelhouse(tmp_path, "win_amd64", "3.11", run=fake_pip(calls))
    resolve, download = calls
    assert "win_amd64" in resolve and "--only-binary=:all:" in resolve and "3.11" in resolve
    assert not any(a.startswith("torch") for a in resolve)  # not asked for
    pins = [a for a in download if "==" in a]
    assert pins == ["transformers==5.23.0", "tqdm==4.67.1"] and "--no-deps" in download
    assert sorted(Path(f).name for f in files) == [
        "tqdm-4.67.1-py3-none-any.whl",
        "transformers-5.23.0-py3-none-any.whl",
    ]
    assert all(f.startswith("wheels/win_amd64-py3.11/") for f in files)
    assert "jupyterlab>=4.0" in requirements(["lab"], False) and not any(
        r.startswith("torch") for r in requirements(["lab"], False)
    )


def test_wheelhouse_with_torch_downloads_it(tmp_path):
    calls = []
    files = prepare_wheelhouse(
        tmp_path, "manylinux_2_28_x86_64", "3.12", with_torch=True, run=fake_pip(calls)
    )
    assert any("torch-2.13.0" in f for f in files) and any("nvidia_cublas" in f for f in files)


def test_wheelhouse_refuses_a_wheel_whose_sha256_differs(tmp_path):
    with pytest.raises(WheelhouseError, match="tqdm-4.67.1-py3-none-any.whl: sha256"):
        prepare_wheelhouse(tmp_path, "win_amd64", "3.11", run=fake_pip([], spoil="tqdm"))
    assert not (tmp_path / "wheels").exists()


def test_wheelhouse_says_why_pip_failed_and_an_unknown_extra_is_named(tmp_path):
    with pytest.raises(WheelhouseError, match="No matching distribution"):
        prepare_wheelhouse(tmp_path, "win_amd64", "3.11", run=fake_pip([], fail="--report"))
    with pytest.raises(ValueError, match="'gpu'"):
        requirements(["gpu"], False)


def test_prepare_with_wheels_lists_them_in_the_manifest(tmp_path, capsys):
    args = ["prepare", str(tmp_path), "--profiles", "tiny", "--platform", "win_amd64"]
    assert (
        main(args + ["--python-version", "3.11"], FolderSource(TINY_MODEL_DIR), fake_pip([])) == 0
    )
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest["wheelhouses"] == ["win_amd64-py3.11"]
    assert "wheels/win_amd64-py3.11/tqdm-4.67.1-py3-none-any.whl" in manifest["files"]
    assert any("--find-links" in line for line in manifest["usage"])
    shutil.rmtree(tmp_path / "wheels")
    assert main(["check", str(tmp_path)]) == 1


def test_a_room_platform_names_every_manylinux_tag_pip_must_accept():
    from tools.workshop.wheels import target_flags

    flags = target_flags("linux-x86_64", "3.11")
    # pip takes tags literally: most wheels are manylinux_2_17 even when the room has glibc 2.28+
    assert "manylinux_2_17_x86_64" in flags and "manylinux_2_28_x86_64" in flags
    assert flags.count("--platform") == len([f for f in flags if f.startswith("manylinux")])
    assert target_flags("win_amd64,win32", None)[1:5] == [
        "--platform",
        "win_amd64",
        "--platform",
        "win32",
    ]


# The check verifies exactly the manifest. A tamperer who edits the manifest can also recompute
# its own sha256, so each case below reseals it: only the rule under test can catch it.
def _reseal(folder: Path, edit) -> None:
    path = folder / MANIFEST
    manifest = json.loads(path.read_text())
    edit(manifest)
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    manifest["manifest_sha256"] = hashlib.sha256(text.encode("utf-8")).hexdigest()
    path.write_text(json.dumps(manifest, indent=2))


def _listing(path: Path) -> dict:
    return {"size": path.stat().st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


@pytest.fixture
def room(tmp_path) -> Path:
    """A prepared folder with a model and a wheelhouse, which check accepts."""
    args = ["prepare", str(tmp_path / "room"), "--profiles", "gpu-4gb", "--platform", "win_amd64"]
    source = FolderSource(TINY_MODEL_DIR)
    assert main(args + ["--python-version", "3.11"], source, fake_pip([])) == 0
    assert check_folder(tmp_path / "room", progress=False) == []
    return tmp_path / "room"


def _outside_secret(room: Path) -> tuple[str, Path]:
    secret = room.parent / "outside-secret.txt"
    secret.write_text("not for the room")
    return "../outside-secret.txt", secret


def _etc_hostname(room: Path) -> tuple[str, Path]:
    hostname = Path("/etc/hostname")
    if not hostname.is_file():
        pytest.skip("this machine has no /etc/hostname")
    return "/etc/hostname", hostname


def _unlisted_wheel(room: Path) -> str:
    wheel = room / "wheels" / "win_amd64-py3.11" / "helpful-1.0-py3-none-any.whl"
    wheel.write_bytes(b"a room would install this")
    return "unlisted: wheels/win_amd64-py3.11/helpful-1.0-py3-none-any.whl"


def _emptied(room: Path) -> str:
    _reseal(room, lambda m: m.update(files={}))
    return "empty: workshop-manifest.json lists no files"


def _outside_path(make):
    def tamper(room: Path) -> str:
        rel, target = make(room)
        _reseal(room, lambda m: m["files"].update({rel: _listing(target)}))
        return f"refused: {rel!r} is not a path inside the folder; nothing read"

    return tamper


@pytest.mark.parametrize(
    "tamper",
    [_outside_path(_outside_secret), _outside_path(_etc_hostname), _unlisted_wheel, _emptied],
    ids=["../outside-secret.txt", "/etc/hostname", "unlisted wheel", "emptied file list"],
)
def test_check_refuses_each_tampered_folder(room, tamper, capsys):
    expected = tamper(room)
    capsys.readouterr()
    assert main(["check", str(room)]) == 1
    assert expected in capsys.readouterr().out


def test_a_link_that_leads_out_of_the_folder_is_refused_unread(room):
    _, secret = _outside_secret(room)
    config = next(room.glob("hf/hub/*/snapshots/*/config.json"))
    config.unlink()
    config.symlink_to(secret)
    rel = config.relative_to(room).as_posix()
    _reseal(room, lambda m: m["files"].update({rel: _listing(secret)}))
    problems = check_folder(room, progress=False)
    assert f"refused: {rel} leads outside the folder (a link); nothing read" in problems


def test_sizes_and_hashes_are_numbers_and_hex(room):
    wheel = "wheels/win_amd64-py3.11/tqdm-4.67.1-py3-none-any.whl"

    def edit(manifest):
        manifest["files"][wheel]["size"] = str(manifest["files"][wheel]["size"])
        config = next(k for k in manifest["files"] if k.endswith("config.json"))
        manifest["files"][config]["sha256"] = manifest["files"][config]["sha256"].upper()

    _reseal(room, edit)
    problems = check_folder(room, progress=False)
    assert any(p.startswith(f"manifest: {wheel}: size '") for p in problems), problems
    assert any("config.json: sha256 '" in p and "not 64 hex digits" in p for p in problems)


def test_a_manifest_edited_by_hand_is_named(room):
    path = room / MANIFEST
    manifest = json.loads(path.read_text())
    manifest["usage"].append("pip install something-else")
    path.write_text(json.dumps(manifest))
    (problem,) = check_folder(room, progress=False)
    assert problem.startswith(f"edited: {MANIFEST} was changed after prepare wrote it")
