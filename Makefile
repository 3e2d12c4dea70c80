# make demo  - install (once) and serve tiny locally built models, offline, on 127.0.0.1:8000
# make test  - install (once) and run the test suite
# make serve - the same service with the published weights of serve_config.yaml
# make bench - graph vs bare model vs a FastAPI peer, overload, memory, profile (~8 min, loopback only)
PYTHON ?= python3
VENV   ?= .venv
HOST   ?= 127.0.0.1
PORT   ?= 8000
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo serve test check-config bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	@# MTCNN face-detector weights ship inside this wheel; its declared pins (torch<2.3, ...) are for
	@# its own code, which we never import, so it is installed without dependencies.
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps facenet-pytorch==2.6.0
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/python -m tools.build_demo .models/demo
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m deployments.launch serve_config.demo.yaml --demo-key --host $(HOST) --port $(PORT)

serve: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m deployments.launch serve_config.yaml --host $(HOST) --port $(PORT)

check-config: install
	$(BIN)/python -m deployments.launch serve_config.yaml --check
	$(BIN)/python -m deployments.launch serve_config.demo.yaml --check

test: install
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: install
	@# The bench extra (FastAPI peer, py-spy) only when missing: editable reinstalls take a while.
	$(BIN)/python -c 'import fastapi' 2>/dev/null && test -x $(BIN)/py-spy || \
		$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test,bench]'
	$(BIN)/python -m bench.run

clean:
	rm -rf .run .models/demo data/storage
