# lepton-edge: `make demo` and `make test` work on a fresh machine; both set up what is missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test setup mosquitto bench clean

demo: setup
	@$(PY) -m lepton_edge demo

test: setup
	@$(PY) -m pytest -q

bench: setup
	@$(PY) bench/run_all.py

setup: $(STAMP) mosquitto

# Re-installs only when pyproject.toml changes; quiet when already set up.
$(STAMP): pyproject.toml
	@test -x $(PY) || { echo "creating $(VENV)"; $(PYTHON) -m venv $(VENV); }
	@echo "installing lepton-edge[all] into $(VENV) (first run takes a few minutes)"
	@{ $(PY) -m pip install --disable-pip-version-check --upgrade pip && \
	   $(PY) -m pip install --disable-pip-version-check -e '.[all]'; } > $(VENV)/install.log 2>&1 \
	   || { tail -40 $(VENV)/install.log; echo "install failed; full log in $(VENV)/install.log"; exit 1; }
	@touch $(STAMP)

# The tests start their own Mosquitto on free loopback ports; it only has to be installed.
mosquitto:
	@command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto || { \
	  echo "installing mosquitto with apt-get"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq mosquitto >/dev/null; }

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache demo-out
