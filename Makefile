# `make demo` and `make test` create (or reuse) the virtualenv in $(VENV) and install what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.promptjax-installed
PYTEST_ARGS ?=
T5X_WHEELS ?= ../shared/wheels

.PHONY: demo test bench install clean data backbone

install: $(STAMP)

$(STAMP): setup.py requirements/constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements/constraints.txt -e '.[test,beam]'
	# Apache Beam caps protobuf/pyarrow/pillow/dateutil below our pins but runs with them (setup.py, `beam`):
	$(PY) -m pip install -q -c requirements/constraints.txt --no-deps apache-beam==2.77.0
	# T5X, AirIO and JEstimator are not on the registry: wheels of their sources when ../shared/wheels has
	# them (else install them from GitHub, see the README); their registry dependencies come from `t5x`.
	if ls $(T5X_WHEELS)/t5x-*.whl >/dev/null 2>&1; then \
	  $(PY) -m pip install -q -c requirements/constraints.txt -e '.[t5x]' && \
	  $(PY) -m pip install -q --no-deps $(T5X_WHEELS)/t5x-*.whl $(T5X_WHEELS)/airio-*.whl $(T5X_WHEELS)/jestimator-*.whl; \
	else echo "T5X wheels not found in $(T5X_WHEELS): the T5X interop tests will skip (README: Using promptjax from T5X)"; fi
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m promptjax.demo

test: $(STAMP)
	$(PY) -m pytest -q -n 3 --dist loadfile --no-loadscope-reorder --durations=30 tests $(PYTEST_ARGS)

# The bundled mini benchmark and the LM-adapted mini backbone the demo starts from (regenerate both, in this
# order, after changing the generator; tests check the committed files are what these make).
data: $(STAMP)
	$(PY) tools/make_mini_benchmark.py

backbone: $(STAMP)
	$(PY) tools/make_mini_backbone.py

bench: $(STAMP)
	$(PY) benchmarks/train_step.py

clean:
	rm -rf $(VENV) build *.egg-info
