"""Shared fixtures: where ../shared lives, and skipping (or failing, in CI) without it."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import NoReturn

import pytest

# Fixture modules that test files load with pytest_plugins and also import from: rewrite their asserts.
pytest.register_assert_rewrite("pg_fixtures", "nats_cluster_fixtures")

# Fixtures for every test file: pg_server and pg_url, a private PostgreSQL (tests/pg_fixtures.py). pytest takes
# pytest_plugins only from a conftest it loads at start-up, which this one is (testpaths, or a tests/ file named).
pytest_plugins = ["pg_fixtures"]

REPO = Path(__file__).resolve().parent.parent
SHARED = (REPO.parent / "shared").resolve()
MLPERF = SHARED / "models" / "mlperf-tiny"

MLPERF_INT8 = {
    "kws": MLPERF / "kws" / "kws_ref_model_int8.tflite",
    "ic": MLPERF / "ic" / "pretrainedResnet_int8.tflite",
    "ad": MLPERF / "ad" / "ad01_int8.tflite",
}
MLPERF_FLOAT = {
    "kws": MLPERF / "kws" / "kws_ref_model_float32.tflite",
    "ic": MLPERF / "ic" / "pretrainedResnet.tflite",
    "ad": MLPERF / "ad" / "ad01_fp32.tflite",
}


def skip_or_fail(message: str) -> NoReturn:
    """Something a test needs is missing (../shared, a server, a tool): skip, or fail in CI, where
    LEPTON_REQUIRE_SHARED=1 says everything must run."""
    if os.environ.get("LEPTON_REQUIRE_SHARED") == "1":
        pytest.fail(message + " (LEPTON_REQUIRE_SHARED=1)")
    pytest.skip(message)


def require_shared(path: Path) -> Path:
    """Return ``path`` inside ../shared, or skip the test (fail when LEPTON_REQUIRE_SHARED=1)."""
    if path.exists():
        return path
    skip_or_fail(f"{path} is missing: the MLPerf Tiny models and data live in ../shared beside the repo")


def require_tflm_tree() -> Path:
    """The TFLite Micro source tree (laid out already), or skip (fail when LEPTON_REQUIRE_SHARED=1)."""
    from lepton_edge.firmware_build import build as fwbuild

    try:
        return fwbuild.tflm_tree(lay_out=False)
    except fwbuild.ToolMissing as exc:
        skip_or_fail(str(exc))


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (``make test``: ``-n auto --dist loadgroup``) the tests of one file run on one
    worker: they share module-scoped devices, brokers and built models. The hardware-in-the-loop
    tests share session-scoped devices across their files: they are one group."""
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            path = Path(str(item.path)).resolve()
            group = "hil_tests" if path.parent.name == "hil_tests" else path.relative_to(REPO).as_posix()
            item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(params=sorted(MLPERF_INT8))
def mlperf_int8(request) -> Path:
    return require_shared(MLPERF_INT8[request.param])


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``lepton-edge`` in a subprocess, as a user would."""
    full_env = dict(os.environ)
    full_env.pop("LEPTON_DEBUG", None)
    if env:
        full_env.update(env)
    return subprocess.run([sys.executable, "-m", "lepton_edge", *map(str, args)], cwd=cwd or REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def run_on_a_terminal(*args: str, timeout: float = 90) -> tuple[int, str, str]:
    """The CLI with stderr on a pseudo-terminal: (exit code, stdout, what the terminal showed)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "lepton_edge", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=slave, text=True, env={k: v for k, v in os.environ.items() if k != "LEPTON_DEBUG"})
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(master)
        out = proc.stdout.read()
        proc.stdout.close()
    return proc.wait(10), out, seen.decode(errors="replace")


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int = 2) -> str:
    """The bad-input contract: exit ``code``, one line on stderr, no traceback."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


@pytest.fixture(scope="session")
def sample_models(tmp_path_factory):
    """``sample_models(name) -> Path``: the project's own Keras-made int8 models, built once per session."""
    from lepton_edge.tools.samples import make_sample

    out = tmp_path_factory.mktemp("samples")
    return lambda name: make_sample(name, out)


# --- fixtures shared by several test files (pytest finds them here; never import them by name) --------


@pytest.fixture(scope="session")
def signing(tmp_path_factory):
    """``(private_key, public_key_path)`` for the session."""
    from agent_helpers import keypair

    return keypair(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="session")
