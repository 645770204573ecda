# ciopt: two commands on a fresh machine.
#   make demo   create .venv, build the Rust extension (release), build and test examples/ twice,
#               then examples/srcproj (a plain src-layout project with its own .venv): batched,
#               cached, and --affected-since after a one-line edit
#   make test   the whole suite: pytest and cargo test
#   make bench  benches/, each against its named peer, printed as ratios
#   make wheel  dist/ciopt-*.whl, installable without Rust (pipx install dist/*.whl)

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
CIOPT  := $(VENV)/bin/ciopt
RUST_SOURCES := Cargo.toml Cargo.lock $(wildcard rust/src/*.rs)
PY_DEPS := pytest hypothesis blake3 pytest-timeout click pyyaml msgpack rich starlark-pyo3 libcst pyzmq \
           xxhash redis hiredis check-jsonschema zizmor jinja2 plotly playwright

# benches/<name>_bench.py, run by `make bench` (all) or `make bench-<name>`.
BENCHES := hash graph infer remote pytest cache analytics

.PHONY: demo test test-python test-rust bench $(addprefix bench-,$(BENCHES)) bench-replay develop clean wheel dashboard-screenshot

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.deps: pyproject.toml | $(PY)
	$(PY) -m pip install -q maturin $(PY_DEPS)
	touch $@

# Rebuilt whenever a Rust source changes; the stamp keeps no-op `make test` fast.
$(VENV)/.built: $(VENV)/.deps $(RUST_SOURCES) pyproject.toml
	$(PY) -m maturin develop --release -q
	touch $@

# A wheel for users, with the compiled extension inside: `pip install dist/*.whl` or
# `pipx install dist/*.whl` then needs no Rust. One abi3 wheel serves CPython 3.11 and later.
wheel: $(VENV)/.deps
	rm -f dist/ciopt-*.whl
	$(PY) -m maturin build --release -q -i $(PY) -o dist
	@ls dist/ciopt-*.whl

# Bytecode up front: with PYTHONDONTWRITEBYTECODE set (common in CI images) every ciopt
# invocation would otherwise recompile the package (~30 ms).
$(VENV)/.compiled: $(VENV)/.built $(wildcard python/ciopt/*.py python/ciopt/*/*.py)
	$(PY) -m compileall -q python/ciopt
	touch $@

develop: $(VENV)/.built $(VENV)/.compiled

test: develop test-python test-rust

test-python: develop
	$(PY) -m pytest -q

# pyo3 links against the venv's interpreter when the extension-module feature is off.
test-rust: develop
	PYO3_PYTHON=$(abspath $(PY)) cargo test -q

# Each bench runs ciopt and its named peer side by side and prints the ratios.
bench: $(addprefix bench-,$(BENCHES))

bench-%: develop
	$(PY) -m pip install -q lmdb psutil ruff grimp
	$(PY) benches/$*_bench.py

# Real history replayed as CI runs it (issue 11): long (an hour or more on 2 cores). Smaller:
# .venv/bin/python benches/ci_replay.py --repo click --commits 10 --mutations 3 --concurrent 4
bench-replay: develop
	$(PY) -m pip install -q matplotlib
	$(PY) benches/ci_replay.py

# The real repositories and their venvs are fetched and installed once.
bench-pytest: develop
	$(PY) benches/pytest_bench.py --setup
	$(PY) benches/pytest_bench.py --json benches/results/pytest_bench.json

DEMO_STORE := $(abspath .ciopt-demo)
SRCPROJ    := examples/srcproj

# A real build and test of examples/ with the embedded LMDB store, twice: the second run is
# served entirely from the cache.
demo: develop
	@rm -rf $(DEMO_STORE) examples/ciopt-out $(SRCPROJ)/ciopt-out
	@echo "== first run: build and test examples/ (store: $(DEMO_STORE))"
	cd examples && CIOPT_CACHE_DIR=$(DEMO_STORE) ../$(CIOPT) build //...
	cd examples && CIOPT_CACHE_DIR=$(DEMO_STORE) ../$(CIOPT) test //... --junit ciopt-out/junit.xml
	@echo "== second run, nothing changed: every action and test comes from the cache"
	cd examples && CIOPT_CACHE_DIR=$(DEMO_STORE) ../$(CIOPT) build //...
	cd examples && CIOPT_CACHE_DIR=$(DEMO_STORE) ../$(CIOPT) test //...
	@echo "== a plain src-layout project (examples/srcproj) with its own .venv: no BUILD files,"
	@echo "   test files batched into one pytest process per -j slot, results cached per file"
	test -x $(SRCPROJ)/.venv/bin/python || ($(PYTHON) -m venv $(SRCPROJ)/.venv && \
	  $(SRCPROJ)/.venv/bin/python -m pip install -q -r $(SRCPROJ)/requirements-dev.txt)
	cd $(SRCPROJ) && CIOPT_CACHE_DIR=$(DEMO_STORE) $(abspath $(CIOPT)) test //... -j 2
	@echo "== second run, nothing changed: every test file comes from the cache"
	cd $(SRCPROJ) && CIOPT_CACHE_DIR=$(DEMO_STORE) $(abspath $(CIOPT)) test //... -j 2
	@echo "== a one-line edit to src/inventory/pricing.py: only the tests that can see it run"
	cd $(SRCPROJ) && cp src/inventory/pricing.py ciopt-out/pricing.py.orig && \
	  echo "# a one-line edit" >> src/inventory/pricing.py && \
	  { CIOPT_CACHE_DIR=$(DEMO_STORE) $(abspath $(CIOPT)) test //... -j 2 --affected-since HEAD; status=$$?; \
	    mv ciopt-out/pricing.py.orig src/inventory/pricing.py; exit $$status; }
	CIOPT_CACHE_DIR=$(DEMO_STORE) $(CIOPT) cache stats

# docs/img/dashboard.png: `ciopt dashboard` over a generated 60-day team history, in headless
# Chromium (Debian's chromium; playwright drives it, no browser download).
dashboard-screenshot: develop
	$(PY) benches/analytics_bench.py --screenshot docs/img/dashboard.png

clean:
	rm -rf target dist $(VENV) .ciopt-demo examples/ciopt-out $(SRCPROJ)/ciopt-out $(SRCPROJ)/.venv python/ciopt/*.so
