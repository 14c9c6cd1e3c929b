# Two entry points, used by the README quickstart and by CI:
#   make demo   install into .venv and run the offline demo on the shipped reference model
#   make test   install into .venv (with dev extras) and run the test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
EXTRAS ?= dev,distributed,otlp,serve

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

# ---------------------------------------------------------------------------------------------
# Shipped artifacts, in dependency order: model -> proxy -> calibration -> demo.
# When an upstream artifact changes, rebuild the downstream ones (`make artifacts` does all three).
# World seeds: 4017/4018 train the model (--seed 4), 999/1000 its monitoring, 4242 the choice between
# model runs, 101/102 the proxy (104 its development split), 103 the calibration, 2026 the demo,
# 7 the acceptance evaluation, 31337 the model's documented figures; no split is reused.
RUN := runs
FASTRM := $(BIN)/fastrm
SHAPES := $(BIN)/shapesvqa

.PHONY: reference-model reference-proxy reference-calibration artifacts

reference-model: install
	$(BIN)/python -m shapesvqa.train --run $(RUN)/reference --seed 4 --ship

reference-proxy: install
	$(SHAPES) export --n 24000 --seed 101 --out $(RUN)/data/proxy-train
	$(FASTRM) distill build --data $(RUN)/data/proxy-train/data.jsonl --out $(RUN)/proxy-dataset \
		--model shapesvqa/assets/reference-llava --max-new-tokens 6 --backend ray --workers 2 --overwrite
	$(FASTRM) distill train --data $(RUN)/proxy-dataset --out shapesvqa/assets/reference-proxy \
		--lr 2e-3 --steps 40000 --lr-schedule cosine --batch-size 128 --seed 0 --pos-weight 1.5 --select f1
	$(SHAPES) export --n 2000 --seed 102 --out $(RUN)/data/proxy-eval
	$(FASTRM) distill eval --data $(RUN)/data/proxy-eval/data.jsonl --out shapesvqa/assets/reference-proxy-eval.json \
		--backend ray --workers 2

reference-calibration: install
	$(SHAPES) export --n 4000 --seed 103 --out $(RUN)/data/calibration
	$(BIN)/guardrail calibrate --data $(RUN)/data/calibration/data.jsonl \
		--out shapesvqa/assets/reference-calibration.json --fit-fraction 0.5 --seed 0 \
		--plot docs/img/reference-calibration-kde.png --scores-out $(RUN)/calibration-scores.jsonl

artifacts: reference-model reference-proxy reference-calibration
