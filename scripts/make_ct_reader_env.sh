#!/usr/bin/env bash
# Build (once) the separate "reader" environment used by tests/test_export_interop.py: the last
# compressed-tensors release that still reads sparse-24-bitmask checkpoints (0.14.0.1) with a transformers
# old enough to drive it (<= 4.57.6). It must never share a venv with sau-compress itself, whose
# compressed-tensors 0.19 has no sparse compressors.
#
# Usage: scripts/make_ct_reader_env.sh [VENV_DIR]
#   VENV_DIR defaults to $(sau_compress.io.cache_dir())/ct-reader-venv, i.e. $SAU_COMPRESS_CACHE,
#   $XDG_CACHE_HOME/sau-compress or ~/.cache/sau-compress. PYTHON picks the base interpreter (default python3).
# Prints the reader's python path on its last line. Idempotent: a finished venv carries a stamp file and
# is reused; a half-built one (no stamp) is rebuilt. torch is pinned (never an unpinned torch download).
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/_isolated_venv.sh"
VENV="$(isolated_venv_dir ct-reader-venv "${1:-}")"
REQS=(torch==2.13.0 compressed-tensors==0.14.0.1 "transformers<=4.57.6" psutil accelerate)
STAMP="$VENV/.sau-compress-reader-ok"
WANT="${REQS[*]}"

isolated_venv_begin "$VENV" "$STAMP" "$WANT" || exit 0
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${REQS[@]}" >&2
"$VENV/bin/python" - >&2 <<'PY'
import compressed_tensors, torch, transformers
from compressed_tensors.compressors import Sparse24BitMaskCompressor  # the reader we need
print("reader env:", "torch", torch.__version__, "compressed-tensors", compressed_tensors.__version__,
      "transformers", transformers.__version__)
PY
isolated_venv_end "$VENV" "$STAMP" "$WANT"
