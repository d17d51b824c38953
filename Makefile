# `make demo` and `make test` create (or reuse) the virtualenv in $(VENV) and install what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.promptjax-installed
PYTEST_ARGS ?=

.PHONY: demo test bench install clean

install: $(STAMP)

$(STAMP): setup.py requirements/constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements/constraints.txt -e '.[test,beam]'
	# Apache Beam caps protobuf/pyarrow/pillow/dateutil below our pins but runs with them (setup.py, `beam`):
	$(PY) -m pip install -q -c requirements/constraints.txt --no-deps apache-beam==2.77.0
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m promptjax.demo

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile tests $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/train_step.py

clean:
	rm -rf $(VENV) build *.egg-info
