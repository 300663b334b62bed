# Two entry points: `make demo` (set up + main job) and `make test` (set up + whole test suite).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	# animal-mnist's metadata pulls in tensorflow; autoside reads its data files directly.
	$(PY) -m pip install -q --no-deps animal-mnist==0.4
	# Fashion-MNIST (used to pretrain the shipped backbones) comes from Debian.
	@[ -d /usr/share/datasets/fashion-mnist ] || (command -v apt-get >/dev/null && \
		(apt-get install -y -qq dataset-fashion-mnist || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist))) \
		|| echo "note: Fashion-MNIST not installed (apt-get install dataset-fashion-mnist); pretraining will be unavailable"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/autoside search search_spaces/demo.yaml trials/demo.yaml --num-samples 10 --max-concurrent 2 \
		--name demo-$$(date +%Y%m%d-%H%M%S)

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check autoside tests benchmarks
	$(VENV)/bin/ruff format --check autoside tests benchmarks
	$(VENV)/bin/vulture

bench: $(STAMP)
	$(PY) benchmarks/memory_vs_full.py

clean:
	rm -rf $(VENV) autoside_runs
