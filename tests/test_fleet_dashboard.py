"""Issue 11 "The dashboard": the controller's web page, driven in headless Chromium (Debian's chromium and
chromium-driver, Selenium from PyPI) against a real controller, a real Mosquitto and devices publishing
status and telemetry.

It checks that the page loads without console errors, that the devices and numbers it shows are the HTTP
API's, that a device's charts draw its stored telemetry, that text from devices is shown as text (never
markup), that a rollout's progress appears, and the token path: on a controller that needs a token the
page asks for it once, keeps it in sessionStorage and never puts it in a URL.

``LEPTON_SCREENSHOT=path.png`` saves a full-page screenshot: the fleet test's page, replaced by the rollout
test's (a completed rollout, its devices and one device's charts) when that one runs.
"""

from __future__ import annotations

import math
import os
import re
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest

from fleet_helpers import FLEET, api
from lepton_edge.console import human_bytes
from lepton_edge.fleet.dashboard import dashboard_asset
from lepton_edge.fleet.http_api import HttpApi, HttpListen, resolve_token
from lepton_edge.fleet.series import telemetry_series
from lepton_edge.fleet.store import FleetDB, TelemetryRecord
from lepton_edge.mqtt import DeviceTopics, ModelInfo, Status, Telemetry

try:
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # the browser tests skip (the browser fixture says why)
    webdriver = None

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# The browser tests check the page against the HTTP API, whatever the store: they run on SQLite only (they
# are slow); the API's answers on PostgreSQL are the other fleet tests'.
BROWSER_ONE_STORE = pytest.mark.fleet_stores("sqlite")

TOKEN_KEY = "lepton-edge.api-token"          # dashboard_static/api.js
NONE = "\u2013"                                # the page's "no value" (an en dash)
EVIL = '<img src=x onerror="window.__pwned=1">'  # a model name is any string the device sends


@dataclass
class SimSpec:
    """One device's fixed figures; its latency wobbles around them so the charts have a shape."""

    device: str
    model: ModelInfo | None
    p50: float
    rate: float
    rss: int
    tags: tuple[str, ...] = ()
    budget: float | None = None
    online: bool = True


def _clean(value: float, digits: int = 3) -> float:
    """Rounded, and never an exact binary tie (x.125, x.25, ...) where JS toFixed and Python format differ."""
    value = round(value, digits)
    return value if (value * 1000) % 125 else round(value + 10**-digits, digits)


