# The course's commands. Each creates .venv and installs the course into it when missing.
#   make course [PROFILE=auto|tiny|t4|...]   run every chapter into build/ and print the table
#   make test                                the whole test suite (what CI runs)
#   make lab                                 JupyterLab on the course, chapters/ in view
#   make doctor [PROFILE=...]                check this machine (against a profile)
#   make site                                the course website in build/site (stored outputs)
#   make site-check                          the site in headless Chromium (apt-get install chromium)
#   make versions                            tests + two chapters at the lowest and newest
#                                            versions pyproject.toml allows (venvs in build/)
#   make gpu-check [JOBS=t4:01,...]          on a CUDA machine: every chapter on the GPU profiles
#                                            it claims, capped at each card's budget, into
#                                            data/gpu/measured.json and README's table
PYTHON ?= python3
# The torch wheel to install when .venv has none (CI machines have 2.13.0's CPU build on disk).
TORCH_VERSION := 2.13.0
TORCH ?= torch==$(TORCH_VERSION)
LOCK := requirements.lock
LOCK_EXTRAS := test deploy sft harness site
PROFILE ?= auto
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.course-installed
# llama-cpp-python compiles llama.cpp (chapter 07). Portable flags: no -march=native, AVX2 on
# (every x86-64 CPU of the last decade; CI's has it). Built once per machine into $(WHEELS), a
# cache outside the clone (a fresh clone on the same machine reuses it; about 10 CPU-minutes
# to build); delete the folder to rebuild.
LLAMA_CPP := llama-cpp-python==0.3.36
WHEELS ?= $(HOME)/.cache/budget-finetuning-course/wheels
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
LLMCOMPRESSOR := llmcompressor==0.14.0
# Tests must never reach a hub; progress bars would only clutter the logs.
TEST_ENV := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TQDM_DISABLE=1 \
	HF_HUB_DISABLE_PROGRESS_BARS=1 COURSE_RESULTS=build/test-results.json \
	COURSE_MEMGUARD=build/test-memguard.json

# Jupyter refuses to run as root unless told; containers and CI machines often are root.
ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)

.PHONY: course test lab doctor lint clean versions gpu-check

# Everything but torch, llama-cpp-python (built here) and llm-compressor is installed from $(LOCK):
# the exact versions, with their hashes, that the course last passed `make test` with. `make
# lock` writes it anew (then run `make test` before committing it).
$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH)"
	ls $(WHEELS)/llama_cpp_python-0.3.36-*.whl >/dev/null 2>&1 || CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" \
		CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(BIN)/pip wheel -q --no-deps -w $(WHEELS) "$(LLAMA_CPP)"
	$(BIN)/pip install -q --require-hashes --no-deps -r $(LOCK)
	$(BIN)/pip install -q --no-deps --find-links $(WHEELS) "$(LLAMA_CPP)" "$(LLMCOMPRESSOR)"
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

# The lock: pyproject.toml's dependencies and extras resolved for CI's platform (Python 3.11,
# Linux x86-64) against torch's CPU build, with hashes. torch and llama-cpp-python are left out
# (installed as above). Needs the package index; the CPU torch comes from $$PIP_FIND_LINKS where
# set (CI machines keep it on disk), else from PyTorch's CPU index.
LOCK_TORCH_SOURCE ?= $(if $(PIP_FIND_LINKS),--find-links $(PIP_FIND_LINKS),\
	--extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match)
.PHONY: lock
lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	test -x $(BIN)/uv || $(BIN)/pip install -q uv
	echo "torch==$(TORCH_VERSION)+cpu" > build-lock-torch.txt
	$(BIN)/uv pip compile -q pyproject.toml $(addprefix --extra ,$(LOCK_EXTRAS)) \
		--python-version 3.11 --python-platform x86_64-manylinux_2_28 $(LOCK_TORCH_SOURCE) \
		-c build-lock-torch.txt --no-emit-package torch --no-emit-package llama-cpp-python \
		--generate-hashes --no-header -o $(LOCK).new; status=$$?; rm -f build-lock-torch.txt; \
		test $$status = 0 || { rm -f $(LOCK).new; exit $$status; }
	{ echo "# make lock: the versions make test installs (Python 3.11, Linux x86-64, torch $(TORCH_VERSION)"; \
	  echo "# CPU build installed separately; llama-cpp-python built by make). Written $$(date -u +%F)."; \
	  cat $(LOCK).new; } > $(LOCK) && rm $(LOCK).new

