"""The web control panel in a real browser: headless Chromium (Debian's) driven by Selenium, against a
robot started with `orchestrator up`, the page talking MQTT over WebSocket to the embedded broker.

The browser reaches the broker through a :class:`FaultProxy`, so a test can cut the page's link the
way a laptop's Wi-Fi drops (silently: nothing is closed, nothing more arrives).  What a motor does is
checked through the SDK, never through the page.  A screenshot of the panel is saved in the test's
directory (and in ``$ORCHESTRATOR_SCREENSHOT_DIR`` when set: that is how ``docs/web-panel.png`` is
made).  On a robot with TLS the page is https:// and its broker wss://, and Chromium trusts the robot's CA
through an NSS database (Debian's certutil), as a user would add it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from brokers import free_port, make_credentials, mosquitto_from_broker_config
from faultproxy import FaultProxy
from robot import CLIENTS, Up, unique_robot, write_config
from selenium import webdriver  # in the test extras
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver

from orchestrator.client.sync import SyncRobotClient
from orchestrator.config import load_config
from orchestrator.protocol.topics import ClientId
from orchestrator.sessions.guard import grace_of

pytestmark = pytest.mark.timeout(90)

WINDOW_S = 2.0  # the robot's session window (the default)
# a stop must come within the window, the sub-part's grace and generous slack for a loaded 2-core machine
STOP_BOUND_S = WINDOW_S + grace_of(WINDOW_S) + 3.0
PARTS = ["main", "base", "arm"]
# command -> Debian package (certutil: the NSS database through which Chromium trusts a robot's CA)
BROWSER_PACKAGES = {"chromium": "chromium", "chromedriver": "chromium-driver", "certutil": "libnss3-tools"}


def _browser_tools() -> tuple[str, str]:
    """Debian's chromium and chromedriver, installed now if missing (as `make test-tools` does): a fresh
    CI machine has neither, and a browser downloaded by a test tool does not work here."""
    missing = [pkg for cmd, pkg in BROWSER_PACKAGES.items() if shutil.which(cmd) is None]
    if missing:
        sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run([*sudo, "apt-get", "update", "-q"], check=False, env=env, capture_output=True, timeout=300)
        done = subprocess.run([*sudo, "apt-get", "install", "-y", "-q", *missing], env=env, capture_output=True,
                              text=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"cannot install {' '.join(missing)} (Debian packages): run `make test-tools` "
                               f"as root\n{done.stderr[-2000:]}")
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, "chromium / chromedriver still missing after installing them"
    return chromium, driver


@dataclass
class PanelRobot:
    up: Up
    cfg: Path
    web_url: str
    proxy: FaultProxy
    sdk: SyncRobotClient
    password: str
    ca: Path | None = None  # with TLS: the CA that signed the broker's (and the panel's) certificate
    viewer_password: str = ""  # of "watcher", a viewer identity

    def power(self, path: str = "base/left") -> float:
        return float(self.sdk.call(path, "get_power", timeout=5))

    def until(self, cond: Callable[[], bool], timeout: float, what: str) -> float:
        """Poll ``cond`` (bounded, every 50 ms) until true; how long it took."""
        t0 = time.monotonic()
        while not cond():
            if time.monotonic() - t0 > timeout:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}\n"
                                     f"--- up:\n{self.up.output()[-3000:]}")
            time.sleep(0.05)
        return time.monotonic() - t0


@pytest.fixture(scope="module")
def browser_tools() -> tuple[str, str]:
    return _browser_tools()


@contextlib.contextmanager
def start_panel_robot(tmp: Path, *, on_mosquitto: bool = False, tls: bool = False) -> Iterator[PanelRobot]:
    """`up` with the web panel, on its embedded broker (its WebSocket listener) or on a mosquitto run on the
    file `broker-config` writes for it (mosquitto's WebSocket listener); the page goes through a FaultProxy.
    ``tls``: the embedded broker with its TLS listener and broker.tls, so the panel is on https:// and the
    page reaches the broker at a wss:// URL (through the proxy: TLS end to end, the certificate names
    127.0.0.1)."""
    port, ws_port, web_port, tls_port = free_port(), free_port(), free_port(), free_port()
    with FaultProxy(("127.0.0.1", ws_port)) as proxy:
        parts: list[dict[str, Any]] = [
            {"name": "main", "heartbeat_s": 0.1, "stop_deadline_s": 1.0,
             "resources": [{"name": "health", "model": "orc:sim:sensor", "telemetry": {"period_s": 0.5},
                            "attributes": {"readings": ["battery", "temperature"]}}]},
            {"name": "base", "parent": "main", "heartbeat_s": 0.1, "stop_deadline_s": 1.0,
             "resources": [{"name": "left", "model": "orc:sim:motor"}, {"name": "right", "model": "orc:sim:motor"},
                           {"name": "wheels", "model": "orc:sim:base",
                            "attributes": {"left": "left", "right": "right"}}]},
            {"name": "arm", "parent": "main", "heartbeat_s": 0.1, "stop_deadline_s": 1.0,
             "resources": [{"name": "wrist", "model": "orc:sim:servo"},
                           {"name": "gripper", "model": "orc:sim:gripper"}]},
        ]
        broker: dict[str, Any] = (
            {"urls": [f"mqtt://127.0.0.1:{port}"], "keepalive_s": 2} if on_mosquitto else
            {"embedded": {"host": "127.0.0.1", "port": port, "websocket_port": ws_port}, "keepalive_s": 2})
        if tls:
            if on_mosquitto:  # the parts on mosquitto's TLS listener, the page on its WebSocket-over-TLS one
                broker["urls"] = [f"mqtts://127.0.0.1:{tls_port}"]
            else:
                broker["embedded"]["tls_port"] = tls_port
            broker["tls"] = {"ca_file": "ca.crt"}
        scheme = "wss" if tls else "ws"
        cfg = write_config(
            tmp / "robot.yaml", unique_robot(), broker,
            parts, clients=CLIENTS, sessions={"heartbeat_window_s": WINDOW_S},
            # the page reaches the broker through the proxy, which the tests can cut
            web={"host": "127.0.0.1", "port": web_port, "websocket_url": f"{scheme}://127.0.0.1:{proxy.address[1]}/"},
        )
        loaded = load_config(cfg)
        store = make_credentials(loaded)
        if tls:
            from orchestrator.security.tls import make_dev_certs

            make_dev_certs(store.directory, ["127.0.0.1", "localhost"], robot=loaded.config.robot)
        password = store.password(ClientId(loaded.config.robot, "operator"))
        with contextlib.ExitStack() as stack:
            if on_mosquitto:  # its WebSocket listener on ws_port, behind the proxy as the embedded broker's
                args = ("--websocket-port", str(ws_port)) + (("--tls-port", str(tls_port)) if tls else ())
                files = ("passwd", "acl") + (("ca.crt", "broker.crt", "broker.key") if tls else ())
                stack.enter_context(mosquitto_from_broker_config(loaded, store, tmp, port=port, wait_port=ws_port,
                                                                 args=args, files=files))
            up = Up(cfg, tmp)
            stack.callback(up.close)
            # the SDK checks what the motors do, as another operator ("other"), outside any session
            sdk = SyncRobotClient.from_config(cfg, identity="other", sessions=False, connect_timeout=30).connect()
            stack.callback(sdk.close)
            robot = PanelRobot(up, cfg, f"{'https' if tls else 'http'}://127.0.0.1:{web_port}/", proxy, sdk, password,
                               store.path("ca.crt") if tls else None,
                               store.password(ClientId(loaded.config.robot, "watcher")))
            robot.until(lambda: _all_running(sdk), 45, "every part running (through the SDK)")
            yield robot


@pytest.fixture(scope="module")
def panel_robot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PanelRobot]:
    with start_panel_robot(tmp_path_factory.mktemp("panel")) as robot:
        yield robot


def _all_running(sdk: SyncRobotClient) -> bool:
    states = dict(sdk.aio.rpc.part_states)
    return all(p in states and states[p][1].value == "running" for p in PARTS)


@contextlib.contextmanager
def chromium_driver(browser_tools: tuple[str, str], tmp_path: Path, *,
                    trust: Path | None = None) -> Iterator[WebDriver]:
    """Headless Chromium on a throwaway profile.  ``trust``: a CA certificate the browser trusts, the way a user
    adds one on Linux: in the NSS database of the user's home ($HOME/.pki/nssdb, here a temporary HOME made
    with Debian's certutil), so the robot's https:// page and wss:// broker are verified, never ignored."""
    chromium, chromedriver = browser_tools
    env = None
    if trust is not None:
        home = tmp_path / "home"
        nssdb = home / ".pki" / "nssdb"
        nssdb.mkdir(parents=True)
        for cmd in (["-N", "--empty-password"], ["-A", "-t", "C,,", "-n", "robot CA", "-i", str(trust)]):
            subprocess.run(["certutil", "-d", f"sql:{nssdb}", *cmd], check=True, capture_output=True, timeout=30)
        env = {**os.environ, "HOME": str(home)}
    opts = Options()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--disable-background-timer-throttling", "--no-first-run",
                f"--user-data-dir={tmp_path / 'chromium'}"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(chromedriver, env=env))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        try:
            for line in driver.get_log("browser"):
                print("browser:", line.get("message", line))  # shown when a test fails
        except WebDriverException:
            pass
        driver.quit()