class Publisher:
    """Publishes each device's retained status, then telemetry every ``interval`` s from a thread, the way an
    agent does (seq from 0, cumulative inferences, the agent's own inferences_per_s)."""

    def __init__(self, broker, specs: list[SimSpec], interval: float = 0.4) -> None:
        self.specs, self.interval = specs, interval
        self.seq = {s.device: 0 for s in specs}
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"dash-pub-{secrets.token_hex(4)}")
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Publisher:
        for s in self.specs:
            self.status(s, online=True)
            self.telemetry(s)
            if not s.online:
                self.status(s, online=False)
        self._thread.start()
        return self

    def status(self, s: SimSpec, online: bool) -> None:
        status = Status(online, s.model, "dash-test", time.time(), None if online else "shutdown", s.tags,
                        "linux-sbc", s.budget)
        self.client.publish(DeviceTopics(FLEET, s.device).status, status.to_bytes(), qos=1,
                            retain=True).wait_for_publish(5)

    def telemetry(self, s: SimSpec) -> None:
        seq = self.seq[s.device]
        self.seq[s.device] = seq + 1
        p50 = _clean(s.p50 * (1 + 0.15 * math.sin(seq / 2.5)))
        values: dict[str, Any] = {
            "uptime_s": 100.0 + seq * self.interval, "inferences": int(seq * s.rate * self.interval),
            "inferences_per_s": _clean(s.rate * (1 + 0.05 * math.cos(seq / 3)), 2), "errors": 0,
            "latency_p50_ms": p50, "latency_p99_ms": _clean(p50 * 1.9), "rss_bytes": s.rss, "arena_bytes": 65536}
        if s.model is not None:
            values["model_name"], values["model_version"] = s.model.name, s.model.version
        self.client.publish(DeviceTopics(FLEET, s.device).telemetry, Telemetry(seq, time.time(), values).to_bytes(),
                            qos=1).wait_for_publish(5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for s in self.specs:
                if s.online:
                    self.telemetry(s)

    def pause(self) -> None:
        """No more telemetry (the numbers stand still, so page and API can be compared)."""
        self._stop.set()
        self._thread.join(5)

    def close(self) -> None:
        self.pause()
        self.client.loop_stop()
        self.client.disconnect()


def sha(i: int) -> str:
    return f"{i:02x}" * 32


def fleet_specs() -> list[SimSpec]:
    detector = ModelInfo("person-detect", 3, sha(3), "b")
    return [
        SimSpec("cam-berlin-01", detector, 4.2, 11.8, 52 * 2**20 + 123_456, ("site:berlin", "hw:pi4"), 12.0),
        SimSpec("cam-berlin-02", detector, 4.6, 11.2, 55 * 2**20 + 1_234, ("site:berlin", "hw:pi4"), 12.0),
        SimSpec("cam-paris-01", ModelInfo("person-detect", 2, sha(2), "a"), 6.1, 9.4, 61 * 2**20, ("site:paris",),
                8.0),
        SimSpec("gw-lyon-07", ModelInfo(EVIL, 1, sha(1), "a"), 1.3, 42.0, 900_000,
                ("site:lyon", EVIL[:60].replace(" ", "_"))),
        SimSpec("cam-oslo-03", detector, 5.0, 10.0, 48 * 2**20, ("site:oslo",), online=False),
    ]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if webdriver is None:
        pytest.skip("needs selenium (the dev extra)")
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip("needs Debian's chromium and chromium-driver (make setup installs them)")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1440,1100",
                "--disable-dev-shm-usage", "--force-prefers-reduced-motion", "--lang=en-US"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver, what: str, predicate, timeout: float = 20.0):
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,)
                             ).until(lambda d: predicate(d))
    except TimeoutException:
        raise AssertionError(f"timed out waiting for {what}") from None


def click(driver, css: str) -> None:
    """Click the element now matching ``css`` (found and clicked in one step: the page redraws every few seconds)."""
    assert driver.execute_script("const el = document.querySelector(arguments[0]); if (el) el.click(); return !!el;",
                                 css), css


def severe(driver, allowed=()) -> list[str]:
    """SEVERE browser-log entries (console errors, failed loads), except those containing an allowed text."""
    return [e["message"] for e in driver.get_log("browser")
            if e["level"] == "SEVERE" and not any(a in e["message"] for a in allowed)]


def screenshot(driver) -> None:
    """The whole page into $LEPTON_SCREENSHOT, when it is set."""
    path = os.environ.get("LEPTON_SCREENSHOT")
    if not path:
        return
    height = driver.execute_script("return document.body.scrollHeight")
    width = driver.execute_script("return window.innerWidth")
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
    try:
        time.sleep(0.5)  # the charts redraw at the new size
        driver.save_screenshot(path)
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def rollouts_served(url: str, token: str | None = None) -> bool:
    return api(url, "GET", "/v1/rollouts", token=token)[0] != 404


def page_rows(driver) -> dict[str, dict[str, tuple[str, str]]]:
    """Each device row's cells: {device: {column: (text, data-value)}}, read in one script call."""
    return driver.execute_script("""
        const out = {};
        for (const tr of document.querySelectorAll('#devices tbody tr[data-device]')) {
          const cells = {};
          for (const td of tr.querySelectorAll('td[data-col]')) {
            cells[td.dataset.col] = [td.innerText.trim(), td.dataset.value];
          }
          out[tr.dataset.device] = cells;
        }
        return out;""")


