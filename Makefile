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
	$(BIN)/python auto.py --model resnet18 --end_device emulated-10x --bandwidth 10 --A0 0.88 --time-budget 120

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

# The benchmark suite (docs/benchmarks.md): promise against delivery over devices x bandwidths x A0 x
# confidence on Fashion-MNIST 32 px (uplinks 0.1 to 100 Mbit/s), with the answers deployed; 43 min on 2 cores
# with resnet18's base cached (session 12; mobilenet_v2's base trained in it).
bench: $(STAMP) $(FASHION)
	$(BIN)/python bench/promises.py --profiles-now --out runs/bench/promises
	$(BIN)/python bench/promises_report.py --run runs/bench/promises --out docs/benchmarks.md

bench-quick: $(STAMP) $(FASHION)
	$(BIN)/python bench/promises.py --models resnet18 --devices host,emulated-10x --bandwidths 10 --drops 1 \
	    --deploy-limit 300 --out runs/bench/quick
	$(BIN)/python bench/promises_report.py --run runs/bench/quick --out runs/bench/quick/benchmarks.md