@pytest.fixture
def browser(browser_tools: tuple[str, str], tmp_path: Path) -> Iterator[WebDriver]:
    with chromium_driver(browser_tools, tmp_path) as driver:
        yield driver


def open_panel(driver: WebDriver, robot: PanelRobot, *, viewer: bool = False) -> None:
    """Load the page, log in as the operator, wait for its session to be open and heartbeated (``viewer``:
    as the viewer "watcher", until the page is connected)."""
    driver.get(robot.web_url)
    driver.find_element(By.ID, "client").clear()
    driver.find_element(By.ID, "client").send_keys("watcher" if viewer else "operator")
    driver.find_element(By.ID, "password").send_keys(robot.viewer_password if viewer else robot.password)
    driver.find_element(By.ID, "login-button").click()
    if viewer:
        wait_js(driver, "return !!(window.panel && window.panel.connected)", 20, "the page connected")
        return
    wait_js(driver, "return !!(window.panel && window.panel.session && !window.panel.session.ended "
            "&& window.panel.session.heartbeats > 0)", 20, "the page's session open and heartbeated")


def wait_js(driver: WebDriver, script: str, timeout: float, what: str) -> Any:
    t0 = time.monotonic()
    while True:
        got = driver.execute_script(script)
        if got:
            return got
        if time.monotonic() - t0 > timeout:
            err = driver.find_element(By.ID, "login-error").text + " " + driver.find_element(By.ID, "errors").text
            raise AssertionError(f"timed out after {timeout} s waiting for {what} (page says: {err.strip()!r})")
        time.sleep(0.05)