def expected_rows(devices: list[dict[str, Any]]) -> dict[str, dict[str, tuple[str, str]]]:
    """What the page must show for GET /v1/devices: the same formats as `lepton-edge fleet watch`."""
    def num(v: Any, digits: int) -> str:
        return f"{v:.{digits}f}" if isinstance(v, (int, float)) else NONE

    out = {}
    for d in devices:
        t = d["telemetry"] or {}
        model = d["model"]
        out[d["device"]] = {
            "online": "online" if d["online"] else "offline",
            "model": f"{model['name']} v{model['version']}" if model else "none",
            "p50": num(t.get("latency_p50_ms"), 2),
            "p99": num(t.get("latency_p99_ms"), 2),
            "throughput": num(t.get("inferences_per_s"), 1),
            "memory": human_bytes(t["rss_bytes"]) if "rss_bytes" in t else NONE,
        }
    return out


def mismatches(driver, devices: list[dict[str, Any]]) -> list[str]:
    """Differences between the page's fleet table and the API's devices (empty when they agree)."""
    shown, want = page_rows(driver), expected_rows(devices)
    problems = [f"devices shown {sorted(shown)} != {sorted(want)}"] if set(shown) != set(want) else []
    by_id = {d["device"]: d for d in devices}
    for dev in set(shown) & set(want):
        for col, text in want[dev].items():
            if shown[dev][col][0] != text:
                problems.append(f"{dev} {col}: page {shown[dev][col][0]!r}, API {text!r}")
        t = by_id[dev]["telemetry"] or {}
        for col, key in (("p50", "latency_p50_ms"), ("p99", "latency_p99_ms"), ("throughput", "inferences_per_s"),
                         ("memory", "rss_bytes")):
            if key in t and float(shown[dev][col][1]) != t[key]:
                problems.append(f"{dev} {col} value: page {shown[dev][col][1]!r}, API {t[key]!r}")
        if float(shown[dev]["last_seen"][1]) != by_id[dev]["last_seen"]:
            problems.append(f"{dev} last_seen: page {shown[dev]['last_seen'][1]}, API {by_id[dev]['last_seen']}")
    return problems


def wait_devices(url: str, count: int, token: str | None = None) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        devices = api(url, "GET", "/v1/devices", token=token)[1]["devices"]
        if len(devices) == count and all(d["telemetry"] for d in devices):
            return devices
        time.sleep(0.05)
    raise AssertionError(f"the controller has {len(devices)} devices (with telemetry), want {count}")


def test_assets_only_by_plain_name_from_their_directory():
    """index.html and its files with their types; nothing outside lepton_edge/fleet/dashboard_static."""
    page, ctype = dashboard_asset("index.html")
    assert ctype == "text/html; charset=utf-8" and b'src="/dashboard/app.js"' in page
    for name, want in (("app.js", "text/javascript"), ("style.css", "text/css"), ("favicon.svg", "image/svg+xml")):
        found = dashboard_asset(name)
        assert found is not None and found[1].startswith(want) and found[0]
    for name in ("../dashboard.py", "../store.py", "..", ".", "", "/etc/passwd", "x/../index.html", "index.html/",
                 "..%2fstore.py", "dashboard.py", "__init__.py", ".hidden.js", "nope.js", "index.html\x00.js"):
        assert dashboard_asset(name) is None, name


def test_series_is_the_newest_rows_since_oldest_first(tmp_path, fleet_db):
    """GET /v1/devices/<id>/telemetry's rows: at or after ``since``, the newest ``limit`` of them, oldest
    first, each with its receive time, seq and the telemetry fields (unknown ones left out). On each store."""
    db = FleetDB(fleet_db or tmp_path / "fleet.db")
    try:
        db.record_telemetry([TelemetryRecord(
            dev, 100.0 + i, Telemetry(i, 50.0 + i, {"latency_p99_ms": 2.0 + i}),
            f'{{"seq": {i}, "ts": {50.0 + i}, "latency_p99_ms": {2.0 + i}, "inferences": {10 * i}, "bogus": 1}}')
            for i in range(6) for dev in ("a", "b")])
        rows = telemetry_series(db, "a", 102.0, 3)
        assert rows == [{"received": 100.0 + i, "seq": i, "ts": 50.0 + i, "latency_p99_ms": 2.0 + i,
                         "inferences": 10 * i} for i in (3, 4, 5)]
        assert [r["seq"] for r in telemetry_series(db, "a", 102.0, 100)] == [2, 3, 4, 5]
        assert telemetry_series(db, "a", 106.0, 10) == [] and telemetry_series(db, "a", 0.0, 0) == []
        assert telemetry_series(db, "c", 0.0, 10) == []
    finally:
        db.close()


