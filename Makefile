# Two commands on a fresh machine: `make demo` runs the main job, `make test` runs the tests.
# Both create the virtual environment on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-all bench bench-quick profiles clean

$(STAMP): requirements.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python auto.py --model mobilenet_v2 --end_device emulated-10x --bandwidth 10 --A0 0.9

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m "slow or not slow"

clean:
	rm -rf runs .cache .pytest_cache

# Re-measure the shipped profiles on this machine (run it on a quiet machine), then check them.
profiles: $(STAMP)
	$(BIN)/python -m profiles defaults --input-size 32 --input-size 224
	$(BIN)/python -m profiles validate --model resnet18 --input-size 32 --device host --server server
	$(BIN)/python -m profiles validate --model mobilenet_v2 --input-size 32 --device host --server server

# A partial benchmark suite (issue 7 is open): exact baselines, search efficiency, runtime, compression table.
bench-quick: $(STAMP)
	$(BIN)/python auto.py --model resnet18 --end_device emulated-10x --bandwidth 10 --A0 0.95 \
		--ratios 0,0.3,0.5,0.7 --exhaustive --no-progress --run-dir runs/bench-r18-exh
	$(BIN)/python bench/search_efficiency.py --model resnet18 --ratios 0,0.3,0.5,0.7 --A0 0.95 --seeds 5
	$(BIN)/python bench/runtime_bench.py --out runs/bench/runtime
	$(BIN)/python bench/compress_table.py --model resnet18 --splits 1,2,3,4 --out runs/bench/compress-resnet18.csv
	$(BIN)/python bench/report.py
