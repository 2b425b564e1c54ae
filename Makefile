# Development tasks. `make test` is what CI runs (via .ci/run).
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
CONFIG ?= config.example.toml

.PHONY: install run demo test lint typecheck bench clean clean-all

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

run: install keys/example.com.s1.pem
	mkdir -p var
	$(BIN)/gateway db upgrade -c $(CONFIG)
	exec $(BIN)/gateway serve -c $(CONFIG)

# The gateway with fake ISPs on loopback and a sample campaign (docs/demo.md); Ctrl-C stops it.
demo: install
	exec $(BIN)/gateway demo

# The example configuration's DKIM key; the DNS record to publish is printed once.
keys/example.com.s1.pem: | install
	$(BIN)/gateway dkim keygen example.com --selector s1 --key-file $@

# pytest's exit code 5 (no tests collected) fails the target like any other non-zero code.
test: install lint typecheck
	$(BIN)/python -m pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make: pytest collected no tests" >&2; fi; exit $$rc

lint: install
	$(BIN)/ruff check gateway tests bench

typecheck: install
	$(BIN)/mypy

bench: install
	$(BIN)/python -m bench.relay --messages 20000 --size 10240 --concurrency 20

clean:
	rm -rf var $(VENV)/.installed

clean-all: clean
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info