@BROWSER_ONE_STORE
def test_fleet_table_charts_and_no_console_errors(fleet, broker, browser):
    """Every device and number on the page is the API's; a device's charts draw its stored telemetry."""
    specs = fleet_specs()
    pub = Publisher(broker, specs).start()
    try:
        wait_devices(fleet.http.url, len(specs))
        browser.get_log("browser")  # drop entries from before this test
        browser.get(fleet.http.url + "/")
        wait(browser, "the fleet table", lambda d: len(page_rows(d)) == len(specs))

        # A device's charts: its latency (p50, p99) and throughput from GET /v1/devices/<id>/telemetry.
        time.sleep(1.5)  # a few more telemetry points
        click(browser, 'tr[data-device="cam-berlin-01"]')
        detail = browser.find_element(By.ID, "device-detail")
        wait(browser, "the device's charts", lambda d: detail.is_displayed() and int(detail.get_attribute("data-rows")
                                                                                     or 0) >= 3)
        pub.pause()
        assert fleet.controller.wait_idle(10)
        assert "#device=cam-berlin-01" in browser.current_url
        # the page refreshes every 3 s: wait until it has drawn everything the controller now holds
        devices = api(fleet.http.url, "GET", "/v1/devices")[1]["devices"]
        last = next(d for d in devices if d["device"] == "cam-berlin-01")["telemetry_at"]
        wait(browser, "the chart to reach the newest telemetry",
             lambda d: float(detail.get_attribute("data-last-received") or 0) == last)
        first = float(detail.get_attribute("data-first-received"))
        series = api(fleet.http.url, "GET", f"/v1/devices/cam-berlin-01/telemetry?since={first!r}")[1]["series"]
        series = [r for r in series if r["received"] <= last]
        assert len(series) == int(detail.get_attribute("data-rows")) >= 3
        for chart_id, name, key, digits in (("chart-latency", "p50", "latency_p50_ms", 2),
                                            ("chart-latency", "p99", "latency_p99_ms", 2),
                                            ("chart-throughput", "inferences", "inferences_per_s", 1)):
            path = browser.find_element(By.CSS_SELECTOR, f'#{chart_id} path.line[data-series="{name}"]')
            d = path.get_attribute("d")
            vertices = d.count("M") + d.count("L")
            assert int(path.get_attribute("data-count")) == vertices == len([r for r in series if key in r]), name
            legend = browser.find_element(By.CSS_SELECTOR, f'#{chart_id} .legend b[data-series="{name}"]').text
            assert re.match(r"[0-9.]+", legend).group() == f"{series[-1][key]:.{digits}f}", (name, legend)
            # the line's heights follow the values: the highest value is the highest point (smallest y)
            ys = [float(part.split()[1]) for part in d.replace("M", "|").replace("L", "|").split("|")[1:]]
            values = [r[key] for r in series if key in r]
            assert ys.index(min(ys)) == values.index(max(values)), name

        # The fleet table and the summary: the API's devices and numbers, formatted as `fleet watch` does.
        devices = api(fleet.http.url, "GET", "/v1/devices")[1]["devices"]
        wait(browser, "the page to match GET /v1/devices", lambda d: not mismatches(d, devices), timeout=10)
        assert browser.find_element(By.CSS_SELECTOR, '[data-summary="online"]').text == "4 / 5"
        over = [cell.find_element(By.XPATH, "..").get_attribute("data-device")
                for cell in browser.find_elements(By.CSS_SELECTOR, "td.over")]  # p99 over the latency budget
        assert over == (["cam-paris-01"] if "latency_budget_ms" in devices[0] else [])

        # Text from devices is text: the model name shows as typed, no element came from it, no script ran.
        assert page_rows(browser)["gw-lyon-07"]["model"][0] == f"{EVIL} v1"
        assert not browser.find_elements(By.CSS_SELECTOR, "main img")
        assert browser.execute_script("return window.__pwned === undefined")

        # The page's files come only from its own directory; the API's routes still need their token there.
        assert api(fleet.http.url, "GET", "/dashboard/../store.py")[0] == 404
        assert api(fleet.http.url, "GET", "/dashboard/%2e%2e%2fstore.py")[0] == 404

        # No rollouts yet: the page says so (GET /v1/rollouts may still be missing: then it 404s, expectedly).
        assert browser.find_element(By.ID, "no-rollouts").text == "no rollouts"
        allowed = () if rollouts_served(fleet.http.url) else ("/v1/rollouts - Failed to load resource",)
        assert severe(browser, allowed) == []

        screenshot(browser)  # the rollout test, when it runs, replaces it with a page that has a rollout
    finally:
        pub.close()


