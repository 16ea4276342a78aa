# handover: two commands matter.
#   make demo   set up, generate a 10,000-subscriber operator, run the migration DAG, summarise
#   make test   set up and run the whole test suite (lint, layers, types, unit, integration, e2e)
SHELL := /bin/bash
.DEFAULT_GOAL := help
SUBSCRIBERS ?= 10000
# ACQUIRER=1: the demo's target already holds customers of its own (docs/identity.md)
ACQUIRER ?=

.PHONY: help setup demo test lint unit integration e2e up down bench clean

help:
	@grep -E '^#   make' Makefile | sed 's/^#   //'

setup:
	@scripts/bootstrap.sh

demo: setup
	@SUBSCRIBERS=$(SUBSCRIBERS) ACQUIRER=$(ACQUIRER) scripts/demo.sh

test: setup
	@scripts/test.sh

lint: setup
	@.venv/bin/ruff check .
	@.venv/bin/ruff format --check .
	@PYTHONPATH=include .venv/bin/lint-imports --no-logo pyproject.toml
	@.venv/bin/mypy

up: setup
	@scripts/up.sh

down:
	@scripts/down.sh

bench: setup
	@scripts/bench.sh $(BENCH_ARGS)

clean: down
	rm -rf .state
