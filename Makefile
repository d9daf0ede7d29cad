# recon: `make demo` trains, evaluates and exports on the built-in synthetic scene;
# `make test` runs the CPU test tier. Both create/update the virtual environment first.
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_RUN := outputs/demo/vanilla-nerf-small/demo
PYTEST_ARGS ?=

.PHONY: install install-test demo test fuzz faults bench interop clean

install:
	bash scripts/install.sh $(VENV)

install-test:
	bash scripts/install.sh $(VENV) test

demo: install
	$(BIN)/ns-train vanilla-nerf-small --output-dir outputs --experiment-name demo --timestamp demo
	$(BIN)/ns-eval --load-config $(DEMO_RUN)/config.yml --output-path $(DEMO_RUN)/eval.json
	$(BIN)/ns-export tsdf --load-config $(DEMO_RUN)/config.yml --output-dir $(DEMO_RUN)/export --resolution 128
	@echo
	@echo "metrics: $(DEMO_RUN)/eval.json"
	@echo "mesh:    $(DEMO_RUN)/export/mesh.ply"

test: install-test
	$(BIN)/python -m pytest -n 2 -m "not gpu" $(PYTEST_ARGS)

# The long fuzzing campaign of every file reader (tests/test_fuzz_readers.py), one process;
# `make test` runs the same test with its small fixed budget (RECON_FUZZ_EXAMPLES=100).
FUZZ_EXAMPLES ?= 3000
fuzz: install-test
	RECON_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest -p no:xdist tests/test_fuzz_readers.py -k fuzzed_reader -rP $(PYTEST_ARGS)

# Training under faults (tests/methods/test_faults.py): kill -9 a run KILLS times at random
# moments and during checkpoint writes, resume each time, compare with an uninterrupted run.
# `make test` runs the same test with 2 kills.
KILLS ?= 25
faults: install-test
	RECON_KILLS=$(KILLS) $(BIN)/python -m pytest -p no:xdist tests/methods/test_faults.py -rP $(PYTEST_ARGS)

bench: install
	$(BIN)/python -m benchmarks.bench_vanilla_nerf

# recon beside nerfstudio 1.1.5 in a scratch venv (INTEROP_VENV, outside the repository): installs
# both (about 1.5 GB of downloads, so not part of `make test`), then checks both tools' --help through
# the same ns-train, one short training and one ns-eval of each; about 6 minutes on 2 cores after the
# downloads. INTEROP_SKIP_INSTALL=1 reruns the checks only. README "Beside nerfstudio".
INTEROP_VENV ?= /tmp/recon-interop-venv
interop:
	bash scripts/interop.sh $(INTEROP_VENV)

clean:
	rm -rf outputs .pytest_cache
