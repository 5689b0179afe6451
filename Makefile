# Two commands on a fresh clone do everything:
#   make demo [BUNDLE=name] [OUT=dir]   create .venv, install, run a bundle's demo (default: the main job,
#                                       brain age from T1 MRI) on generated demo data
#   make test                           create .venv, install, run the tests
#
# Where torch comes from (README.md, "Install"):
#   TORCH_SPEC       the torch requirement installed first; default: the version the project is tested with
#                    (constraints.txt, the bundles' metadata.json and the container all name it). A local
#                    label picks one build, e.g. TORCH_SPEC=torch==2.13.0+cu126.
#   TORCH_INDEX_URL  the index torch comes from; empty (the default) means pip's configured indexes.
#                    On PyPI, Linux torch is the CUDA build (several GB); on the project's build machines pip
#                    finds a CPU wheel of the default version in a local folder. Elsewhere pick the build:
#                      TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu     CPU only (~200 MB)
#                      TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126   CUDA 12.6 (older drivers)
#                      TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130   CUDA 13.0
#   CONSTRAINTS      pins for every other package: constraints.txt (the tested versions) by default;
#                    CONSTRAINTS= lets pip take the newest releases pyproject.toml allows.
# The variables only matter when .venv is created: `make clean` first to change them.
PYTHON ?= python3
VENV   ?= .venv
BUNDLE ?= ukb_brainage
OUT    ?= outputs/demo/$(BUNDLE)
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
TORCH_SPEC      ?= torch==2.13.0
TORCH_INDEX_URL ?=
CONSTRAINTS     ?= constraints.txt

.PHONY: install test demo benchmark constraints clean

# torch goes first, alone: its own index may not hold the pinned versions of other packages, and with torch
# installed the project's `torch>=2.8` is satisfied, so the second step never swaps the build.
$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(if $(TORCH_INDEX_URL),--index-url "$(TORCH_INDEX_URL)") "$(TORCH_SPEC)"
	$(PIP) install -q $(if $(CONSTRAINTS),--constraint "$(CONSTRAINTS)") -e ".[dev]"
	@$(PY) -c "import shutil, torch; gpu = shutil.which('nvidia-smi'); cuda = torch.cuda.is_available(); \
		print('torch', torch.__version__, '(CUDA)' if cuda else '(CPU only)'); \
		gpu and not cuda and print('A GPU is present but this torch cannot use it: make clean, then set' \
		' TORCH_INDEX_URL (README.md, Install)')"
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

# Pin the tested environment: install every runtime extra into .venv, then write constraints.txt from it
# (docker/pin_constraints.py). To move to newer releases: make clean constraints CONSTRAINTS=, then make test.
constraints: install
	$(PIP) install -q $(if $(CONSTRAINTS),--constraint "$(CONSTRAINTS)") \
		-e ".[dev,$$($(PY) docker/pin_constraints.py --list-extras)]"
	$(PY) docker/pin_constraints.py --output constraints.txt

clean:
	rm -rf $(VENV) outputs
