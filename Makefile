# RMNet in Caffe: the commands the README shows.
#   make setup         Debian packages, Caffe built from source (cached), .venv wired to it
#   make test          setup if needed, then the whole test suite
#   make prototxt      regenerate prototxt/ and solvers/ from generator/ (committed files)
#   make docker-check  run docker/Dockerfile's steps in a fresh Debian root (debootstrap + chroot)

SHELL := /bin/bash
PYTHON := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: setup test prototxt docker-check

setup:
	@bash scripts/setup.sh

test: setup
	$(PYTHON) -m pytest tests $(PYTEST_ARGS)

prototxt: setup
	$(PYTHON) -m generator --out prototxt --solvers solvers

docker-check:
	@/usr/bin/python3 scripts/docker_check.py docker/Dockerfile
