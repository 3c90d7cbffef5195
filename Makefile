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
PROMETHEUS_TOOLS := $(CURDIR)/$(BUILD_DIR)/tools
PYTEST := $(BIN)/python -m pytest
# Extra pytest flags of the unit tests: `make check` runs them on two xdist workers
# (UNIT_FLAGS="-n 2", as `make test` does too); `make unit` alone runs them in one process.
UNIT_FLAGS ?=

export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export ANSIBLE_FORCE_COLOR := $(if $(CI),0,1)
export PATH := $(BIN):$(PROMETHEUS_TOOLS)/bin:$(PATH)
# ansible-rulebook needs a JDK: the one `java` on PATH runs, unless JAVA_HOME says otherwise.
export JAVA_HOME ?= $(shell j=$$(command -v java 2>/dev/null) && dirname "$$(dirname "$$(readlink -f "$$j")")")
# Podman needs the project's containers.conf only on some kernels; the probe says when.
export CONTAINERS_CONF := $(shell roles/lab/files/podman-conf-probe.sh)

.PHONY: help setup demo test check shared-artifacts lint sanity unit server-test molecule integration e2e lab-up lab-down provision \
        survey models server-image deploy-demo bench-server bench-rollout build clean \
        vm-image vm-boot-test vm-molecule vm-test ee aap-test lab-play-test monitoring

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

# --- installation ------------------------------------------------------------

setup: $(VENV)/.installed $(COLLECTION_LINK) $(PROMETHEUS_TOOLS)/bin/promtool ## Install system packages, the virtualenv and the collection
	@scripts/install-system-packages.sh

$(VENV)/.installed: requirements.txt server/requirements.txt
	@scripts/install-system-packages.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

# promtool and amtool for the monitoring role's tests, unpacked from Debian's packages.
$(PROMETHEUS_TOOLS)/bin/promtool: scripts/fetch-prometheus-tools.sh
	@scripts/fetch-prometheus-tools.sh $(PROMETHEUS_TOOLS)

# The checkout itself is the collection: link it into the project-local collections path.
$(COLLECTION_LINK):
	mkdir -p $(dir $@)
	ln -sfn ../../.. $@

# --- the two commands ----------------------------------------------------------

demo: setup models lab-up survey provision server-image deploy-demo monitoring ## The whole story on the lab fleet

# Two lanes side by side (foreground, background): see the script.
test: setup ## Run the whole suite (containers, VMs, end to end; scripts/run-test-suite.sh)
	MAKE="$(MAKE)" scripts/run-test-suite.sh

# What the VM layer and the container layers' Molecule and integration tests both use,
# made once (first in the suite's artifact lane) so that they never build it at the same
# time: the example bundles, the lab's Debian 13 base and the model server image.
shared-artifacts: models
	ansible-playbook playbooks/lab_images.yml -e lab_debian_suite=trixie
	ansible-playbook playbooks/build_server_image.yml

# --- lab ---------------------------------------------------------------------------

# One lab at a time comes up or goes down on a machine (tests/labtools.py takes the same lock).
LAB_LOCK := flock /tmp/edgeml-lab.lock
lab-up: setup ## Bring the local lab fleet up (idempotent)
	$(LAB_LOCK) ansible-playbook playbooks/lab_up.yml

lab-down: setup ## Remove every container, volume, network and image the lab (and the e2e layer's second lab) made
	$(LAB_LOCK) ansible-playbook playbooks/lab_down.yml -e '$(SECOND_LAB_SETTINGS)'
	$(LAB_LOCK) ansible-playbook playbooks/lab_down.yml

survey: setup ## Print host, OS, podman version, site and ring of every lab host
	ansible-playbook -i $(LAB_INVENTORY) playbooks/fleet_survey.yml

provision: lab-up ## Make the lab hosts ready to serve (role edge_host)
	ansible-playbook -i $(LAB_INVENTORY) playbooks/provision.yml

monitoring: lab-up ## Prometheus and Alertmanager on the lab's monitoring host (role monitoring)
	ansible-playbook -i $(LAB_INVENTORY) playbooks/monitoring.yml
	@echo "Prometheus: http://127.0.0.1:19090  Alertmanager: http://127.0.0.1:19093"

# --- models and the model server image -------------------------------------------

models: setup ## Train the example digits models and bundle their versions
	ansible-playbook playbooks/build_models.yml

server-image: lab-up ## Build the model server image and push it to the lab registry
	ansible-playbook playbooks/build_server_image.yml \
	  -e model_server_image_push_registry=127.0.0.1:5000 -e model_server_image_push_tls_verify=false

# v1 everywhere; a faulty v2 is stopped at the canary and rolled back; a good v3 everywhere.
DEPLOY := ansible-playbook -i $(LAB_INVENTORY) playbooks/deploy_model.yml -e model_deployment_registry_tls_verify=false
deploy-demo: ## Roll out v1, try the faulty v2, roll out v3, show the fleet
	$(DEPLOY) -e model_version=1.0.0
	@echo "== Trying 2.0.0, which answers wrongly: the canary must stop it =="
	@if $(DEPLOY) -e model_version=2.0.0; then echo "2.0.0 was NOT stopped" >&2; exit 1; \
	  else echo "== 2.0.0 was stopped at the canary and rolled back, as it should be =="; fi
	$(DEPLOY) -e model_version=3.0.0
	ansible-playbook -i $(LAB_INVENTORY) playbooks/fleet_status.yml

# --- Automation Platform ------------------------------------------------------------

ee: lab-up ## Build the lab execution environment (ansible-builder, podman) and push it to the lab registry
	ansible-playbook playbooks/build_ee.yml -e build_ee_push_registry=127.0.0.1:5000

