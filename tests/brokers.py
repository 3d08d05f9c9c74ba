"""Brokers for the integration tests: mosquitto and our embedded amqtt broker, started on free ports.

The ``broker`` fixture is parametrized over both kinds, so a behaviour test written once runs
against the embedded broker and against mosquitto.  Every broker binds 127.0.0.1 on a free port
(never 1883), and every start waits for the port to accept a TCP connection under a bounded
deadline instead of sleeping.

- :func:`start_mosquitto`: a mosquitto process with a rendered config in a private temp dir.
- :func:`start_embedded_thread`: the embedded broker in a background thread with its own event
  loop, so synchronous tests (paho threads, ``threading.Event.wait``) never starve it.
- :func:`start_embedded_process`: ``python -m orchestrator.broker`` in a child process.
- :func:`start_broker`: either kind by name, with the options both kinds understand.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from orchestrator.broker import EmbeddedBroker
    from orchestrator.config import LoadedConfig
    from orchestrator.security.credentials import CredentialStore

__all__ = [
    "BROKER_KINDS",
    "NATS_DIFFERENCES",
    "NATS_ENV",
    "BrokerInfo",
    "broker",
    "embedded_broker",
    "free_port",
    "make_credentials",
    "mosquitto_broker",
    "mosquitto_from_broker_config",
    "mosquitto_path",
    "start_broker",
    "start_embedded_process",
    "start_embedded_thread",
    "start_mosquitto",
    "start_robot_broker",
    "wait_for_port",
]

HOST = "127.0.0.1"
BROKER_KINDS = ("amqtt", "mosquitto")
# Opt-in: ORCHESTRATOR_TEST_NATS=1 adds a single NATS node ("nats", tests/natslab.py) to the
# `broker` and `broker_kind` fixtures, so every test written for both brokers also runs on NATS.
NATS_ENV = "ORCHESTRATOR_TEST_NATS"
FIXTURE_KINDS = BROKER_KINDS + (("nats",) if os.environ.get(NATS_ENV) == "1" else ())
# Where nats-server 2.9.10 (single node) behaves differently in those tests: they run as strict
# xfails on "nats", with the reason (docs/brokers.md, "NATS (cluster)"; tests/test_nats_mqtt.py).
NATS_DIFFERENCES = {
    "test_healthy_idle_client_is_not_dropped": "keep-alive deadline is int(1.5 x keep-alive) s: 1 s at "
    "keep-alive 1, before a compliant client's PINGREQ",
    "test_same_client_id_takes_over_and_old_will_is_published": "no Will on take-over: nats-server "
    "removes the old connection's Will before closing it",
    "test_delivery_qos_is_min_of_publish_and_subscription": "no QoS 2: a QoS 2 subscription is granted QoS 1",
    "test_overlapping_subscriptions_deliver_one_copy": "no QoS 2, and one copy per matching subscription",
    "test_acl_single_level_wildcard_does_not_admit_deeper_topics": "a filter wider than the permissions is "
    "refused (SUBACK 0x80, as the embedded broker), the test expects mosquitto's grant",
    "test_payload_size_limit": "max_payload does not apply to MQTT clients",
    "test_slow_subscriber_queue_is_bounded": "no per-client message bound: nats-server buffers up to "
    "max_pending (64 MB) for a slow consumer, then disconnects it",
    "test_a_clean_close_never_publishes_the_will": "one copy per matching subscription: the watcher's two "
    "overlapping filters each run the handler for both copies of the Will",
}
REPO_ROOT = Path(__file__).resolve().parent.parent
MOSQUITTO_TEMPLATE = REPO_ROOT / "broker_config" / "mosquitto-test.conf.tmpl"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0


@dataclasses.dataclass(frozen=True)
class BrokerInfo:
    """Where a test broker listens.  ``embedded`` is set for an in-process embedded broker."""

    kind: str
    host: str
    port: int
    embedded: EmbeddedBroker | None = dataclasses.field(default=None, compare=False, repr=False)
    log_path: Path | None = dataclasses.field(default=None, compare=False)
    tls: bool = False  # ``port`` is a TLS listener

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    def log(self) -> str:
        """The broker's log so far (mosquitto only), for failure messages."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(
    host: str,
    port: int,
    timeout: float = START_TIMEOUT,
    proc: subprocess.Popen[Any] | None = None,
) -> None:
    """Poll until ``host:port`` accepts a TCP connection; raise if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"broker process exited with code {proc.returncode} before accepting")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            pass
        if time.monotonic() >= deadline:
            raise TimeoutError(f"nothing accepted connections on {host}:{port} within {timeout} s")
        time.sleep(delay)  # bounded poll interval, not a fixed wait for readiness
        delay = min(delay * 2, 0.1)


def _stop_process(proc: subprocess.Popen[Any], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; always reaps the child."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
        proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(timeout=timeout)


# --------------------------------------------------------------------------------------- mosquitto


def mosquitto_path() -> str:
    """The mosquitto binary; a clear error (never a skip) when it is not installed."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError(
        "mosquitto is not installed, and the behaviour suite runs against it: run `make test` "
        "(its `mosquitto` target installs the Debian package), or `apt-get install mosquitto`."
    )


