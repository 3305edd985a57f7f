# `make demo` and `make test` each set up everything on a fresh machine, then run.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.saddc-installed
OUT    ?= out/demo

.PHONY: setup demo test gate accuracy clean

setup: $(STAMP)

$(STAMP): requirements.txt requirements-nodeps.txt setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-nodeps.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

demo: $(STAMP)
	$(BIN)/python examples/demo.py --out $(OUT)

test: $(STAMP)
	$(BIN)/python -m pytest tests

# The kernel-latency regression gate against the CPU model's baseline in benchmarks/results/
# (latency_gate_llvm-<cpu>_baseline.json, else latency_gate_llvm_baseline.json).
gate: $(STAMP)
	$(BIN)/python benchmarks/latency_gate.py

# The fidelity table (benchmarks/results/accuracy.{md,json,png}); about 15 minutes on two cores.
accuracy: $(STAMP)
	$(BIN)/python benchmarks/accuracy.py

clean:
	rm -rf $(VENV) out build *.egg-info