# MODEL=build/shapes/t4 runs a GPU profile on a local model, e.g. a shape twin.
course: $(STAMP)
	$(if $(MODEL),COURSE_MODEL_DIR=$(MODEL)) $(BIN)/python -m tools.course run --profile $(PROFILE)

test: $(STAMP)
	rm -rf build/test-notebooks build/test-results.json
	$(BIN)/python -m tools.course prepare build/test-notebooks --profile tiny
	$(TEST_ENV) $(BIN)/python -m pytest -p no:cacheprovider -m "not install" tests build/test-notebooks \
		--nbval-lax --nbval-current-env --nbval-cell-timeout=600 \
		--nbval-sanitize-with tests/nbval_sanitize.cfg
	$(TEST_ENV) $(BIN)/python -m tools.memory_guard check

# Each chapter's predicted GPU peak on every profile, from the tiny run `make test` recorded.
.PHONY: memory
memory: $(STAMP)
	$(BIN)/python -m tools.memory_guard table build/test-memguard.json

lint: $(STAMP)
	$(BIN)/ruff check helpers tools solutions tests data chapters
	$(BIN)/ruff format --check helpers tools solutions tests data

lab: $(STAMP)
	$(BIN)/python -c "import jupyterlab" 2>/dev/null || $(BIN)/pip install -q -e ".[lab]"
	$(BIN)/jupyter lab --ServerApp.ip=127.0.0.1 --ServerApp.root_dir=. \
		--LabApp.default_url=/lab/tree/chapters $(ALLOW_ROOT)

doctor: $(STAMP)
	$(BIN)/python -m helpers.doctor --profile $(PROFILE)

versions: $(STAMP)
	.ci/versions.sh lowest latest
	REPO2DOCKER=$(CURDIR)/build/venvs/tools/bin/jupyter-repo2docker $(TEST_ENV) \
		$(BIN)/python -m pytest -p no:cacheprovider -q -m install tests

clean:
	rm -rf build

# Workshops (README "Running a workshop"): a room's models and wheels into one folder, checked.
#   make workshop-prepare DIR=/media/usb/course PROFILES=t4,gpu-4gb [PLATFORM=win_amd64]
#       [PYTHON_VERSION=3.11] [WITH_TORCH=1]
#   make workshop-check DIR=...     every file of the folder's manifest present, sha256 equal
#   make timetable                  measured chapter times per platform ("not measured" if none)
#   make workbook                   regenerate workbook/ from chapters/
.PHONY: workshop-prepare workshop-check timetable workbook
workshop-prepare: $(STAMP)
	$(if $(DIR),,$(error DIR=... is required))
	$(BIN)/python -m tools.workshop prepare "$(DIR)" --profiles "$(or $(PROFILES),t4)" \
		$(if $(PLATFORM),--platform $(PLATFORM)) $(if $(PYTHON_VERSION),--python-version $(PYTHON_VERSION)) \
		$(if $(WITH_TORCH),--with-torch)

workshop-check: $(STAMP)
	$(if $(DIR),,$(error DIR=... is required))
	$(BIN)/python -m tools.workshop check "$(DIR)"

timetable: $(STAMP)
	$(BIN)/python -m tools.workshop timetable

workbook: $(STAMP)
	$(BIN)/python -m tools.workbook sync

# The course website from the chapters' stored outputs (never executed): build/site/index.html.
.PHONY: site site-check
site: $(STAMP)
	$(BIN)/python -m tools.website build build/site

# The site in the system's headless Chromium: console errors, plots, links, badges.
site-check: site
	COURSE_SITE_DIR=build/site $(TEST_ENV) $(BIN)/python -m pytest -p no:cacheprovider -q tests/test_site.py

# Needs no venv and no stamp: a GPU machine with torch, transformers, peft, bitsandbytes,
# papermill and ipykernel runs it with its own python (GPU_PYTHON). Exit 2: no CUDA GPU.
GPU_PYTHON ?= python3
GPU_TIMEOUT ?= 400
gpu-check:
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TQDM_DISABLE=1 \
		HF_HUB_DISABLE_PROGRESS_BARS=1 PYTHONUNBUFFERED=1 \
		$(GPU_PYTHON) -m tools.gpucheck run --benchmark --timeout $(GPU_TIMEOUT) \
		$(if $(JOBS),--jobs "$(JOBS)"); rc=$$?; \
		if [ $$rc -le 1 ]; then $(GPU_PYTHON) -m tools.gpucheck readme; fi; exit $$rc
