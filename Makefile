# Two commands on a fresh clone do everything:
#   make demo [BUNDLE=name] [OUT=dir]   create .venv, install, run a bundle's demo (default: the main job,
#                                       brain age from T1 MRI) on generated demo data
#   make test                           create .venv, install, run the tests
PYTHON ?= python3
VENV   ?= .venv
BUNDLE ?= ukb_brainage
OUT    ?= outputs/demo/$(BUNDLE)
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# A CPU wheel of this torch lies on the build machines; installing it first keeps pip from
# pulling a multi-GB CUDA build to satisfy the package's `torch>=2.8` range.
TORCH_CPU ?= torch==2.13.0

.PHONY: install test demo benchmark clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	@if command -v nvidia-smi >/dev/null 2>&1; then \
		echo "GPU found: installing torch from the index"; \
	else \
		$(PIP) install -q "$(TORCH_CPU)"; \
	fi
	$(PIP) install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q tests

# A bundle's demo: generate its synthetic cohort, build the cache, then run train.json + demo.json into
# $(OUT) (the steps are in supremix_med.demo.DEMOS). Each step resumes.
demo: install
	$(PY) -m supremix_med.demo $(BUNDLE) --output "$(OUT)"

benchmark: install
	$(PY) benchmarks/loss_speed.py

clean:
	rm -rf $(VENV) outputs
