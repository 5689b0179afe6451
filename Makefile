# Two commands on a fresh clone do everything:
#   make demo [OUT=dir]   create .venv, install, run the main job on the embedded demo data
#   make test             create .venv, install, run the tests
PYTHON ?= python3
VENV   ?= .venv
OUT    ?= outputs/demo
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

# The main job on the embedded demo data: generate the synthetic ageing cohort, preprocess it into the
# cache, then run the UK Biobank bundle (train.json + the demo overlay) into $(OUT). Each step resumes.
demo: install
	$(PY) -m supremix_med.data.demo_t1 --output "$(OUT)/cohort" --workers 2
	$(PY) -m preprocessing.t1 --manifest "$(OUT)/cohort/manifest.csv" --output "$(OUT)/cache" --workers 2 --register never
	$(PY) -m monai.bundle run \
		--config_file "['bundles/ukb_brainage/train.json','bundles/ukb_brainage/demo.json']" \
		--dataset_dir "$(OUT)/cache" --output_dir "$(OUT)"

benchmark: install
	$(PY) benchmarks/loss_speed.py

clean:
	rm -rf $(VENV) outputs