def render_mosquitto_conf(port: int, directory: Path, extra_conf: str = "", max_queued: int = 100_000,
                          anonymous: bool = True) -> str:
    """The test config for a listener on 127.0.0.1:``port``; ``${dir}`` in ``extra_conf`` is the temp dir."""
    extra = Template(extra_conf).safe_substitute(dir=str(directory), port=str(port))
    return Template(MOSQUITTO_TEMPLATE.read_text()).substitute(
        port=str(port), dir=str(directory), max_queued=str(max_queued), extra=extra,
        anonymous="true" if anonymous else "false",
    )


@contextlib.contextmanager
def start_mosquitto(
    port: int | None = None,
    extra_conf: str = "",
    *,
    files: dict[str, str] | None = None,
    passwords: dict[str, str] | None = None,
    max_queued: int = 100_000,
    anonymous: bool | None = None,
) -> Iterator[BrokerInfo]:
    """Run mosquitto on 127.0.0.1 until the block exits.

    ``files`` are written into the broker's temp dir before it starts (an ACL or password file);
    refer to them from ``extra_conf`` as ``${dir}/NAME``.  ``passwords`` (user -> password) become
    a hashed ``${dir}/passwd`` and turn anonymous access off.  With ``port=None`` a free port is
    picked, and picked again if another process grabbed it first.
    """
    binary = mosquitto_path()
    with tempfile.TemporaryDirectory(prefix="mosquitto-test-") as tmp:
        directory = Path(tmp)
        # Started as root, mosquitto drops to the `mosquitto` user: it must still read and log here.
        directory.chmod(0o755)
        for name, content in (files or {}).items():
            (directory / name).parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            (directory / name).write_text(content)
            (directory / name).chmod(0o644)
        if passwords is not None:
            _write_mosquitto_passwords(directory / "passwd", passwords)
            (directory / "passwd").chmod(0o644)
            extra_conf += "\npassword_file ${dir}/passwd\n"
        allow_anonymous = anonymous if anonymous is not None else (
            passwords is None and "password_file" not in extra_conf)
        attempts = 1 if port is not None else 3
        last_error: Exception | None = None
        for _ in range(attempts):
            chosen = port if port is not None else free_port()
            conf = directory / "mosquitto.conf"
            conf.write_text(render_mosquitto_conf(chosen, directory, extra_conf, max_queued, allow_anonymous))
            log_path = directory / "mosquitto.log"
            log_path.touch()
            log_path.chmod(0o666)
            proc = subprocess.Popen(
                [binary, "-c", str(conf)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            try:
                wait_for_port(HOST, chosen, START_TIMEOUT, proc)
            except (RuntimeError, TimeoutError) as exc:
                _stop_process(proc)
                stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                log = log_path.read_text(errors="replace") if log_path.exists() else ""
                last_error = RuntimeError(f"mosquitto did not start on port {chosen}: {exc}\n{stderr}{log}")
                continue
            try:
                yield BrokerInfo("mosquitto", HOST, chosen, log_path=log_path)
            finally:
                _stop_process(proc)
                if proc.stderr is not None:
                    proc.stderr.close()
            return
        assert last_error is not None
        raise last_error


# ------------------------------------------------------------------------------------- embedded


@contextlib.contextmanager
def start_embedded_thread(port: int | None = None, **options: Any) -> Iterator[BrokerInfo]:
    """Run :class:`orchestrator.broker.EmbeddedBroker` on its own event loop in a daemon thread.

    ``options`` are passed to ``EmbeddedBroker`` (``max_payload``, ``max_queued``, ``users``,
    ``acl``).  The yielded ``BrokerInfo.embedded`` gives access to ``stats``.
    """
    from orchestrator.broker import EmbeddedBroker

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test.embedded-broker", daemon=True)
    thread.start()
    embedded: EmbeddedBroker | _StockAmqtt
    if os.environ.get(STOCK_ENV) == "1":
        embedded = _StockAmqtt(port or 0, **options)
    else:
        embedded = EmbeddedBroker(HOST, port or 0, **options)
    try:
        asyncio.run_coroutine_threadsafe(embedded.start(), loop).result(timeout=START_TIMEOUT)
        yield BrokerInfo(
            "amqtt", HOST, embedded.port, embedded=embedded if isinstance(embedded, EmbeddedBroker) else None
        )
    finally:
        try:
            asyncio.run_coroutine_threadsafe(embedded.close(), loop).result(timeout=STOP_TIMEOUT * 2)
        finally:
            asyncio.run_coroutine_threadsafe(_cancel_leftovers(), loop).result(timeout=STOP_TIMEOUT)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=STOP_TIMEOUT)
            if not thread.is_alive():
                loop.close()


STOCK_ENV = "ORCHESTRATOR_TEST_STOCK_AMQTT"


class _StockAmqtt:
    """Plain amqtt 0.12.1, no fixes: ``ORCHESTRATOR_TEST_STOCK_AMQTT=1`` runs the "amqtt" tests on it.

    A diagnostic, not part of the suite: it shows which defects a new amqtt release still has
    (every test of a fixed defect should fail here).  ACL rules map onto amqtt's own
    TopicAccessControlListPlugin; ``users``, ``max_payload`` and ``max_queued`` have no stock
    equivalent and are ignored (authentication tests then fail, as they should).
    """

    def __init__(
        self, port: int = 0, *, acl_rules: dict[str | None, tuple[list[str], list[str]]] | None = None, **_ignored: Any
    ) -> None:
        self.port = port
        self._acl_rules = acl_rules
        self._broker: Any = None

    async def start(self) -> None:
        from amqtt.broker import Broker

        plugins: dict[str, Any] = {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}
        if self._acl_rules is not None:

            def by_user(index: int) -> dict[str, list[str]]:
                return {(u or "anonymous"): rw[index] for u, rw in self._acl_rules.items()}  # type: ignore[union-attr]

            plugins["amqtt.plugins.topic_checking.TopicAccessControlListPlugin"] = {
                "acl": by_user(0),
                "publish_acl": by_user(1),
            }
        config = {"listeners": {"default": {"type": "tcp", "bind": f"{HOST}:{self.port}"}}, "plugins": plugins}
        self._broker = Broker(config)
        await self._broker.start()
        for server in self._broker._servers.values():
            self.port = server.instance.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._broker is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._broker.shutdown(), STOP_TIMEOUT)


