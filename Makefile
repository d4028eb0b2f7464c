# maskcls: `make install`, `make test` (`make test-fast`), `make demo`, `make bench`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
SEED ?= 0
STAMP := $(VENV)/.installed

.PHONY: install lock test test-fast lint demo demo-sweep bench fidelity clean

install: $(STAMP)

# requirements.txt names what the project uses; constraints.txt pins every package (and their dependencies) to the
# exact versions of an environment the suite passed on, so a fresh machine installs the same set.
$(STAMP): requirements.txt constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt -c constraints.txt
	touch $(STAMP)

# Regenerate constraints.txt: a fresh environment from requirements.txt alone (newest allowed versions), frozen.
# Run `make test` afterwards; commit constraints.txt only if it passes.
LOCK_VENV := .lock-venv
lock:
	rm -rf $(LOCK_VENV)
	$(PY) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install -q --upgrade pip
	$(LOCK_VENV)/bin/python -m pip install -q -r requirements.txt
	{ echo "# Exact versions of every package, direct and indirect, from a working environment (make test passed on it)."; \
	  echo "# make install installs requirements.txt under these; regenerate with: make lock"; \
	  $(LOCK_VENV)/bin/python -m pip freeze --exclude-editable; } > constraints.txt.tmp
	mv constraints.txt.tmp constraints.txt
	rm -rf $(LOCK_VENV)

test: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

# While editing: everything but the tests marked slow (training, MTCNN crops, scripts run end to end); make test
# (what CI runs) before pushing. Times for both in README.md.
test-fast: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The whole competition workflow on the embedded synthetic data, inside demo/ (git-ignored).
# Every line is the real script with real arguments: swap demo/data for your data folder.
DEMO ?= demo
DEMO_TRAIN_PERSONS ?= 200
DEMO_EVAL_PERSONS ?= 150
DEMO_MODEL ?= timm:resnet10t
DEMO_SIZE ?= 96 72
DEMO_EPOCHS ?= 15
# The demo's valid folds are small (24 persons): valid F1 swings from epoch to epoch, so "best" picks a lucky
# epoch; the cosine-annealed last weights are steadier. On the real data (540-person folds) best is the default.
DEMO_CHECKPOINT ?= last
# train.py's default --amp auto: bf16 where the CPU computes it natively (AVX512-BF16/AMX: about 2x), else fp32;
# DEMO_AMP=off for fp32 everywhere (or bf16).
DEMO_AMP ?=
DEMO_TRAIN := $(strip --data-dir $(DEMO)/data --output-dir $(DEMO)/runs --model $(DEMO_MODEL) --no-pretrained \
	--resize $(DEMO_SIZE) --cache --folds 5 --head multi --cutmix 0.5 --epochs $(DEMO_EPOCHS) --batch-size 32 --lr 0.003 --workers 0 \
	$(if $(DEMO_AMP),--amp $(DEMO_AMP)))
ANSWERS := --answers $(DEMO)/data/eval/answers.csv

demo: install
	rm -rf $(DEMO)
	$(BIN)/python synthetic_data.py --out $(DEMO)/data --seed $(SEED) --workers 2 \
		--train-persons $(DEMO_TRAIN_PERSONS) --eval-persons $(DEMO_EVAL_PERSONS)
	$(BIN)/python dataset.py --data-dir $(DEMO)/data --folds 5 --split-seed 42
	$(BIN)/python crop_faces.py --data-dir $(DEMO)/data --preview 16
	@echo "# folds 0 and 1 train side by side, one core each (fold 1 logs to $(DEMO)/train_fold1.log)"
	OMP_NUM_THREADS=1 $(BIN)/python train.py $(DEMO_TRAIN) --fold 1 --name fold1 > $(DEMO)/train_fold1.log 2>&1 & pid=$$!; \
	OMP_NUM_THREADS=1 $(BIN)/python train.py $(DEMO_TRAIN) --fold 0 --name fold0; status=$$?; \
	wait $$pid || { tail -n 3 $(DEMO)/train_fold1.log; exit 1; }; tail -n 1 $(DEMO)/train_fold1.log; exit $$status
	$(BIN)/python inference.py --run $(DEMO)/runs/fold0 --checkpoint $(DEMO_CHECKPOINT) --tta flip $(ANSWERS)
	$(BIN)/python inference.py --run $(DEMO)/runs/fold1 --checkpoint $(DEMO_CHECKPOINT) --tta flip $(ANSWERS)
	$(BIN)/python ensemble.py --mode hard --runs-dir $(DEMO)/runs --out $(DEMO)/submission_hard.csv $(ANSWERS)
	$(BIN)/python ensemble.py --mode soft --runs-dir $(DEMO)/runs --out $(DEMO)/submission_soft.csv $(ANSWERS)
	$(BIN)/python ensemble.py --mode soft --runs-dir $(DEMO)/runs --oof --out $(DEMO)/submission_soft.csv
	$(BIN)/python experiments.py --runs $(DEMO)/runs --plot $(DEMO)/curves.png

# After `make demo` (its data and crops): the demo recipe as a sweep's base, one change per variant, folds 0-1 x
# seeds 42-43, two trainings side by side; the verdict lands in $(DEMO)/runs/demo_sweep/verdict.md.
DEMO_SWEEP ?= --vary image-dir=images --vary cutmix=0 --vary criterion=focal --folds 0 1 --repeats 2 --jobs 2
demo-sweep: install
	$(BIN)/python sweep.py --study demo_sweep $(DEMO_SWEEP) -- $(DEMO_TRAIN)

# Each script prints `bench <name>: project X img/s, baseline Y img/s, ratio R` and writes bench/out/<name>.json.
bench: install
	$(BIN)/python bench/crop_speed.py
	$(BIN)/python bench/loader_speed.py
	$(BIN)/python bench/train_speed.py
	$(BIN)/python bench/infer_speed.py
	$(BIN)/python bench/memory.py
	$(BIN)/python bench/scaling.py
	$(BIN)/python bench/sweep_checks.py
	$(BIN)/python bench/report.py

# Does the stand-in behave like the real data? Trains the demo's recipe in the variants that decided the
# competition, over 2 seeds (about an hour on 2 cores); figures in bench/out/fidelity.json and BENCHMARKS.md.
fidelity: install
	$(BIN)/python bench/fidelity.py --seeds 0 1

clean:
	rm -rf demo bench/out .pytest_cache
