# Two commands do everything: `make run` and `make test`. Both set up first (idempotent).
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | sha256sum | cut -c1-12)
FASHION_MNIST := /usr/share/datasets/fashion-mnist

.PHONY: setup dataset run test clean

setup: $(STAMP) dataset

# torch is pinned to the local CPU build (2.13.0+cpu); the lock pins everything else, so
# pip never swaps torch for a CUDA build.
$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	rm -f $(VENV)/.installed-*
	touch $@

dataset:
	@if [ ! -f $(FASHION_MNIST)/train-images-idx3-ubyte.gz ]; then \
		echo "installing Debian's dataset-fashion-mnist"; \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null || \
		{ echo "could not install dataset-fashion-mnist; run: $(VENV)/bin/distillab data fetch fashion_mnist --to DIR and set data.path"; exit 1; }; \
	fi

run: setup
	$(VENV)/bin/distillab run configs/fashion_mnist_kd.yaml --out runs/fashion_mnist_kd --overwrite

test: setup
	@$(PY) -m pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: the suite is missing"; exit 1; fi; \
	exit $$rc

clean:
	rm -rf runs .pytest_cache