async def _cancel_leftovers() -> None:
    current = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=STOP_TIMEOUT)


@contextlib.contextmanager
def start_embedded_process(port: int | None = None, extra_args: list[str] | None = None) -> Iterator[BrokerInfo]:
    """Run ``python -m orchestrator.broker`` in a child process on 127.0.0.1 (SIGTERM, then SIGKILL)."""
    chosen = port if port is not None else free_port()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.broker", "--host", HOST, "--port", str(chosen), *(extra_args or [])],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        cwd=str(REPO_ROOT),
    )
    try:
        try:
            wait_for_port(HOST, chosen, START_TIMEOUT, proc)
        except (RuntimeError, TimeoutError) as exc:
            _stop_process(proc)
            stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise RuntimeError(f"embedded broker process did not start on port {chosen}: {exc}\n{stderr}") from exc
        yield BrokerInfo("amqtt", HOST, chosen)
    finally:
        _stop_process(proc)
        if proc.stderr is not None:
            proc.stderr.close()


# ------------------------------------------------------------------------------------- either kind


@contextlib.contextmanager
def start_broker(
    kind: str,
    *,
    max_payload: int | None = None,
    max_queued: int | None = None,
    acl_rules: dict[str | None, tuple[list[str], list[str]]] | None = None,
    users: dict[str, str] | None = None,
) -> Iterator[BrokerInfo]:
    """Start a broker of ``kind`` ("amqtt", "mosquitto" or "nats") configured the same way on each.

    ``acl_rules`` maps a username (``None`` = anonymous) to ``(read_patterns, write_patterns)``
    with MQTT wildcards: mosquitto gets an ``acl_file``; the embedded broker gets an ``acl``
    callback built from the same rules with MQTT's own matching; a single NATS node
    (tests/natslab.py) gets an ``authorization`` block with the patterns as NATS subjects.
    "nats" is not in :data:`BROKER_KINDS` (the default parametrization): see :data:`NATS_ENV`.
    """
    if kind == "mosquitto":
        extra: list[str] = []
        files: dict[str, str] = {}
        if max_payload is not None:
            extra.append(f"message_size_limit {max_payload}")
        if acl_rules is not None:
            files["acl"] = _mosquitto_acl(acl_rules)
            extra.append("acl_file ${dir}/acl")
        with start_mosquitto(
            extra_conf="\n".join(extra), files=files, passwords=users, max_queued=max_queued or 100_000
        ) as info:
            yield info
        return
    if kind == "amqtt":
        options: dict[str, Any] = {}
        if max_payload is not None:
            options["max_payload"] = max_payload
        if max_queued is not None:
            options["max_queued"] = max_queued
        if users is not None:
            options["users"] = users
        if acl_rules is not None:
            options["acl"] = acl_from_rules(acl_rules)
        if os.environ.get(STOCK_ENV) == "1" and acl_rules is not None:
            options["acl_rules"] = acl_rules
            options.pop("acl", None)
        with start_embedded_thread(**options) as info:
            yield info
        return
    if kind == "nats":
        from natslab import nats_authorization, start_nats

        # max_queued has no nats-server equivalent; max_payload maps to NATS's own limit, which
        # nats-server 2.9 does not apply to MQTT clients (tests/test_nats_mqtt.py)
        authorization, probe = nats_authorization(users, acl_rules)
        with start_nats(
            authorization=authorization,
            extra_conf=f"max_payload: {max_payload}" if max_payload is not None else "",
            probe_credentials=probe,
        ) as lab:
            yield lab.nodes[0].info
        return
    raise ValueError(f"unknown broker kind {kind!r}; expected one of {(*BROKER_KINDS, 'nats')}")