def slide_power(driver: WebDriver, path: str, target: int) -> None:
    """Move a motor's power slider to ``target`` % as a user does with the keyboard: each arrow key is an
    input event (and a call); keys are pressed until the slider shows the target (one can be lost)."""
    slider = driver.find_element(By.CSS_SELECTOR, f'input[data-power="{path}"]')
    driver.execute_script("arguments[0].focus()", slider)  # a click would move it to where it was clicked
    for _ in range(100):
        value = int(slider.get_attribute("value") or 0)
        if value == target:
            return
        slider.send_keys(Keys.ARROW_RIGHT if target > value else Keys.ARROW_LEFT)
    raise AssertionError(f"the {path} slider did not reach {target} % (at {slider.get_attribute('value')})")


def drive_left_motor(driver: WebDriver, robot: PanelRobot) -> None:
    """The power slider moves the simulated motor: checked through the SDK."""
    slide_power(driver, "base/left", 60)
    try:
        robot.until(lambda: abs(robot.power() - 0.6) < 1e-6, 15, "base/left at 60 % power (through the SDK)")
    except AssertionError as exc:
        page = driver.execute_script("return [document.querySelector('input[data-power=\"base/left\"]').value, "
                                     "document.getElementById('errors').textContent]")
        raise AssertionError(f"{exc}\n--- the page: slider at {page[0]}, errors {page[1]!r}") from None


