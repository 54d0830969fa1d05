# Every target sets up what it needs first: a fresh machine runs `make train` or `make test`.
# Versions are pinned in constraints.txt; the CUDA check's torch is pinned here.
PYTHON ?= python3
VENV ?= .venv
CUDA_VENV ?= .venv-cuda
TORCH_CUDA_VERSION ?= 2.14.1
MAX_JOBS ?= 2
BIN := $(VENV)/bin
# One torch thread: two on these two shared cores run ~4x slower (ARCHITECTURE.md, Build).
RUN_ENV := OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
SOURCES := setup.py pyproject.toml constraints.txt $(shell find csrc -type f)

.PHONY: install train test lint bench cuda-check ctest clean

install: $(VENV)/.installed

# Torch first, then uepo built against that very torch (--no-build-isolation), in place (-e).
$(VENV)/.installed: $(SOURCES)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt torch setuptools wheel ninja
	MAX_JOBS=$(MAX_JOBS) $(BIN)/pip install -q --no-build-isolation -c constraints.txt -e ".[test,adroit,video,sweep]"
	$(BIN)/python -c "import uepo; print('uepo kernels:', uepo.backend('cpu'))"
	touch $@

train: install
	$(RUN_ENV) $(BIN)/python -m uepo.train

lint: install
	$(BIN)/ruff check uepo tests benchmarks scripts

test: install lint
	$(RUN_ENV) $(BIN)/python -m pytest -q

bench: install
	$(RUN_ENV) $(BIN)/python -m pytest benchmarks -q -p no:cacheprovider \
		--benchmark-min-rounds=7 --benchmark-max-time=1.0 --benchmark-json=benchmarks/raw.json
	$(RUN_ENV) $(BIN)/python -m benchmarks.report benchmarks/raw.json benchmarks/latest.json

# Compiles the CUDA kernels with the CUDA build of torch and nvcc (no GPU needed) and checks
# that they are in the library; then runs the CPU tests of the ops in that build.
cuda-check:
	test -x $(CUDA_VENV)/bin/python || $(PYTHON) -m venv $(CUDA_VENV)
	$(CUDA_VENV)/bin/pip install -q --upgrade pip
	mkdir -p build && grep -v '^torch==' constraints.txt > build/constraints-cuda.txt
	$(CUDA_VENV)/bin/pip install -q torch==$(TORCH_CUDA_VERSION) -c build/constraints-cuda.txt setuptools wheel ninja pytest numpy
	# --no-deps: the check and the op tests need torch alone, already here.
	UEPO_CUDA=1 MAX_JOBS=$(MAX_JOBS) $(CUDA_VENV)/bin/pip install -q --no-build-isolation --no-deps --force-reinstall .
	cd /tmp && $(RUN_ENV) $(abspath $(CUDA_VENV))/bin/python -m uepo.cuda_check
	cd /tmp && $(RUN_ENV) $(abspath $(CUDA_VENV))/bin/python -m pytest -q -p no:cacheprovider --noconftest $(CURDIR)/tests/test_ops.py

# The kernels as a plain libtorch library with a C++ test (ctest), for kernel work.
ctest: install
	cmake -S . -B build/cmake -DCMAKE_PREFIX_PATH="$$($(BIN)/python -c 'import torch; print(torch.utils.cmake_prefix_path)')" -DCMAKE_BUILD_TYPE=Release > /dev/null
	cmake --build build/cmake -j $(MAX_JOBS)
	cd build/cmake && ctest --output-on-failure

clean:
	rm -rf build benchmarks/raw.json uepo/_C*.so *.egg-info