def _write_mosquitto_passwords(path: Path, passwords: dict[str, str]) -> None:
    """mosquitto 2.0 reads only hashed password files: write plain text, hash it in place."""
    path.write_text("".join(f"{user}:{password}\n" for user, password in passwords.items()))
    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    subprocess.run([tool, "-U", str(path)], check=True, timeout=START_TIMEOUT, capture_output=True)


def _mosquitto_acl(rules: dict[str | None, tuple[list[str], list[str]]]) -> str:
    lines: list[str] = []
    anonymous = rules.get(None)
    if anonymous is not None:
        lines += [f"topic read {t}" for t in anonymous[0]]
        lines += [f"topic write {t}" for t in anonymous[1]]
    for user, (read, write) in rules.items():
        if user is None:
            continue
        lines.append("")
        lines.append(f"user {user}")
        lines += [f"topic read {t}" for t in read]
        lines += [f"topic write {t}" for t in write]
    return "\n".join(lines) + "\n"


def acl_from_rules(
    rules: dict[str | None, tuple[list[str], list[str]]],
) -> Callable[[str | None, str, str], bool]:
    """An ``EmbeddedBroker`` ACL callback from the same rules as :func:`_mosquitto_acl`.

    Like mosquitto: ``subscribe`` and ``receive`` need a read pattern, ``publish`` a write one;
    a subscription filter is admitted only if the pattern covers every topic the filter can match.
    """
    from orchestrator.broker import filter_covers, topic_matches

    def acl(username: str | None, action: str, topic: str) -> bool:
        read, write = rules.get(username, ([], []))
        if action == "publish":
            return any(topic_matches(p, topic) for p in write)
        if action == "receive":
            return any(topic_matches(p, topic) for p in read)
        if action == "subscribe":
            return any(filter_covers(p, topic) for p in read)
        return False

    return acl