@BROWSER_ONE_STORE
def test_rollout_progress_appears(fleet, broker, browser, tmp_path):
    """A rollout's state, progress and waves on the page are the API's, while it runs and when it is done."""
    if not rollouts_served(fleet.http.url):
        pytest.skip("GET /v1/rollouts is not served by this controller yet (the rollouts and cli work adds it)")
    from fleet_helpers import make_artifact
    from lepton_edge.mqtt import parse_broker_url
    from lepton_edge.tools.devsim import FLEET_OPTIONS, SimFleet

    sims = SimFleet(parse_broker_url(broker.url()), 4, prefix="roll-", options=replace(FLEET_OPTIONS, fleet=FLEET),
                    telemetry_interval_s=0.5)
    sims.start()
    try:
        assert sims.wait_connected(10)
        wait_devices(fleet.http.url, 4)
        artifact = fleet.upload(make_artifact(tmp_path / "art", version=2, size=20_000, seed=7))
        status, rollout = api(fleet.http.url, "POST", "/v1/rollouts",
                              {"artifact": artifact, "all": True, "canary": 1, "soak_s": 1, "rate": 120,
                               "wave_interval_s": 1})
        assert status == 201, rollout
        rid = rollout["rollout"]
        browser.get_log("browser")
        browser.get(fleet.http.url + "/")
        wait(browser, "the rollout's card with its progress bar",
             lambda d: d.find_elements(By.CSS_SELECTOR, f'article.rollout[data-rollout="{rid}"] .progress .bar'))

        def shown(d) -> dict[str, Any] | None:
            return d.execute_script("""
                const el = document.querySelector(`article.rollout[data-rollout="${arguments[0]}"]`);
                if (!el) return null;
                const chips = (root) => Object.fromEntries([...root.querySelectorAll('.chip')].map(
                  (c) => [c.dataset.phase, Number(c.textContent.split(' ').pop())]));
                return {state: el.dataset.state, progress: el.querySelector('[data-col="progress"] b').textContent,
                        waves: [...el.querySelectorAll('table.waves tbody tr')].map(
                          (tr) => [tr.cells[0].textContent, Number(tr.cells[1].textContent), chips(tr)])};""", rid)

        def expected(r: dict[str, Any]) -> dict[str, Any]:
            return {"state": r["state"], "progress": f"{r['summary']['healthy']} / {r['summary']['selected']}",
                    "waves": [["canary" if w["canary"] else f"wave {w['wave']}", w["devices"],
                               {k: n for k, n in w["states"].items() if n}] for w in r["waves"]]}

        final: dict[str, Any] = {}

        def completed_and_shown(d) -> bool:
            final.update(api(fleet.http.url, "GET", f"/v1/rollouts/{rid}")[1])
            return final["state"] == "completed" and shown(d) == expected(final)

        wait(browser, "the completed rollout on the page as the API has it", completed_and_shown, timeout=40)
        assert shown(browser)["progress"] == "4 / 4"   # every device on the new model
        assert sum(w[1] for w in shown(browser)["waves"]) == 4 and len(final["waves"]) >= 2

        # Its devices (GET /v1/rollouts/<id>): each one's wave and phase as the API has them.
        click(browser, f'article.rollout[data-rollout="{rid}"] .rollout-foot button')
        full = api(fleet.http.url, "GET", f"/v1/rollouts/{rid}")[1]
        phases = {d["device"]: d["phase"].replace("_", " ") for d in full["devices"]}
        assert set(phases) == set(sims.ids)
        wait(browser, "the rollout's devices and their phases", lambda d: d.execute_script("""
            const card = document.querySelector(`article.rollout[data-rollout="${arguments[0]}"]`);
            const rows = card ? card.querySelectorAll('.rollout-devices tbody tr') : [];
            return Object.fromEntries([...rows].map((r) => [r.dataset.device, r.querySelector('.chip').textContent]));
            """, rid) == phases)

        click(browser, f'tr[data-device="{sims.ids[0]}"]')
        wait(browser, "a device's charts", lambda d: d.find_elements(By.CSS_SELECTOR, "#chart-latency path.line"))
        assert severe(browser) == []
        screenshot(browser)
    finally:
        sims.stop()