def save_screenshot(driver: WebDriver, tmp_path: Path) -> Path:
    path = tmp_path / "web-panel.png"
    driver.save_screenshot(str(path))
    extra = os.environ.get("ORCHESTRATOR_SCREENSHOT_DIR")
    if extra:
        shutil.copy(path, Path(extra) / "web-panel.png")
    return path


def test_the_panel_shows_the_robot_and_drives_a_motor(browser: WebDriver, panel_robot: PanelRobot,
                                                       tmp_path: Path) -> None:
    robot = panel_robot
    open_panel(browser, robot)
    # every part running, in the parts tree
    wait_js(browser, "return [...document.querySelectorAll('#parts tbody tr')].filter(r => r.dataset.state === "
            f"'running').map(r => r.dataset.part).sort().join(',') === '{','.join(sorted(PARTS))}'", 15,
            "every part shown running")
    # every resource, sensor readings arriving, the page's own session listed
    wait_js(browser, "return document.querySelectorAll('#resources tbody tr').length === 6", 10, "six resources")
    wait_js(browser, "return !!document.querySelector('#telemetry tr[data-sensor=\"main/health\"]')", 10,
            "telemetry of main/health")
    wait_js(browser, "return [...document.querySelectorAll('#sessions td')].some(td => td.textContent.includes("
            "'(this page)'))", 10, "the page's session in the sessions table")

    drive_left_motor(browser, robot)
    # the motor is now owned by the page's session, and the page shows it
    wait_js(browser, "return document.querySelector('tr[data-resource=\"base/left\"]').textContent.includes("
            "'client/operator (this page)')", 10, "base/left owned by this page")
    # an error from the robot is shown as it comes: the motor refuses a power outside [-1, 1]
    browser.execute_script("document.getElementById('call-resource').value = 'base/right';"
                           "document.getElementById('call-method').value = 'set_power';"
                           "document.getElementById('call-args').value = '{\"power\": 5}';")
    browser.find_element(By.CSS_SELECTOR, "#do-command button").click()
    wait_js(browser, "return !!document.querySelector('#errors li[data-code=\"invalid_argument\"]')", 10,
            "InvalidArgument shown")
    assert "InvalidArgument" in browser.find_element(By.ID, "errors").text
    # let the plot draw a few points, then the screenshot
    wait_js(browser, "return (window.panel.samples['main/health'] || []).length >= 4", 10, "four sensor samples")
    time.sleep(0.3)  # the page redraws every 250 ms: let the last samples reach the plot before the picture
    shot = save_screenshot(browser, tmp_path)
    assert shot.stat().st_size > 10_000
    # STOP ALL stops it (a call in the page's session, to every resource that can stop)
    browser.find_element(By.ID, "stop-all").click()
    robot.until(lambda: robot.power() == 0.0, 10, "base/left stopped by STOP ALL")


def test_a_viewer_watches_the_robot_with_no_session_and_no_controls(browser: WebDriver,
                                                                     panel_robot: PanelRobot) -> None:
    """A viewer identity (role: viewer) may read the robot and publish nothing: the page shows the robot live
    and offers nothing to press; it opens no session."""
    robot = panel_robot
    open_panel(browser, robot, viewer=True)
    wait_js(browser, "return [...document.querySelectorAll('#parts tbody tr')].filter(r => r.dataset.state === "
            f"'running').length === {len(PARTS)}", 15, "every part shown running")
    wait_js(browser, "return document.querySelectorAll('#resources tbody tr').length === 6", 10, "six resources")
    wait_js(browser, "return (window.panel.samples['main/health'] || []).length >= 2", 10, "sensor samples")
    assert "read-only" in browser.find_element(By.ID, "session").text
    assert browser.execute_script("return window.panel.session") is None
    assert not browser.find_element(By.ID, "stop-all").is_displayed()
    assert not browser.find_element(By.ID, "do-command").is_displayed()
    assert not any(td.is_displayed() for td in browser.find_elements(By.CSS_SELECTOR, "#resources td.controls"))
    assert "client/watcher" not in browser.find_element(By.ID, "sessions").text
    assert not browser.find_elements(By.CSS_SELECTOR, "#errors li"), browser.find_element(By.ID, "errors").text


