# The two commands of the README: `make demo` and `make test`. Both create .venv on first use and
# reinstall only when pyproject.toml changes, so a second run starts at once.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.bitfab-installed
# everything bitfab caches (Verilator builds, the YoWASP WASM cache, synthesis runs) lives here
export BITFAB_BUILD_DIR ?= $(CURDIR)/build

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit("bitfab needs Python >= 3.11") if sys.version_info < (3, 11) else None'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[train,dev,interop,sweep]'
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/bitfab demo

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# every measurement of bench/ (bench/all.py): docs/results/bench.{md,json} and plots;
# QUICK=1: small shapes into build/bench-quick (a smoke test)
bench: $(STAMP)
	$(PY) bench/all.py $(if $(QUICK),--quick)

clean:
	rm -rf $(VENV) build *.egg-info
