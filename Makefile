# prompt-runner developer commands. `make help` lists them; CI calls `make test`.
VENV   := .venv
BIN    := $(VENV)/bin
SHELL  := /bin/bash

.DEFAULT_GOAL := help
.PHONY: help build binary wheel demo test test-rust test-python bench bench-pacing bench-resend clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(BIN)/maturin:
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet 'maturin>=1.7,<2'

build: $(BIN)/maturin ## create .venv, install a release build of prompt-runner into it (with the test and ray extras), build the binary
	$(BIN)/maturin develop --release --extras test,ray --quiet
	$(MAKE) --no-print-directory binary

binary: ## build the standalone client: target/release/model-client-rs (no libpython)
	cargo build --release --bin model-client-rs

wheel: $(BIN)/maturin ## the abi3 wheel for this platform (manylinux-checked by maturin) and the sdist, in dist/
	rm -rf dist
	$(BIN)/maturin build --release --out dist --quiet
	$(BIN)/maturin sdist --out dist

demo: build ## run the example dataset on the built-in mock provider and show the result
	$(BIN)/prompt-runner run examples/data/questions.jsonl -o runs/demo.parquet \
		--provider mock --template-file examples/templates/question.jinja \
		--system "Answer briefly." --concurrency 16
	$(BIN)/python -c "import polars as pl; print(pl.read_parquet('runs/demo.parquet').select('id','question','status','output','prompt_tokens','completion_tokens','latency_ms').head(5))"

test: build wheel test-rust test-python ## build (and the wheel), then run every test (Rust unit tests and pytest)

test-rust: ## Rust unit tests (release profile: reuses the wheel build's artifacts)
	cargo test --release -p prompt-runner-native

test-python: ## pytest end-to-end suites against the mock server
	$(BIN)/pytest -q tests

bench: build ## benchmarks: prompt-runner vs hand-written baselines and wrk (about 10 minutes)
	$(BIN)/pip install --quiet 'openai>=1.40' 'aiohttp>=3.9'
	command -v wrk >/dev/null || (apt-get install -y -qq wrk >/dev/null 2>&1 || echo "wrk not installed: no raw ceiling")
	$(BIN)/python benches/bench.py

bench-pacing: build ## pacing under rate limits, overloads and scattered faults, and behind a LiteLLM proxy (about 8 minutes)
	$(BIN)/pip install --quiet 'openai>=1.40'
	$(BIN)/python benches/pacing.py

bench-resend: build ## requests sent twice after a kill -9 at 20, 50 and 80 % of a run (about a minute)
	$(BIN)/python benches/kill_resend.py

clean: ## remove build outputs, the venv and example runs
	rm -rf target $(VENV) runs runner/_native*.so