def test_the_base_pad_servo_gripper_and_reload_controls_act_on_the_robot(browser: WebDriver,
                                                                          panel_robot: PanelRobot) -> None:
    """The other controls of item 3, each checked on the robot (the SDK) or in what the robot reports."""
    robot = panel_robot
    open_panel(browser, robot)
    wait_js(browser, "return !!document.querySelector('button[data-drive=\"base/wheels:forward\"]')", 15,
            "the base's drive pad")
    # the base's pad: forward drives both wheels at half power; its stop stops them
    browser.find_element(By.CSS_SELECTOR, 'button[data-drive="base/wheels:forward"]').click()
    robot.until(lambda: robot.power("base/left") == 0.5 and robot.power("base/right") == 0.5, 10,
                "both wheels at 50 % after forward")
    browser.find_element(By.CSS_SELECTOR, 'button[data-drive="base/wheels:stop"]').click()
    robot.until(lambda: robot.power("base/left") == 0.0 and robot.power("base/right") == 0.0, 10,
                "both wheels stopped by the pad's stop")
    # the servo: an angle, then move; the servo gets there
    angle = browser.find_element(By.CSS_SELECTOR, 'input[aria-label="arm/wrist angle"]')
    angle.clear()
    angle.send_keys("45")
    angle.find_element(By.XPATH, "following-sibling::button[text()='move']").click()
    robot.until(lambda: abs(float(robot.sdk.call("arm/wrist", "get_position", timeout=5)) - 45) < 1e-6, 15,
                "arm/wrist at 45 degrees")
    # the gripper: grab, and the page says what the robot answered
    row = browser.find_element(By.CSS_SELECTOR, 'tr[data-resource="arm/gripper"]')
    row.find_element(By.XPATH, ".//button[text()='grab']").click()
    wait_js(browser, "return document.getElementById('events').textContent.includes('gripper.grab: holding "
            "something')", 10, "the grab's answer shown")
    # reload, after the confirmation: the robot reloads (its reload event reaches the page)
    browser.find_element(By.ID, "reload").click()
    browser.switch_to.alert.accept()
    wait_js(browser, "return [...document.querySelectorAll('#events li')].some(li => /reload/i.test(li.textContent))",
            15, "the robot's reload event")
    assert not browser.find_elements(By.CSS_SELECTOR, "#errors li"), browser.find_element(By.ID, "errors").text


def test_closing_the_page_stops_its_motor(browser: WebDriver, panel_robot: PanelRobot) -> None:
    robot = panel_robot
    blank = browser.current_window_handle
    browser.switch_to.new_window("tab")
    open_panel(browser, robot)
    drive_left_motor(browser, robot)
    t0 = time.monotonic()
    browser.close()  # the tab, with its worker and both connections
    browser.switch_to.window(blank)
    took = robot.until(lambda: robot.power() == 0.0, STOP_BOUND_S, "base/left stopped after the page closed")
    print(f"closing the page: motor stopped {time.monotonic() - t0:.3f} s after (poll {took:.3f} s)")


