"""The agent's configuration file: the example loads, every mistake is one line naming section and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent_helpers import keypair
from conftest import REPO, assert_one_line_error, run_cli
from lepton_edge.agent.config import load_config, parse_listen
from lepton_edge.errors import BadInput

EXAMPLE = REPO / "examples" / "agent.toml"


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("cfg")
    keypair(d / "keys")
    return d


def example_copy(directory: Path, store: Path) -> Path:
    """The example config beside a keys/ directory, with the store moved somewhere writable."""
    text = EXAMPLE.read_text().replace('dir = "/var/lib/lepton-edge/store"', f'dir = "{store}"')
    path = directory / "agent.toml"
    path.write_text(text)
    return path


def test_example_config_loads_with_every_documented_key(key_dir, tmp_path):
    cfg = load_config(example_copy(key_dir, tmp_path / "store"))
    assert (cfg.device.id, cfg.device.fleet, cfg.device.profile.name) == ("pi-kitchen-01", "home", "raspberry-pi-4")
    assert (cfg.runtime.backend, cfg.runtime.threads) == ("auto", 1)
    assert cfg.store_dir == tmp_path / "store"
    assert (cfg.api.listen.host, cfg.api.listen.port) == ("127.0.0.1", 8787)
    assert cfg.security.require_signature and len(cfg.security.trusted_keys) == 1
    assert cfg.security.trusted_key_sources[0] == str(key_dir / "keys" / "signing.pub")  # relative to the file
    assert cfg.mqtt is None  # commented out in the example: the agent runs without it
    assert cfg.health.latency_budget_ms == 1000


def write(tmp_path: Path, key_dir: Path, replace: tuple[str, str] | None = None, append: str = "") -> Path:
    text = example_copy(key_dir, tmp_path / "store").read_text()
    if replace:
        assert replace[0] in text
        text = text.replace(*replace)
    path = key_dir / f"variant-{abs(hash((replace, append)))}.toml"
    path.write_text(text + append)
    return path


@pytest.mark.parametrize("replace, append, message", [
    (('backend = "auto"', 'backend = "gpu"'), "", r"\[runtime\] backend must be"),
    (('threads = 1 ', 'threads = 0 '), "", r"\[runtime\] threads must be an integer from 1"),
    (('id = "pi-kitchen-01"', 'id = "a/b"'), "", r"\[device\] id must be"),
    (('profile = "raspberry-pi-4"', 'profile = "raspbery-pi-4"'), "", r"closest: raspberry-pi-4"),
    (('listen = "127.0.0.1:8787"', 'listen = "localhost"'), "", r"\[api\] listen 'localhost': expected HOST:PORT"),
    (('require_signature = true', 'require_signature = "yes"'), "", r"require_signature must be true or false"),
    (('trusted_keys = ["keys/signing.pub"]', 'trusted_keys = []'), "", r"needs at least one entry in trusted_keys"),
    (('trusted_keys = ["keys/signing.pub"]', 'trusted_keys = ["keys/missing.pub"]'), "", r"no such file"),
    (None, "\n[runtime2]\n", r"unknown section \[runtime2\] \(did you mean \[runtime\]\?\)"),
    (None, "\n[mqtt]\nbroker = \"http://x\"\n", r"\[mqtt\] broker must be a URL mqtt://"),
    (None, "\n[mqtt]\nbroker = \"mqtt://h\"\nkeepalive = 1\n", r"\[mqtt\] keepalive must be an integer from 5"),
    (None, "\n[mqtt]\nbroker = \"mqtts://h:8883\"\nca = \"nope.pem\"\n", r"\[mqtt\] ca: no such file"),
    (("runs = 5", "rnus = 5"), "", r"unknown key 'rnus' in \[health\] \(did you mean 'runs'\?\)"),
    (('profile = "raspberry-pi-4"', 'profile = "raspberry-pi-4"\ntags = ["site berlin"]'), "",
     r"\[device\] tags must be an array of at most 32 tags"),
    (('profile = "raspberry-pi-4"', 'profile = "raspberry-pi-4"\ntags = "site:berlin"'), "",
     r"\[device\] tags must be an array"),
    (('profile = "raspberry-pi-4"', 'profile = "raspberry-pi-4"\ntags = ["a", "b", "a"]'), "",
     r"\[device\] tags lists 'a' more than once"),
    (('profile = "raspberry-pi-4"', 'profile = "raspberry-pi-4"\ntags = [' + ", ".join(f'"t{i}"' for i in range(33))
      + "]"), "", r"\[device\] tags must be an array of at most 32"),
])
def test_mistakes_are_named(key_dir, tmp_path, replace, append, message):
    with pytest.raises(BadInput, match=message):
        load_config(write(tmp_path, key_dir, replace, append))


def test_device_tags_are_kept_in_order(key_dir, tmp_path):
    assert load_config(example_copy(key_dir, tmp_path / "store")).device.tags == ()
    cfg = load_config(write(tmp_path, key_dir, ('profile = "raspberry-pi-4"',
                                                'profile = "raspberry-pi-4"\ntags = ["site:berlin", "hw:pi4"]')))
    assert cfg.device.tags == ("site:berlin", "hw:pi4")


def test_bad_tags_are_one_line_errors_on_the_command_line(key_dir, tmp_path):
    path = write(tmp_path, key_dir, ('profile = "raspberry-pi-4"', 'profile = "raspberry-pi-4"\ntags = [""]'))
    line = assert_one_line_error(run_cli("agent", "--config", str(path)))
    assert "[device] tags must be" in line


def test_mqtt_section_is_validated_and_kept(key_dir, tmp_path):
    (key_dir / "ca.pem").write_text("not checked here, only that it exists\n")
    cfg = load_config(write(tmp_path, key_dir, append='\n[mqtt]\nbroker = "mqtts://u:p@broker:8883"\nca = "ca.pem"\n'))
    assert cfg.mqtt.broker == "mqtts://u:p@broker:8883"
    assert cfg.mqtt.ca == key_dir / "ca.pem" and cfg.mqtt.keepalive == 60


def test_listen_forms():
    assert parse_listen("[::1]:9000").host == "::1"
    assert parse_listen("0.0.0.0:0").port == 0
    unix = parse_listen("unix:/run/x.sock")
    assert unix.is_unix and unix.path == Path("/run/x.sock") and unix.url() == "unix:/run/x.sock"
    assert parse_listen("/run/y.sock").path == Path("/run/y.sock")
    for bad in ("::1:80", "host:99999", "[nothost]:80", "unix:"):
        with pytest.raises(BadInput):
            parse_listen(bad)


def test_cli_reports_a_bad_config_in_one_line(tmp_path):
    missing = run_cli("agent", "--config", tmp_path / "nope.toml")
    assert "config file not found" in assert_one_line_error(missing, 2)
    broken = tmp_path / "broken.toml"
    broken.write_text("[device\nid=")
    assert "not valid TOML" in assert_one_line_error(run_cli("agent", "--config", broken), 2)


def test_systemd_unit_is_hardened_and_uses_the_example_config_path():
    unit = (REPO / "packaging" / "lepton-edge-agent.service").read_text()
    for directive in ("User=", "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
                      "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6", "Restart=on-failure",
                      "ReadWritePaths=/var/lib/lepton-edge", "ExecReload=/bin/kill -HUP $MAINPID",
                      "--config /etc/lepton-edge/agent.toml"):
        assert directive in unit
