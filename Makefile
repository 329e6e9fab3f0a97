# make run: set up the virtualenv and start the default cluster.
# make test: set up the virtualenv and run the whole suite.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint proto bench clean image compose-up compose-down

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
	$(BIN)/python bench/virtual_time.py
	$(BIN)/python bench/simulator.py
	$(BIN)/python bench/vmotion.py
	$(BIN)/python bench/ha.py

# The container image (debootstrap base + wheelhouse; no registry needed), tagged by
# a hash of its inputs: a second run with nothing changed takes a second.
image: $(STAMP)
	$(BIN)/python -m vsim.cluster.image

# The cluster as containers (docker-compose.yml); vCenter on 127.0.0.1:50051.
# The admin password: docker-compose exec vcenter cat /data/vcenter/initial-admin-password
compose-up: image
	docker-compose up -d
	@echo "vCenter: 127.0.0.1:50051 (VSIM_PASSWORD=\$$(docker-compose exec -T vcenter cat /data/vcenter/initial-admin-password) vsim --server 127.0.0.1:50051 login --accept-new-thumbprint)"

# WIPE=1 also removes the volumes (inventory, LUNs, hosts' data).
compose-down:
	docker-compose down $(if $(WIPE),-v,)

clean:
	rm -rf $(VENV) build *.egg-info
