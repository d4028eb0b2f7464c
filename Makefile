# maskcls: `make install`, `make test`, `make demo`, `make bench`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
SEED ?= 0
STAMP := $(VENV)/.installed

.PHONY: install test lint demo bench clean

install: $(STAMP)

$(STAMP): requirements.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	touch $(STAMP)

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

demo: install
	$(BIN)/python synthetic_data.py --out demo/data --seed $(SEED)
	$(BIN)/python dataset.py --data-dir demo/data --folds 5 --seed 42

bench: install
	$(BIN)/python bench/crop_speed.py

clean:
	rm -rf demo bench/out .pytest_cache
