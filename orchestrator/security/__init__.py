"""Security: one identity per part and client, topic rights from the topology, secrets on disk.

- :mod:`orchestrator.security.credentials`: the credentials directory (secrets, session key,
  password file), created by ``orchestrator credentials -c CONFIG``;
- :mod:`orchestrator.security.acl`: topic rights per identity (``orchestrator acl -c CONFIG`` prints
  them for mosquitto; the embedded broker enforces the same);
- :mod:`orchestrator.security.passwords`: mosquitto-compatible password hashes.

See docs/security.md.
"""

from orchestrator.security.acl import AclChecker, Rights, mosquitto_acl, rights
from orchestrator.security.credentials import CredentialsMissing, CredentialStore, identities_of
from orchestrator.security.passwords import PasswordFile, hash_password

__all__ = [
    "AclChecker",
    "CredentialStore",
    "CredentialsMissing",
    "PasswordFile",
    "Rights",
    "hash_password",
    "identities_of",
    "mosquitto_acl",
    "rights",
]
