# The two quick-start commands (README): `make demo` and `make test`.
# Both create or reuse .venv and install the project into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.rbd-installed
CORES ?= all

.PHONY: demo test lint test-cluster test-arm gpu-check clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "rbd needs Python 3.11 or newer (found $$($(PYTHON) --version))"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || \
		{ rm -rf $(VENV); $(PYTHON) -m pip install --user --quiet virtualenv && \
		  $(PYTHON) -m virtualenv --quiet $(VENV); }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --no-compile -e '.[dev,workflow]'
	@# Byte-compile what pip installed on every core (pip's own pass takes one: about 35 s
	@# more on 2 cores). As pip does, files that do not compile are skipped (torch ships some
	@# written for newer Pythons); a module without bytecode still imports.
	$(PY) -m compileall -qq -j 0 "$$($(PY) -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" || true
	@touch $@

demo: $(STAMP)
	$(VENV)/bin/snakemake --cores $(CORES) --configfile=config/quick.yaml
	@echo
	@echo "Quick preset done. Tables: results/tables/*.csv and figures/*.md|.tex|.pdf;"
	@echo "figures: figures/*.pdf; per-run metrics: results/runs/**/metrics.csv."
	@ls figures results/tables

test: $(STAMP)
	@$(PY) -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: the suite is broken"; exit 1; fi; \
	exit $$rc

# A real one-node SLURM cluster on this machine (root; installs slurm and munge
# when missing) runs a cut-down Table 1 through profiles/slurm (tests/cluster/).
test-cluster: $(STAMP)
	@test "$$(id -u)" -eq 0 || { echo "make test-cluster starts SLURM daemons: run it as root"; exit 1; }
	RBD_CLUSTER_TEST=1 $(PY) -m pytest -q -rP -p no:cacheprovider tests/cluster

# The kernels cross-built for aarch64 and run under qemu-user (tests/bases/test_engine_arm.py);
# installs Debian's cross compiler and qemu-user when missing (as root).
test-arm: $(STAMP)
	@command -v aarch64-linux-gnu-gcc >/dev/null && command -v qemu-aarch64 >/dev/null || \
		{ test "$$(id -u)" -eq 0 || { echo "make test-arm installs gcc-aarch64-linux-gnu and qemu-user: run it as root, or install them"; exit 1; }; \
		  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user >/dev/null; }
	$(PY) -m pytest -q -rs -p no:cacheprovider tests/bases/test_engine_arm.py

# On a CUDA machine, within 8 minutes: the device tests, CPU-against-GPU bits, step times
# and a paper-preset slice through Snakemake; one report, results/gpu_check/gpu_check_report.md
# (benchmarks/gpu_check.py documents it). GPU_CHECK_ARGS="--device cpu": its CPU mode.
gpu-check: $(STAMP)
	$(PY) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

# ruff (with complexity limits), mypy on the torch-only layers rbd.bases and rbd.optim
# ([tool.mypy] in pyproject.toml), snakefmt, Snakemake's linter.
# The documentation site (mkdocs.yml) is built with --strict: a broken link or a missing
# section fails, into build/site (ignored by git).
lint: $(STAMP)
	$(VENV)/bin/ruff check rbd tests benchmarks docs examples
	$(VENV)/bin/ruff format --check rbd tests benchmarks docs examples
	$(VENV)/bin/mypy
	$(VENV)/bin/snakefmt --check Snakefile workflow/rules
	$(VENV)/bin/snakemake --lint --configfile=config/quick.yaml
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

clean:
	rm -rf results figures logs .snakemake build/site