# ------------------------------------------------------------------------------------- robots


def make_credentials(loaded: LoadedConfig) -> CredentialStore:
    """The robot's credentials directory (as `orchestrator credentials CONFIG` makes it)."""
    from orchestrator.security.access import store_for
    from orchestrator.security.acl import mosquitto_acl, rights
    from orchestrator.security.credentials import identities_of

    store = store_for(loaded.config, loaded.path)
    extra = ["upstream.secret"] if loaded.config.upstream is not None else []
    store.ensure(identities_of(loaded.config), acl=mosquitto_acl(rights(loaded.config, loaded.topology)), extra=extra)
    return store


@contextlib.contextmanager
def start_robot_broker(kind: str, loaded: LoadedConfig, *, port: int | None = None,
                       max_payload: int | None = None) -> Iterator[BrokerInfo]:
    """A broker that serves exactly one robot as `orchestrator` would deploy it: every identity with its
    own password (from the robot's credentials, created here if missing), topic rights from the
    topology, no anonymous access (unless the robot runs ``security.insecure``)."""
    from orchestrator.protocol.codec import MAX_PAYLOAD

    if loaded.config.security.insecure:
        limit = f"message_size_limit {max_payload or MAX_PAYLOAD}"
        with (start_mosquitto(port, limit) if kind == "mosquitto" else start_embedded_thread(port)) as info:
            yield info
        return
    store = make_credentials(loaded)
    tls_port = None
    if loaded.config.broker.tls is not None:  # the URL's port is the TLS listener; certificates for 127.0.0.1
        from orchestrator.security.tls import make_dev_certs

        make_dev_certs(store.directory, ["127.0.0.1", "localhost"], robot=loaded.config.robot)
        tls_port, port = port or free_port(), None
    if kind == "mosquitto":
        # the same payload limit as the embedded broker's default (and the codec's)
        extra = ["password_file ${dir}/passwd", "acl_file ${dir}/acl",
                 f"message_size_limit {max_payload or MAX_PAYLOAD}"]
        if tls_port is not None:
            extra += [f"listener {tls_port} 127.0.0.1", "cafile ${dir}/ca.crt", "certfile ${dir}/broker.crt",
                      "keyfile ${dir}/broker.key"]
        files = {"passwd": store.path("passwd").read_text(), "acl": store.path("acl").read_text()}
        if tls_port is not None:  # mosquitto drops privileges: its own copies, readable by it
            files["ca.crt"] = store.path("ca.crt").read_text()
            files["broker.crt"] = store.path("broker.crt").read_text()
            files["broker.key"] = store.path("broker.key").read_text()
        if loaded.config.upstream is not None:  # mosquitto's own bridge, configured as `broker-config` does
            from orchestrator.broker.mosquitto_conf import bridge_conf

            secret = store.path("upstream.secret").read_text().strip()
            files["bridge.d/bridge.conf"] = bridge_conf(loaded.config, secret)
            extra.append("include_dir ${dir}/bridge.d")
        with start_mosquitto(port, "\n".join(extra), files=files, anonymous=False) as info:
            yield dataclasses.replace(info, port=tls_port, tls=True) if tls_port is not None else info
        return
    if kind == "amqtt":
        from orchestrator.security.acl import AclChecker, rights

        options: dict[str, Any] = {"passwords": store.password_file(),
                                   "acl": AclChecker(rights(loaded.config, loaded.topology))}
        if tls_port is not None:
            options.update(tls_port=tls_port, certfile=str(store.path("broker.crt")),
                           keyfile=str(store.path("broker.key")))
        if max_payload is not None:
            options["max_payload"] = max_payload
        with start_embedded_thread(port, **options) as info:
            yield dataclasses.replace(info, port=tls_port, tls=True) if tls_port is not None else info
        return
    raise ValueError(f"unknown broker kind {kind!r}; expected one of {BROKER_KINDS}")


