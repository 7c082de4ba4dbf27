# ser — one Makefile for setting up, testing, running and measuring.
#   make test    install everything (venv, package, Debian tools) and run the suite
#   make run     run the server in the foreground on cfg/ser.cfg
#                (WITH="AUTH USRLOCDB" turns on cfg switches; its database is
#                DBURL, run/ser.db here: `export SER_DB_URL=sqlite://$PWD/run/ser.db`
#                points serctl at it; WITH=TLS uses run/ser.pem and run/ser.key;
#                SER_ARGS adds ser options, e.g. -A SIP_PORT=5070)
PYTHON  ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
CFG     ?= cfg/ser.cfg
RUNDIR  ?= $(CURDIR)/run
DBURL   ?= sqlite://$(RUNDIR)/ser.db
TLS_CERT ?= $(RUNDIR)/ser.pem
TLS_KEY ?= $(RUNDIR)/ser.key
WITH    ?=
SER_ARGS ?=
PYTEST_ARGS ?=

.PHONY: all deps install test unit run check lint typecheck bench docs docs-check clean

all: test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

deps:
	bash scripts/deps.sh

test: deps install
	bash scripts/services.sh $(BIN)/python -m pytest $(PYTEST_ARGS)

unit: install
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

run: install
	mkdir -p $(RUNDIR)
	$(BIN)/ser -DD -E -Y $(RUNDIR) -A 'DBURL="$(DBURL)"' \
		-A 'TLS_CERT="$(TLS_CERT)"' -A 'TLS_KEY="$(TLS_KEY)"' $(foreach w,$(WITH),-A WITH_$(w)) \
		$(SER_ARGS) -f $(CFG)

check: install
	$(BIN)/ser -c -A 'DBURL="$(DBURL)"' -A 'TLS_CERT="$(TLS_CERT)"' -A 'TLS_KEY="$(TLS_KEY)"' \
		$(foreach w,$(WITH),-A WITH_$(w)) $(SER_ARGS) -f $(CFG)

lint: install
	$(BIN)/ruff check ser tests bench scripts

typecheck: install
	$(BIN)/mypy

docs: install
	$(BIN)/python -m ser.core.docs

docs-check: install
	$(BIN)/python -m ser.core.docs --check

bench: install
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) run build *.egg-info