def test_cutting_the_pages_link_stops_its_motor(browser: WebDriver, panel_robot: PanelRobot) -> None:
    robot = panel_robot
    open_panel(browser, robot)
    drive_left_motor(browser, robot)
    robot.proxy.stall()  # the Wi-Fi drops: nothing closed, nothing more goes through either way
    try:
        t0 = time.monotonic()
        robot.until(lambda: robot.power() == 0.0, STOP_BOUND_S, "base/left stopped after the page's link was cut")
        took = time.monotonic() - t0
        print(f"cutting the page's link: motor stopped {took:.3f} s after (window {WINDOW_S} s)")
        assert took >= WINDOW_S * 0.5, "stopped before the session could have expired: something else stopped it"
    finally:
        robot.proxy.resume()
    # the link is back: the page learns its session ended (an event, or the refusal of its next call),
    # shows SessionExpired, and the operator's next move opens a new session that drives again
    robot.proxy.reset()  # the connections held across the cut are dead to the robot: start afresh
    wait_js(browser, "return window.panel.connected", 20, "the page reconnected")
    slide_power(browser, "base/left", 55)
    wait_js(browser, "return !!document.querySelector('#errors li[data-code=\"session_expired\"]') || "
            "(window.panel.session && window.panel.session.ended !== null)", 20, "the page told its session ended")
    slide_power(browser, "base/left", 45)
    robot.until(lambda: abs(robot.power() - 0.45) < 1e-6, 20, "base/left driven again in a new session")
    browser.find_element(By.CSS_SELECTOR, 'button[data-stop="base/left"]').click()
    robot.until(lambda: robot.power() == 0.0, 10, "base/left stopped by its stop button")


def test_the_panel_drives_a_robot_on_mosquitto(browser: WebDriver, tmp_path: Path) -> None:
    """The same page against mosquitto's WebSocket listener, as `broker-config` writes it: the login is the
    client's, the slider drives the motor, and closing the page stops it."""
    with start_panel_robot(tmp_path, on_mosquitto=True) as robot:
        blank = browser.current_window_handle
        browser.switch_to.new_window("tab")
        open_panel(browser, robot)
        wait_js(browser, "return [...document.querySelectorAll('#parts tbody tr')].filter(r => r.dataset.state === "
                f"'running').length === {len(PARTS)}", 15, "every part shown running")
        drive_left_motor(browser, robot)
        t0 = time.monotonic()
        browser.close()
        browser.switch_to.window(blank)
        robot.until(lambda: robot.power() == 0.0, STOP_BOUND_S, "base/left stopped after the page closed")
        print(f"mosquitto, closing the page: motor stopped {time.monotonic() - t0:.3f} s after")


@pytest.mark.parametrize("broker", ["amqtt", "mosquitto"])
def test_the_panel_of_a_robot_with_tls_is_served_over_https_and_talks_wss(browser_tools: tuple[str, str],
                                                                           tmp_path: Path, broker: str) -> None:
    """A robot with TLS (the embedded broker's TLS listener, or mosquitto's as `broker-config --tls-port` writes
    it; broker.tls): `up` serves the panel over https:// only, with the robot's certificate, and the page talks
    MQTT over wss:// (web.websocket_url) to that broker's WebSocket-over-TLS listener.  Chromium trusts the
    robot's CA through an NSS database in a temporary HOME (no certificate error is ignored): login, every part
    shown running, the slider drives the motor, closing the page stops it."""
    with start_panel_robot(tmp_path, tls=True, on_mosquitto=broker == "mosquitto") as robot:
        assert robot.web_url.startswith("https://") and robot.ca is not None
        assert f"web control panel on {robot.web_url}" in robot.up.output()
        # plain http:// on the panel's port is not served: the connection is closed unanswered
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
                robot.web_url.replace("https://", "http://", 1) + "config.json", timeout=5)
        with chromium_driver(browser_tools, tmp_path / "browser", trust=robot.ca) as browser:
            blank = browser.current_window_handle
            browser.switch_to.new_window("tab")
            open_panel(browser, robot)
            assert browser.execute_script("return location.protocol") == "https:"
            assert browser.execute_script("return window.panel.url").startswith("wss://127.0.0.1:")
            wait_js(browser, "return [...document.querySelectorAll('#parts tbody tr')].filter(r => r.dataset.state "
                    f"=== 'running').length === {len(PARTS)}", 15, "every part shown running")
            drive_left_motor(browser, robot)
            t0 = time.monotonic()
            browser.close()
            browser.switch_to.window(blank)
            robot.until(lambda: robot.power() == 0.0, STOP_BOUND_S, "base/left stopped after the page closed")
            print(f"TLS on {broker}, closing the page: motor stopped {time.monotonic() - t0:.3f} s after")
