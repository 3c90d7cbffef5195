# edgeml.fleet: two commands for a newcomer, `make demo` and `make test`.
# Everything else here is a step of those two, usable on its own.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
COLLECTION_LINK := .collections/ansible_collections/edgeml/fleet
BUILD_DIR := .build
SANITY_ROOT := $(BUILD_DIR)/sanity/ansible_collections/edgeml/fleet
LAB_INVENTORY := inventories/lab/hosts.yml
PYTEST := $(BIN)/python -m pytest

export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export ANSIBLE_FORCE_COLOR := $(if $(CI),0,1)
export PATH := $(BIN):$(PATH)
# Podman needs the project's containers.conf only on some kernels; the probe says when.
export CONTAINERS_CONF := $(shell roles/lab/files/podman-conf-probe.sh)

.PHONY: help setup demo test lint sanity unit server-test integration lab-up lab-down \
        survey build clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

# --- installation ------------------------------------------------------------

setup: $(VENV)/.installed $(COLLECTION_LINK) ## Install system packages, the virtualenv and the collection
	@scripts/install-system-packages.sh

$(VENV)/.installed: requirements.txt server/requirements.txt
	@scripts/install-system-packages.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

# The checkout itself is the collection: link it into the project-local collections path.
$(COLLECTION_LINK):
	mkdir -p $(dir $@)
	ln -sfn ../../.. $@

# --- the two commands ----------------------------------------------------------

demo: setup lab-up survey ## Bring the lab fleet up and survey it

test: setup lint sanity unit server-test integration ## Run the whole suite

# --- lab ---------------------------------------------------------------------------

lab-up: setup ## Bring the local lab fleet up (idempotent)
	ansible-playbook playbooks/lab_up.yml

lab-down: setup ## Remove every container, volume, network and image the lab made
	ansible-playbook playbooks/lab_down.yml

survey: setup ## Print host, OS, podman version, site and ring of every lab host
	ansible-playbook -i $(LAB_INVENTORY) playbooks/fleet_survey.yml

# --- tests -------------------------------------------------------------------------

lint: setup ## ansible-lint (production profile) and ruff
	ansible-lint --profile production
	ruff check .

# ansible-test wants the collection at ansible_collections/NAMESPACE/NAME: test a copy
# of exactly what `ansible-galaxy collection build` ships. The copy gets its own git
# repository because ansible-test asks git which files exist, and this checkout's
# .gitignore hides .build/. ansible-test downloads get-pip.py from a host this lab
# cannot reach: scripts/ansible-test-get-pip.py stands in for it in ansible-test's cache.
ANSIBLE_TEST_GET_PIP := $(HOME)/.ansible/test/cache/get_pip_24_2.py
sanity: setup ## ansible-test sanity on the built collection
	rm -rf $(BUILD_DIR)/sanity $(BUILD_DIR)/dist
	mkdir -p $(SANITY_ROOT) $(BUILD_DIR)/dist $(dir $(ANSIBLE_TEST_GET_PIP))
	install -m 0644 scripts/ansible-test-get-pip.py $(ANSIBLE_TEST_GET_PIP)
	ansible-galaxy collection build --force --output-path $(BUILD_DIR)/dist . >/dev/null
	tar -xzf $(BUILD_DIR)/dist/edgeml-fleet-*.tar.gz -C $(SANITY_ROOT)
	cd $(SANITY_ROOT) && git init -q && ansible-test sanity --venv --python 3.11 --color no

unit: setup ## Unit tests (no lab needed)
	$(PYTEST) tests/unit

server-test: setup ## Model server tests (real onnxruntime and HTTP on 127.0.0.1)
	$(PYTEST) -c server/pytest.ini server/tests

integration: lab-up ## Integration tests on the lab fleet (testinfra over SSH)
	$(PYTEST) -m lab tests/integration

build: setup ## Build the collection tarball into .build/dist
	mkdir -p $(BUILD_DIR)/dist
	ansible-galaxy collection build --force --output-path $(BUILD_DIR)/dist .

clean: ## Remove build output and caches (not the lab: use lab-down)
	rm -rf $(BUILD_DIR) .pytest_cache .ruff_cache tests/output
