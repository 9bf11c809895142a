# lepton-edge: `make demo` and `make test` work on a fresh machine; both set up what is missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# The reference firmware boards `make test` runs or links (firmware_bridge/firmware/boards/).
FIRMWARE_BOARDS := host qemu-m4 qemu-m7 nucleo-l4r5zi
TOOLCHAIN_PKGS  := gcc-arm-none-eabi libnewlib-arm-none-eabi libstdc++-arm-none-eabi-newlib qemu-system-arm
# What the fleet tests start on loopback: Prometheus (and promtool), headless Chromium with its driver,
# PostgreSQL (the controller's second store) and a NATS cluster (a clustered MQTT broker).
FLEET_PKGS      := prometheus chromium chromium-driver postgresql nats-server

.PHONY: demo test setup mosquitto toolchain fleet-tools firmware bench clean lock

# The demo never builds firmware: it runs the qemu-m4 board when its build is cached, else the simulator.
demo: setup
	@$(PY) -m lepton_edge demo

# The firmware is built before pytest starts (no test builds it): cached by its inputs in
# ~/.cache/lepton-edge/firmware, so a second run only checks the keys. ruff and mypy (configured in
# pyproject.toml) check the code first. pytest runs on every core (pytest-xdist), a file's tests on one
# worker (tests/conftest.py groups them); PYTEST_WORKERS=0 runs them in one process.
PYTEST_WORKERS ?= auto
test: setup firmware
	@$(VENV)/bin/ruff check --quiet .
	@$(VENV)/bin/mypy
	@$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadgroup

bench: setup
	@$(PY) bench/run_all.py

setup: $(STAMP) mosquitto toolchain fleet-tools

# Installs the exact versions of $(LOCK) (lepton-edge[all] resolved on the dev/CI machine: Python 3.11,
# x86_64), then the kit itself without resolving again. Re-installs only when the lock or pyproject.toml
# changes; quiet when already set up. Boards install `.[device]` from pyproject.toml's markers instead.
LOCK := requirements.lock
$(STAMP): $(LOCK) pyproject.toml
	@test -x $(PY) || { echo "creating $(VENV)"; $(PYTHON) -m venv $(VENV); }
	@echo "installing lepton-edge[all] from $(LOCK) into $(VENV) (first run takes a few minutes)"
	@{ $(PY) -m pip install --disable-pip-version-check --upgrade pip && \
	   $(PY) -m pip install --disable-pip-version-check -r $(LOCK) && \
	   $(PY) -m pip install --disable-pip-version-check --no-deps -e .; } > $(VENV)/install.log 2>&1 \
	   || { tail -40 $(VENV)/install.log; echo "install failed; full log in $(VENV)/install.log"; exit 1; }
	@touch $(STAMP)

# Refreshes $(LOCK) to the newest versions pyproject.toml allows (uv comes with the dev extra); then
# `make test` installs them. UPGRADE= keeps the locked versions and only adds or drops what changed.
UPGRADE ?= --upgrade
lock: $(STAMP)
	@$(VENV)/bin/uv pip compile pyproject.toml --extra all --python $(PY) $(UPGRADE) --quiet \
	   --custom-compile-command "make lock" -o $(LOCK)
	@echo "$(LOCK): $$(grep -c '==' $(LOCK)) pins; run make test to install and check them"

# The tests start their own Mosquitto on free loopback ports; it only has to be installed.
mosquitto:
	@command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto || { \
	  echo "installing mosquitto with apt-get"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq mosquitto >/dev/null; }

# The ARM toolchain (newlib, libstdc++) and QEMU, installed with apt-get when missing (g++ builds the
# host board; patch is what ../shared/third_party/tflm-tree.sh needs to lay out the TFLM tree).
toolchain:
	@ok=1; \
	command -v arm-none-eabi-g++ >/dev/null 2>&1 || ok=0; \
	command -v qemu-system-arm >/dev/null 2>&1 || ok=0; \
	command -v g++ >/dev/null 2>&1 || ok=0; \
	command -v patch >/dev/null 2>&1 || ok=0; \
	if [ $$ok = 1 ]; then \
	  case "$$(arm-none-eabi-gcc -print-file-name=nano.specs)" in /*) ;; *) ok=0;; esac; \
	  case "$$(arm-none-eabi-g++ -mthumb -mcpu=cortex-m4 -mfloat-abi=hard -mfpu=fpv4-sp-d16 -print-file-name=libstdc++_nano.a)" in /*) ;; *) ok=0;; esac; \
	fi; \
	if [ $$ok = 0 ]; then \
	  echo "installing the firmware toolchain with apt-get: $(TOOLCHAIN_PKGS) g++ patch"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(TOOLCHAIN_PKGS) g++ make patch >/dev/null; \
	fi

# Prometheus, promtool, chromium, chromedriver, PostgreSQL and nats-server, installed with apt-get when any
# is missing.
fleet-tools:
	@ok=1; for c in prometheus promtool chromium chromedriver nats-server; do command -v $$c >/dev/null 2>&1 || ok=0; done; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || ok=0; \
	if [ $$ok = 0 ]; then \
	  echo "installing $(FLEET_PKGS) with apt-get"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $(FLEET_PKGS) >/dev/null; \
	fi

# `lepton-edge firmware build` per board: the first run compiles TFLite Micro (minutes), later runs
# find every build in the cache. Without any TFLM tree (no ../shared) it skips, as the tests do,
# unless LEPTON_REQUIRE_SHARED=1.
firmware: setup
	@skip=--skip-if-no-tree; [ "$$LEPTON_REQUIRE_SHARED" = 1 ] && skip=; \
	for b in $(FIRMWARE_BOARDS); do $(PY) -m lepton_edge firmware build --board $$b $$skip || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache demo-out
