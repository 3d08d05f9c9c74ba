"""The credentials directory: one secret per identity, the robot's session key, the password file.

Layout (flat, so each file can also be a docker compose secret mounted under ``/run/secrets``)::

    session.key              the robot's session key (HMAC key of session ids), every part reads it
    part.<name>.secret       the broker password of identity <robot>/part/<name>
    client.<name>.secret     the broker password of identity <robot>/client/<name>
    bridge.upstream.secret   the local password of the upstream bridge
    passwd                   every identity's password hash (mosquitto format; the embedded broker reads it)
    acl                      the broker's topic rights (mosquitto format; `orchestrator acl` prints the same)

The directory is created owner-only (0700) and every file 0600.  ``ensure`` never overwrites a secret
that exists (re-running it is safe); ``rotate=True`` replaces them.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import ConfigError
from orchestrator.protocol.topics import Identity
from orchestrator.security import passwords

__all__ = ["CredentialStore", "CredentialsMissing", "identities_of"]

SESSION_KEY = "session.key"
PASSWD = "passwd"
ACL = "acl"
ENV = "ORCHESTRATOR_CREDENTIALS"
MAX_SECRET = 4096


class CredentialsMissing(ConfigError):
    """A secret this process needs is not in the credentials directory."""

    code = "credentials_missing"

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message, None, **details)


def identities_of(config: object) -> list[Identity]:
    """Every identity of a robot: its parts, its clients, the launcher, the upstream bridge."""
    from orchestrator.config.models import LAUNCHER_CLIENT, RobotConfig

    assert isinstance(config, RobotConfig)
    robot = config.robot
    out = [Identity(robot, "part", p.name) for p in config.parts]
    out += [Identity(robot, "client", c.name) for c in config.clients]
    out.append(Identity(robot, "client", LAUNCHER_CLIENT))
    out.append(Identity(robot, "bridge", "upstream"))
    return out


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically with mode 0600 (never readable by others, even briefly)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


@dataclass(frozen=True)
class CredentialStore:
    directory: Path

    @classmethod
    def for_config(cls, config_path: Path, setting: str, robot: str, override: str | Path | None = None) -> \
            CredentialStore:
        """The directory a config names (relative to the config file), unless ``override`` or
        ``$ORCHESTRATOR_CREDENTIALS`` says otherwise."""
        chosen = override if override is not None else os.environ.get(ENV)
        if chosen:
            return cls(Path(chosen))
        raw = Path(setting.replace("{robot}", robot)).expanduser()
        if not raw.is_absolute():
            raw = config_path.resolve().parent / raw
        return cls(raw)

    # -- reading ----------------------------------------------------------------------------------
    def path(self, name: str) -> Path:
        return self.directory / name

    def _read(self, name: str, what: str) -> str:
        p = self.path(name)
        try:
            if not p.is_file():
                raise FileNotFoundError(p)
            with p.open("r", encoding="utf-8") as f:
                text = f.read(MAX_SECRET + 1)
        except FileNotFoundError:
            raise CredentialsMissing(
                f"{p}: no {what} (create the robot's credentials with `orchestrator credentials -c CONFIG`, "
                f"or point $ORCHESTRATOR_CREDENTIALS at the directory that holds them)", path=str(p)) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise CredentialsMissing(f"{p}: cannot read the {what}: {exc}", path=str(p)) from None
        secret = text.strip()
        if not secret or len(text) > MAX_SECRET:
            raise CredentialsMissing(f"{p}: the {what} is empty or too long", path=str(p))
        self._warn_if_open(p)
        return secret

    @staticmethod
    def _warn_if_open(p: Path) -> None:
        import logging

        with contextlib.suppress(OSError):
            mode = p.stat().st_mode
            if mode & (stat.S_IRWXG | stat.S_IRWXO) and not str(p).startswith("/run/secrets"):
                logging.getLogger("orchestrator.security").warning(
                    "%s is readable by others (mode %o): chmod 600 it", p, stat.S_IMODE(mode))

    def password(self, identity: Identity) -> str:
        return self._read(identity.secret_file, f"password for {identity.username}")

    def session_key(self) -> bytes:
        return self._read(SESSION_KEY, "session key").encode()

    def password_file(self) -> passwords.PasswordFile:
        p = self.path(PASSWD)
        try:
            return passwords.PasswordFile.load(p)
        except FileNotFoundError:
            raise CredentialsMissing(f"{p}: no password file (run `orchestrator credentials -c CONFIG`)",
                                     path=str(p)) from None
        except (OSError, ValueError) as exc:
            raise CredentialsMissing(f"{p}: {exc}", path=str(p)) from None

    # -- creating ---------------------------------------------------------------------------------
    def ensure(self, identities: Iterable[Identity], *, rotate: bool = False, acl: str | None = None,
               extra: Iterable[str] = ()) -> list[str]:
        """Create what is missing (every secret with ``rotate``); rewrite the password file (and the ACL
        file if given).  ``extra``: more secret files to create if missing (e.g. the robot's password on
        its upstream broker).  Returns the names of the files created or replaced."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.directory, 0o700)
        made: list[str] = []
        for name in (SESSION_KEY, *extra):
            p = self.path(name)
            if rotate or not p.exists():
                _write_private(p, secrets.token_urlsafe(32) + "\n")
                made.append(name)
        hashes: list[tuple[str, str]] = []
        for ident in identities:
            p = self.path(ident.secret_file)
            if rotate or not p.exists():
                _write_private(p, secrets.token_urlsafe(24) + "\n")
                made.append(ident.secret_file)
            hashes.append((ident.username, passwords.hash_password(self.password(ident))))
        _write_private(self.path(PASSWD), passwords.render(hashes))
        made.append(PASSWD)
        if acl is not None:
            _write_private(self.path(ACL), acl)
            made.append(ACL)
        return made
