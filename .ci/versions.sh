#!/usr/bin/env bash
# Run the unit tests and two chapters with the course's dependencies at one version set:
#   .ci/versions.sh lowest|latest|colab [more sets]
# Each set gets its own venv under build/venvs/ with torch 2.13.0 (CPU, from local disk) and
# the rest at the versions .ci/<set>.txt pins (lowest: exactly pyproject's lower bounds;
# latest: the newest). uv resolves and installs (pip's resolver took 9 minutes on a busy
# machine); the course itself is used from this checkout through PYTHONPATH.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# A fast subset that touches every library: model loads (4-bit too), the tokenizer's form, the
# NF4 and LoRA parity tests, profiles, and no removed `load_in_4bit=` argument.
TESTS=${VERSION_TESTS:-tests/test_core.py tests/test_tiny_tokenizer.py tests/test_quantization.py \
  tests/test_lora.py tests/test_hardware_profiles.py tests/test_no_load_in_4bit_argument.py}
CHAPTERS=${VERSION_CHAPTERS:-00_setup 01_quantization}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TQDM_DISABLE=1
export HF_HUB_DISABLE_PROGRESS_BARS=1 OMP_NUM_THREADS=1
export UV_FIND_LINKS=${UV_FIND_LINKS:-${PIP_FIND_LINKS:-}}
failed=""
why=""
tools=build/venvs/tools
test -x $tools/bin/uv || { $PYTHON -m venv $tools && $tools/bin/pip install -q uv; }
# repo2docker writes Binder's Dockerfile without docker: `make versions` then runs
# tests/test_repo2docker.py with it.
test -x $tools/bin/jupyter-repo2docker ||
  $tools/bin/uv pip install -q --python $tools/bin/python jupyter-repo2docker
for set in "$@"; do
  start=$(date +%s)
  venv=build/venvs/$set
  unset PYTHONPATH
  test -x $venv/bin/python || $PYTHON -m venv $venv
  $venv/bin/python -c "import torch" 2>/dev/null || $venv/bin/pip install -q torch==2.13.0
  $tools/bin/uv pip install -q --python $venv/bin/python --index-strategy unsafe-best-match \
    -c ".ci/$set.txt" -r pyproject.toml --extra test
  installed=$(( $(date +%s) - start ))
  # First line of the set's log: what it installed that the lock (make test's set) does not.
  diff=$($venv/bin/python .ci/lock_diff.py requirements.lock "$set")
  echo "$diff"
  export PYTHONPATH=$PWD  # the course from this checkout (not before pip: it would see it)
  $venv/bin/python -m helpers.doctor --json > build/venvs/$set-doctor.json || true
  $venv/bin/python - <<'PY'
import importlib.metadata as m
print("versions:", ", ".join(f"{p} {m.version(p)}" for p in
      ["torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets", "ipywidgets"]))
PY
  COURSE_RESULTS=build/venvs/$set-results.json $venv/bin/python -m pytest -q -p no:cacheprovider \
    -m "not slow" $TESTS || { failed="$failed $set:tests"; why="$why\n$diff"; }
  for chapter in $CHAPTERS; do
    if COURSE_BUILD_DIR=build/venvs/$set-out $venv/bin/python -m papermill -k python3 \
      --cwd chapters --no-progress-bar -p PROFILE tiny chapters/$chapter.ipynb \
      build/venvs/$set-$chapter.ipynb > build/venvs/$set-$chapter.log 2>&1; then
      echo "versions $set: chapter $chapter ran"
    else
      failed="$failed $set:$chapter"; why="$why\n$diff"; tail -5 build/venvs/$set-$chapter.log
    fi
  done
  echo "versions $set: install ${installed} s, all $(( $(date +%s) - start )) s"
done
# A failure's report starts with the versions that differ from the lock: the likely cause.
test -z "$failed" || { printf '%b\n' "${why#\\n}" | sort -u; echo "versions: failed:$failed"; exit 1; }
