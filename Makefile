# mdream: the set-up is `make install demo` (install + main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MDREAM := $(VENV)/bin/mdream
# Two threads is what CI and the dev machines have; torch would otherwise oversubscribe.
export OMP_NUM_THREADS ?= 2

.PHONY: install test test-slow bench demo toy-bundle lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

install: $(PY)
	# torch first, pinned: the CPU wheel on disk, never a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'

test:
	$(PY) -m pytest -q --durations=10

test-slow:
	$(PY) -m pytest -q -m slow

bench:
	$(PY) -m benchmarks.run

# The main job on the bundled examples: a movie from a script (every keyframe predicted), and one from a storyboard.
demo:
	$(MDREAM) script-validate examples/scripts/short.yaml examples/scripts/long.yaml examples/scripts/storyboard.yaml
	$(MDREAM) generate examples/scripts/short.yaml -o demo/short.mp4 --device cpu
	$(MDREAM) eval demo/short --script examples/scripts/short.yaml
	$(MDREAM) generate examples/scripts/storyboard.yaml -o demo/storyboard.mp4 --device cpu
	$(MDREAM) eval demo/storyboard --script examples/scripts/storyboard.yaml

# Every toy model from scratch, in dependency order, into mdream/assets (about 8.2 h on 2 CPU cores; rerun to
# resume). TOY_BUNDLE_ARGS passes options on, e.g. TOY_BUNDLE_ARGS="--dest /tmp/toy --smoke".
toy-bundle:
	$(MDREAM) train bundle --out runs/toy-bundle $(TOY_BUNDLE_ARGS)

lint:
	$(VENV)/bin/ruff check mdream tests benchmarks

clean:
	rm -rf .pytest_cache .ruff_cache examples/scripts/.mdream