# ------------------------------------------------------------------------------------- fixtures


@pytest.fixture
def mosquitto_broker() -> Iterator[BrokerInfo]:
    """A fresh mosquitto on a free port for one test."""
    with start_mosquitto() as info:
        yield info


@pytest.fixture
async def embedded_broker() -> AsyncIterator[EmbeddedBroker]:
    """The embedded broker running in the test's own event loop (async tests only)."""
    from orchestrator.broker import EmbeddedBroker

    async with EmbeddedBroker(HOST, 0) as embedded:
        yield embedded


@pytest.fixture(params=FIXTURE_KINDS)
def broker_kind(request: pytest.FixtureRequest) -> str:
    """ "amqtt" or "mosquitto" (and "nats" with ORCHESTRATOR_TEST_NATS=1): use with
    :func:`start_broker` when a test needs a configured broker."""
    kind: str = request.param
    if kind == "nats":
        reason = NATS_DIFFERENCES.get(getattr(request.node, "originalname", request.node.name))
        if reason is not None:
            request.applymarker(pytest.mark.xfail(reason=f"nats-server: {reason}", strict=True))
    return kind


@pytest.fixture
def broker(broker_kind: str) -> Iterator[BrokerInfo]:
    """The same test against the embedded broker (own thread and loop) and against mosquitto."""
    with start_broker(broker_kind) as info:
        yield info


def listener_blocks(conf: str) -> list[list[str]]:
    """The listener blocks of a mosquitto configuration: each the ``listener`` line and the lines under it."""
    blocks: list[list[str]] = []
    for line in conf.splitlines():
        if line.startswith("listener "):
            blocks.append([line])
        elif blocks and line and not line.startswith("#"):
            blocks[-1].append(line)
    return blocks


@contextlib.contextmanager
def mosquitto_from_broker_config(loaded: LoadedConfig, store: CredentialStore, workdir: Path, *, port: int,
                                 wait_port: int | None = None, args: tuple[str, ...] = (),
                                 files: tuple[str, ...] = ("passwd", "acl")) -> Iterator[Path]:
    """mosquitto run on exactly the file `orchestrator broker-config --port PORT ARGS` writes for the robot (its
    ``files`` of the credentials copied where mosquitto, which drops privileges, can read them); yields the
    file once ``wait_port`` (default ``port``) accepts connections."""
    # what a deployment mounts for mosquitto, readable by its user (pytest's tmp_path is not: 0700 parents)
    mounted = Path(tempfile.mkdtemp(prefix="orc-mosquitto-"))
    mounted.chmod(0o755)
    try:
        res = subprocess.run([sys.executable, "-m", "orchestrator", "broker-config", "-c", str(loaded.path),
                              "--out", str(workdir / "conf"), "--port", str(port), "--mount", str(mounted), *args],
                             capture_output=True, text=True, timeout=30)
        assert res.returncode == 0, res.stderr
        for name in files:
            shutil.copy(store.path(name), mounted / name)
            (mounted / name).chmod(0o644)
        conf = workdir / "conf" / "mosquitto.conf"
        log_path = workdir / "mosquitto.log"
        with log_path.open("w") as log:
            proc = subprocess.Popen([mosquitto_path(), "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        try:
            try:
                wait_for_port(HOST, wait_port or port, START_TIMEOUT, proc)
            except (RuntimeError, TimeoutError) as exc:
                raise AssertionError(f"mosquitto did not start: {exc}\n{log_path.read_text()}") from None
            yield conf
        finally:
            _stop_process(proc)
    finally:
        shutil.rmtree(mounted, ignore_errors=True)
