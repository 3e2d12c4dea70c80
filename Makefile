# make demo  - install (once) and serve tiny locally built models, offline, on 127.0.0.1:8000
# make test  - install (once) and run the test suite
# make serve - the same service with the published weights of serve_config.yaml (needs a GPU;
#              PROFILE=cpu: serve_config.cpu.yaml, real colors on a laptop; PROFILE=gpu: serve_config.yaml anyway)
# make screenshot - retake docs/workbench.png in headless Chromium
# make bench - graph vs bare model vs a FastAPI peer, overload, memory, profile (~8 min, loopback only)
# make overload - the shipped demo config under 1x/2x/4x offered load, probes, idle sockets, ledger (~4 min)
PYTHON ?= python3
VENV   ?= .venv
HOST   ?= 127.0.0.1
PORT   ?= 8000
PROFILE ?=
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo serve test test-browser-deps screenshot check-config bench overload clean

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

# No PROFILE: serve_config.yaml if a GPU is visible, else a message naming the profile that fits.
serve: install
ifeq ($(PROFILE),cpu)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m deployments.launch serve_config.cpu.yaml --demo-key --host $(HOST) --port $(PORT)
else ifeq ($(PROFILE),gpu)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m deployments.launch serve_config.yaml --host $(HOST) --port $(PORT)
else ifeq ($(PROFILE),)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m deployments.launch serve_config.yaml --needs-gpu --host $(HOST) --port $(PORT)
else
	@echo "PROFILE=$(PROFILE): unknown; use PROFILE=cpu (serve_config.cpu.yaml) or PROFILE=gpu (serve_config.yaml)" >&2; exit 2
endif

check-config: install
	$(BIN)/python -m deployments.launch serve_config.yaml --check
	$(BIN)/python -m deployments.launch serve_config.demo.yaml --check
	$(BIN)/python -m deployments.launch serve_config.cpu.yaml --check

# The browser tests drive Debian's Chromium (Playwright cannot download a browser offline): installed
# with apt when missing and we are root; otherwise those tests are skipped (REQUIRE_BROWSER=1 fails them).
test-browser-deps:
	@command -v chromium >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
		else echo "chromium is missing: sudo apt-get install chromium chromium-driver (browser tests skip without it)"; fi; }

test: install test-browser-deps
	$(BIN)/python -m pytest -q -p no:cacheprovider

# docs/workbench.png, taken by the workbench's browser test
screenshot: install test-browser-deps
	WORKBENCH_SCREENSHOT=$(CURDIR)/docs/workbench.png REQUIRE_BROWSER=1 $(BIN)/python -m pytest -q -p no:cacheprovider \
		tests/integration/test_browser.py -k test_workbench_colorizes_three_photos

bench: install
	@# The bench extra (FastAPI peer, py-spy) only when missing: editable reinstalls take a while.
	$(BIN)/python -c 'import fastapi' 2>/dev/null && test -x $(BIN)/py-spy || \
		$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test,bench]'
	$(BIN)/python -m bench.run

# OVERLOAD_ARGS="--seconds 60 --soak 480 --idle 20000" for the issue's full lengths (~16 min)
overload: install
	$(BIN)/python -m bench.overload $(OVERLOAD_ARGS)

clean:
	rm -rf .run .models/demo data/storage
