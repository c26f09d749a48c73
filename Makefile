PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test test-quick clean

# Create the virtualenv and install banray with its test extras (about a minute, about 5 GB).
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -c constraints.txt -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/banray sweep sweeps/quickstart.yaml --overwrite

test: $(STAMP)
	$(BIN)/pytest

test-quick: $(STAMP)
	$(BIN)/pytest -m 'not slow'

clean:
	rm -rf $(VENV) runs .pytest_cache