@BROWSER_ONE_STORE
def test_token_form_session_storage_and_no_token_in_urls(fleet, broker, browser, tmp_path):
    """A controller started with --token-file: the page asks for the token once (a form), keeps it in
    sessionStorage, sends it as a header (the API answers), and no URL it loads ever carries it."""
    token_file = tmp_path / "api.token"
    token_file.write_text(secrets.token_urlsafe(24) + "\n")
    listen = HttpListen("127.0.0.1", 0)
    token = resolve_token(tmp_path / "ctl", listen, token_file)
    assert token is not None
    http = HttpApi(fleet.controller, listen, token)
    http.start()
    pub = Publisher(broker, fleet_specs()[:2]).start()
    try:
        wait_devices(http.url, 2, token)
        assert api(http.url, "GET", "/v1/devices")[0] == 401  # the page gets the same answer without its token
        browser.get_log("browser")
        browser.get(http.url + "/")
        dialog = browser.find_element(By.ID, "token-dialog")
        wait(browser, "the token form", lambda d: dialog.get_attribute("open") is not None)
        assert browser.execute_script(f"return sessionStorage.getItem('{TOKEN_KEY}')") is None
        assert not page_rows(browser)

        field = browser.find_element(By.ID, "token-input")
        field.send_keys("not-the-token-at-all\n")  # a wrong one: the form comes back and says so
        wait(browser, "the refusal", lambda d: d.find_element(By.ID, "token-problem").is_displayed())
        assert "refused" in browser.find_element(By.ID, "token-problem").text
        assert dialog.get_attribute("open") is not None
        field.send_keys(token + "\n")
        wait(browser, "the fleet table with the token", lambda d: len(page_rows(d)) == 2)
        assert dialog.get_attribute("open") is None
        assert browser.execute_script(f"return sessionStorage.getItem('{TOKEN_KEY}')") == token

        browser.refresh()  # asked once: the same tab keeps the token
        wait(browser, "the table after a reload", lambda d: len(page_rows(d)) == 2)
        assert browser.find_element(By.ID, "token-dialog").get_attribute("open") is None

        urls = browser.execute_script("return [location.href, ...performance.getEntriesByType('resource')"
                                      ".map(e => e.name)]")
        assert any("/v1/devices" in u for u in urls)
        assert not [u for u in urls if token in u]
        # the only errors: the API's 401s to the requests without (or with the wrong) token
        assert severe(browser, ("the server responded with a status of 401",)) == []
    finally:
        pub.close()
        http.stop()
