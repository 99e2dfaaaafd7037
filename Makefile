# ziphalp: `make train` and `make test` set everything up on a fresh machine.
# `make reproduce-zipml` reruns the ZipML paper's experiments on the simulated board
# (about 15 minutes; results/zipml/zipml.json and figures).
# `make reproduce-halp` runs HALP (bit-centering SVRG) in the engine on the simulated
# ULX3S board against float64 SGD/SVRG/HALP baselines (results/halp/halp.json and figures).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BOARD  ?= icebreaker
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup iverilog train reproduce-zipml reproduce-halp test bitstream lint clean

setup: $(STAMP) iverilog

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

iverilog:
	@command -v iverilog >/dev/null || { \
	  echo "installing Icarus Verilog from Debian"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq iverilog; }

train: setup
	$(BIN)/ziphalp train diabetes --board sim-ulx3s --epochs 30 --batch 8 --step 0.001953125 --out results/train

reproduce-zipml: setup
	$(BIN)/python -m ziphalp.sim.reproduce_zipml --out results/zipml

reproduce-halp: setup
	$(BIN)/python -m ziphalp.sim.reproduce_halp --out results/halp

test: setup
	$(BIN)/python -m pytest -n auto --maxschedchunk 1

bitstream: setup
	$(BIN)/python -m ziphalp.hw.build $(BOARD) $(PARAMS)

lint: setup
	$(BIN)/ruff check hw host sim tests

clean:
	rm -rf build results .pytest_cache