# --- tests -------------------------------------------------------------------------

# The fast inner loop: the four layers that need no lab, no VM and no artifact, side by
# side on the 2 cores. The unit tests (on two xdist workers) and the server tests wait a
# lot on real servers and subprocesses, and some of their gates time out in seconds: they
# get the CPU first; lint and sanity (pure CPU) run at a lower priority in the gaps. Each
# layer's output is printed whole when it ends; every layer runs to its end even when
# another failed. `make test` runs the same layers one after the other (and the rest).
CHECK_MAKE = $(MAKE) --no-print-directory -j2 --output-sync=target --keep-going
check: setup ## Fast inner loop: lint, sanity, unit and server tests side by side (under 5 min)
	@started=$$(date +%s); \
	nice -n 10 $(CHECK_MAKE) lint sanity & static=$$!; \
	tests=0; $(CHECK_MAKE) unit server-test UNIT_FLAGS="-n 2" || tests=$$?; \
	lint=0; wait $$static || lint=$$?; \
	verdict() { [ "$$1" = 0 ] && echo passed || echo FAILED; }; \
	echo "== make check: $$(( $$(date +%s) - started ))s; lint and sanity $$(verdict $$lint), unit and server tests $$(verdict $$tests) =="; \
	[ $$lint = 0 ] && [ $$tests = 0 ]

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

# The inventory plugin's tests install Ansible's collection finder, which the other unit
# tests (plain imports through pytest's pythonpath) must not see: their own process.
unit: setup ## Unit tests (no lab needed)
	$(PYTEST) $(UNIT_FLAGS) tests/unit --ignore=tests/unit/plugins/inventory
	$(PYTEST) tests/unit/plugins/inventory

server-test: setup ## Model server tests (real onnxruntime and HTTP on 127.0.0.1)
	$(PYTEST) -c server/pytest.ini server/tests

# integration and e2e: two pytest-xdist workers, each on a lab of its own (tests/labtools.py:
# LAB), a test file at a time; the scenarios wait on SSH round trips, gates and soak windows
# more than on the CPU. Worker gw1 brings the second lab up; `make lab-down` takes both down.
SECOND_LAB_SETTINGS = $(shell cd tests && $(BIN)/python -c 'import json, labtools; print(json.dumps(labtools.SECOND_LAB.settings()))' 2>/dev/null)

# test_lab_play.py brings up a lab of its own: `make test` runs it in the background lane
# (lab-play-test), beside the e2e scenarios, not on the foreground lane's critical path.
# models first: lab-up installs the example signing key the bundles are signed with.
integration: models lab-up ## Integration tests on the lab fleet (testinfra over SSH)
	EDGEML_TEST_LABS=2 $(PYTEST) -m lab -n 2 --dist loadfile tests/integration --ignore=tests/integration/test_lab_play.py

lab-play-test: setup ## The lab role on a lab of its own: up, idempotent, killed processes, down
	$(PYTEST) -m lab tests/integration/test_lab_play.py

# Molecule builds its Debian 12 and 13 systemd images with the lab role (no registry).
molecule: setup ## Molecule scenario of edge_host on Debian 12 and 13
	ansible-playbook playbooks/lab_images.yml -e lab_debian_suite=bookworm
	ansible-playbook playbooks/lab_images.yml -e lab_debian_suite=trixie
	molecule test -s edge_host

# The monitoring loop runs after the others, alone: once, while the other worker stopped and
# started lab hosts, its ansible-rulebook (alive) stopped accepting Alertmanager's webhook
# (connection refused) and the rollback it tests never came (2026-12-07; cause not found).
e2e: models lab-up ## End-to-end rollout scenarios on the lab fleet (and a second lab beside it)
	EDGEML_TEST_LABS=2 $(PYTEST) -m lab -n 2 --dist loadfile --durations=40 tests/e2e \
	  --ignore=tests/e2e/test_monitoring_loop.py
	$(PYTEST) -m lab --durations=10 tests/e2e/test_monitoring_loop.py

# Its own lab (edgeml-aap), so that it can run beside the e2e scenarios.
aap-test: setup models ## Job templates and the release workflow through ansible-runner in the lab EE
	$(PYTEST) -m lab tests/aap

# --- OS images and VMs (qemu under TCG; see docs/os_image.md) ---

vm-image: setup models ## Build the debian OS image (raw, qcow2, kernel, initrd)
	ansible-playbook playbooks/build_image.yml

vm-boot-test: vm-image ## Boot the OS image in qemu (TCG) and check it serves
	ansible-playbook playbooks/boot_test.yml

vm-molecule: vm-image ## edge_host, then model_deployment (gates, a wrong-answer version rolled back) in one VM
	molecule test -s vm

vm-test: setup models ## VM layer tests: image build, then one VM: boot test and Molecule (about 12 min)
	EDGEML_VM_REQUIRED=1 $(PYTEST) -m vm tests/vm

# --- benchmarks (not tests) -------------------------------------------------------------

bench-server: server-image ## Model server vs raw onnxruntime, KServe and MLServer
	$(BIN)/python bench/server_bench.py --setup
	$(BIN)/python bench/server_bench.py --image-edgeml localhost/edgeml-model-server:0.1.0

bench-rollout: server-image models ## Rollout wall time and failed requests on 4, 8, 16 hosts vs a plain playbook
	$(BIN)/python bench/rollout_bench.py --hosts 4 8 16

build: setup ## Build the collection tarball into .build/dist
	mkdir -p $(BUILD_DIR)/dist
	ansible-galaxy collection build --force --output-path $(BUILD_DIR)/dist .

clean: ## Remove build output and caches (not the lab: use lab-down)
	rm -rf $(BUILD_DIR) .pytest_cache .ruff_cache tests/output
