# Two entry points, used by the README quickstart and by CI:
#   make demo   install into .venv and run the offline demo on the shipped reference model
#   make test   install into .venv (with dev extras) and run the test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
EXTRAS ?= dev,distributed,otlp

.PHONY: install demo test clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Without a GPU, take the CPU build of torch that lies on this disk (fast) instead of a multi-GB CUDA build.
install: $(BIN)/python
	@if ! command -v nvidia-smi >/dev/null 2>&1 && ! $(BIN)/python -c "import torch" 2>/dev/null; then \
		$(BIN)/python -m pip install -q torch==2.13.0; fi
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"

demo: install
	$(BIN)/guardrail demo

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info
