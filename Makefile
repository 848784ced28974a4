# Two commands on a fresh machine: `make demo` runs the main job, `make test` runs the tests.
# Both create the virtual environment on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv data demo test test-all bench bench-quick profiles clean

# The default data set: Debian's dataset-fashion-mnist, installed here when missing and the machine allows it.
FASHION := /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz

$(STAMP): requirements.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt
	touch $(STAMP)

venv: $(STAMP)

$(FASHION):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing Fashion-MNIST (apt-get install dataset-fashion-mnist)"; \
	  apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
	  { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; }; \
	else \
	  echo "Fashion-MNIST is missing: as root, apt-get install dataset-fashion-mnist (or pass --data-root DIR)"; exit 1; \
	fi

data: $(FASHION)

demo: $(STAMP) $(FASHION)
	$(BIN)/python auto.py --model mobilenet_v2 --end_device emulated-10x --bandwidth 10 --A0 0.85 --time-budget 120

test: $(STAMP) $(FASHION)
	$(BIN)/python -m pytest -q

test-all: $(STAMP) $(FASHION)
	$(BIN)/python -m pytest -q -m "slow or not slow"

clean:
	rm -rf runs .cache .pytest_cache

# Re-measure the shipped profiles on this machine (run it on a quiet machine), then check them.
profiles: $(STAMP)
	$(BIN)/python -m profiles defaults --input-size 32 --input-size 224
	$(BIN)/python -m profiles validate --model resnet18 --input-size 32 --device host --server server
	$(BIN)/python -m profiles validate --model mobilenet_v2 --input-size 32 --device host --server server

# The benchmark suite (docs/benchmarks.md): scenarios at 32 and 224 px, search efficiency, deployment, runtime.
# About 45 min on 2 cores from a cold cache; bench-quick (resnet18, 32 px, 1-epoch fine-tunes) under 5 min.
bench: $(STAMP) $(FASHION)
	mkdir -p runs/bench && date +%s > runs/bench/started
	$(BIN)/python bench/scenarios.py --out runs/bench/scenarios
	$(BIN)/python bench/runtime_bench.py --out runs/bench/runtime
	$(BIN)/python bench/report.py --command "make bench" --started $$(cat runs/bench/started)

bench-quick: $(STAMP) $(FASHION)
	mkdir -p runs/bench && date +%s > runs/bench/started
	$(BIN)/python bench/scenarios.py --models resnet18 --sizes 32 --quick --deploy-limit 20 --out runs/bench/scenarios
	$(BIN)/python bench/runtime_bench.py --models resnet18 --sizes 32 --repeats 10 --limit 50 --out runs/bench/runtime
	$(BIN)/python bench/report.py --command "make bench-quick" --started $$(cat runs/bench/started)
