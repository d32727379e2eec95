# RMNet in Caffe: the commands the README shows.
#   make setup         Debian packages, Caffe built from source (cached), .venv wired to it
#   make setup GPU=1   the same Caffe built with CUDA + NCCL (cached), into .venv-gpu; with GPU=1
#                      every target below uses .venv-gpu (the CPU build stays the default).
#                      CUDA=wheels|debian|/path/to/toolkit picks the toolkit (docs/gpus.md;
#                      default: by the NVIDIA driver, else NVIDIA's CUDA 13 wheels)
#   make setup GPU=1 OFFLINE=dist/rmnet-gpu-bundle.tar.xz   the CUDA build on a machine with no
#                      network, from the bundle below and its own nvcc/Python (docs/gpu-offline.md)
#   make gpu-bundle    the archive OFFLINE= takes (on a connected Debian machine; BUNDLE=path)
#   make test          setup if needed, then the whole test suite
#   make test-offline  the same, where the optional packages (OpenVINO, NNCF, FAISS, ONNX) may be
#                      absent: tests failing only for that are reported as skipped, naming them
#   make demo          the main job: synthetic dataset, train the light RMNet, evaluate (~10 min)
#                      make demo DATA=/path/to/dataset [FORMAT=msmt17|cuhk03-labeled|...] ITERS=N
#                                         on another dataset (any layout rmnet.data.datasets reads)
#   make train DATA=/path/to/Market-1501-v15.09.15    the paper's full training (150k iterations)
#   make prototxt      regenerate prototxt/ and solvers/ from generator/ (committed files)
#   make ablations     render the Table 2 rows into runs/ablations/{prototxt,solvers}/
#   make docker-check  run docker/Dockerfile's steps in a fresh Debian root (debootstrap + chroot)
#   make docker-check-gpu  the same for docker/Dockerfile.gpu (CUDA build; long, not in .ci/run)
#   make gpu-check     on a machine with a GPU: tools/gpu_check.py (exit 3: no GPU), with the
#                      .venv-gpu there (setup GPU=1 only when it is missing); its JSON report
#                      goes to REPORT=dir (default runs/gpu-check), BUDGET=minutes (default 6)

SHELL := /bin/bash
GPU ?=
CUDA ?=
VENV := $(if $(filter 1,$(GPU)),.venv-gpu,.venv)
PYTHON := $(VENV)/bin/python
PYTEST_ARGS ?=
DATA ?=
ITERS ?=
FORMAT ?=
OFFLINE ?=
BUNDLE ?= dist/rmnet-gpu-bundle.tar.xz

.PHONY: setup test test-offline demo train prototxt ablations docker-check docker-check-gpu gpu-check gpu-bundle

setup:
ifneq ($(OFFLINE),)
	@$(if $(filter 1,$(GPU)),,echo "OFFLINE= builds the CUDA Caffe: make setup GPU=1 OFFLINE=$(OFFLINE)" >&2; exit 2;) bash scripts/offline_setup.sh "$(OFFLINE)"
else
	@$(if $(CUDA),RMNET_CUDA="$(CUDA)" )bash scripts/setup.sh $(if $(filter 1,$(GPU)),--gpu)
endif

test: setup
	$(PYTHON) -m pytest tests $(PYTEST_ARGS)

test-offline: setup
	$(PYTHON) -m pytest tests -p tests.absent_packages $(PYTEST_ARGS)

demo: setup
	$(PYTHON) tools/demo.py $(if $(DATA),--data "$(DATA)") $(if $(FORMAT),--format $(FORMAT)) $(if $(ITERS),--iters $(ITERS))

train: setup
	@if [ -z "$(DATA)" ]; then echo "usage: make train DATA=/path/to/Market-1501-v15.09.15 [ITERS=N]" >&2; exit 2; fi
	$(PYTHON) tools/train.py --data "$(DATA)" $(if $(FORMAT),--format $(FORMAT)) $(if $(ITERS),--iters $(ITERS))

prototxt: setup
	$(PYTHON) -m generator --out prototxt --solvers solvers

ablations: setup
	$(PYTHON) -m generator --out runs/ablations/prototxt --solvers runs/ablations/solvers --ablations

docker-check:
	@/usr/bin/python3 scripts/docker_check.py docker/Dockerfile

docker-check-gpu:
	@/usr/bin/python3 scripts/docker_check.py --gpu docker/Dockerfile.gpu

gpu-bundle:
	@bash scripts/gpu_bundle.sh "$(BUNDLE)"

REPORT ?= runs/gpu-check
BUDGET ?= 6
gpu-check:
	@if [ ! -x .venv-gpu/bin/python ] || [ ! -x .venv-gpu/bin/caffe ]; then \
	  $(MAKE) --no-print-directory setup GPU=1; fi
	.venv-gpu/bin/python tools/gpu_check.py --report "$(REPORT)" --budget-min "$(BUDGET)"