def make_artifact(tmp_path_factory, signing):
    """``make_artifact(model="kws", version=1, **build_artifact_options) -> Path``: a signed artifact of an
    MLPerf Tiny int8 model (or "two-io", a tiny two-input two-output model), built once per arguments."""
    from agent_helpers import build_artifact, two_in_two_out_model

    root = tmp_path_factory.mktemp("artifacts")
    made: dict[str, Path] = {}

    def make(model: str = "kws", version: int = 1, *, signed: bool = True, **options) -> Path:
        key = repr((model, version, signed, tuple(sorted(options.items(), key=lambda kv: kv[0]))))
        if key not in made:
            if model == "two-io":
                path = root / "two_in_two_out.tflite"
                if not path.exists():
                    path.write_bytes(two_in_two_out_model())
            else:
                path = require_shared(MLPERF_INT8[model])
            out = root / f"{model}-v{version}-{len(made)}"
            made[key] = build_artifact(out, path, version=version,
                                       private_key=signing[0] if signed else None, **options)
        return made[key]

    return make


@pytest.fixture
def broker(tmp_path):
    """A Mosquitto of the test's own on free loopback ports, with room for the queues of big transfers."""
    from mosquitto import Broker

    with Broker(tmp_path, max_queued_messages=100000) as b:
        yield b


FLEET_STORES = ("sqlite", "postgresql")


def pytest_configure(config):
    config.addinivalue_line("markers", "fleet_stores(*stores): the controller stores the test runs on through "
                                       "the fleet_db fixture (default: sqlite and postgresql)")


def pytest_generate_tests(metafunc):
    """Every test that uses ``fleet_db`` (and so ``fleet``) runs once per store, ids ``sqlite`` and
    ``postgresql``, unless a ``fleet_stores`` mark names fewer."""
    if "fleet_db" not in metafunc.fixturenames:
        return
    mark = metafunc.definition.get_closest_marker("fleet_stores")
    if mark is not None:
        stores = mark.args
    else:
        stores = FLEET_STORES
    unknown = set(stores) - set(FLEET_STORES)
    if unknown or not stores:
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: fleet_stores takes some of {FLEET_STORES}")
    metafunc.parametrize("fleet_db", stores, indirect=True)


@pytest.fixture
def fleet_db(request) -> str | None:
    """What ``fleet serve --db`` takes: None (fleet.db in the controller's store) for ``sqlite``, a fresh
    PostgreSQL database's URL for ``postgresql`` (skips without PostgreSQL, fails if LEPTON_REQUIRE_SHARED=1)."""
    store = getattr(request, "param", "sqlite")
    return None if store == "sqlite" else request.getfixturevalue("pg_url")


@pytest.fixture
def fleet(tmp_path, broker, fleet_db):
    """A fleet controller with its HTTP API on ``broker`` (:class:`fleet_helpers.Fleet`), on each store."""
    from fleet_helpers import Fleet

    f = Fleet(tmp_path, broker, db=fleet_db)
    yield f
    f.close()


@pytest.fixture
def sim_process(tmp_path):
    """``sim_process(*device_sim_args, profile=...) -> SimProcess``: ``lepton-edge device-sim`` processes,
    stopped after the test."""
    from bridge_helpers import SimProcess

    started = []

    def start(*args: str, profile: str = "arduino-nano-33-ble"):
        sim = SimProcess(tmp_path / f"state{len(started)}", *args, profile=profile)
        started.append(sim)
        return sim

    yield start
    for sim in started:
        sim.stop()


def _started_board(name: str, tmp_path_factory):
    from device_targets import FirmwareBoard

    board = FirmwareBoard(name, tmp_path_factory.mktemp(f"board-{name}") / "slots.bin")
    board.start()
    return board


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    """The reference firmware built for ``host`` (ASan), running for the test module (skips without its build)."""
    board = _started_board("host", tmp_path_factory)
    yield board
    board.stop()


@pytest.fixture(scope="module")
def qemu_m4(tmp_path_factory):
    """The reference firmware for ``qemu-m4`` (Cortex-M4F, CMSIS-NN) under QEMU, for the test module."""
    board = _started_board("qemu-m4", tmp_path_factory)
    yield board
    board.stop()


@pytest.fixture(scope="module")
def qemu_m7(tmp_path_factory):
    """The reference firmware for ``qemu-m7`` (Cortex-M7, CMSIS-NN) under QEMU, for the test module."""
    board = _started_board("qemu-m7", tmp_path_factory)
    yield board
    board.stop()
