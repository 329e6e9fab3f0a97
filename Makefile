# make run: set up the virtualenv and start the default cluster.
# make test: set up the virtualenv and run the whole suite.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint proto bench clean image

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/vsim up

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

# Regenerate vsim/v1/*_pb2*.py from proto/ (commit the result).
proto: $(STAMP)
	$(BIN)/python -m vsim.protogen

bench: $(STAMP)
	$(BIN)/python bench/control_plane.py
	$(BIN)/python bench/locks.py
	$(BIN)/python bench/kernel.py

# The container image (debootstrap base + wheelhouse; no registry needed), tagged by
# a hash of its inputs: a second run with nothing changed takes a second.
image: $(STAMP)
	$(BIN)/python -m vsim.cluster.image

clean:
	rm -rf $(VENV) build *.egg-info
