# Two commands on a fresh machine:
#   make demo   set up .venv (pinned CPU dev stack + this project), then run the quick start
#   make test   same set-up, then the whole test suite
# Both are idempotent: the second run only rebuilds what changed.

VENV        ?= .venv
PYTHON      := $(VENV)/bin/python
PIP         := $(PYTHON) -m pip
STAMPS      := $(VENV)/.stamps
EXT_SOURCES := $(shell find csrc -type f) setup.py
PYTEST_ARGS ?=

.PHONY: setup demo test gpu-check clean

setup: $(STAMPS)/project

$(PYTHON):
	python3 -m venv $(VENV)
	$(PIP) install -q -U "pip<26"

# Pinned CPU stack: torch 2.13.0 (the CPU wheel on disk), mmengine, test tools.
$(STAMPS)/dev: requirements/dev.txt | $(PYTHON)
	$(PIP) install -r requirements/dev.txt
	@mkdir -p $(STAMPS) && touch $@

# mmcv 2.1.0 has no wheel for this torch on PyPI: build it with its ops (about 10 minutes on
# 2 cores, once; pip caches the wheel). Skipped when an mmcv 2.1.0 with ops is already there.
$(STAMPS)/mmcv: $(STAMPS)/dev
	@if $(PYTHON) -c "import mmcv, mmcv.ops; assert mmcv.__version__ == '2.1.0'" 2>/dev/null; \
	then echo "mmcv 2.1.0 with ops already installed"; \
	else echo "building mmcv 2.1.0 with ops (about 10 minutes on 2 cores)"; \
	  MMCV_WITH_OPS=1 MAX_JOBS=$${MAX_JOBS:-$$(nproc)} $(PIP) install --no-build-isolation mmcv==2.1.0; fi
	$(PIP) install -r requirements/mmdet.txt
	@touch $@

# This project, editable, with its compiled op; rebuilt when csrc/ or setup.py change.
$(STAMPS)/project: $(STAMPS)/mmcv $(EXT_SOURCES)
	$(PIP) install --no-build-isolation -e .
	$(PYTHON) -c "import pwlu_mmdet; assert pwlu_mmdet.compiled_available(), 'compiled op missing'"
	@touch $@

demo: setup
	$(PYTHON) tools/quickstart.py

test: setup
	$(PYTHON) -m pytest $(PYTEST_ARGS)

gpu-check:
	bash tools/gpu_check.sh

clean:
	rm -rf build *.egg-info pwlu_mmdet/*.so $(STAMPS)
