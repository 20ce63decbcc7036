"""API keys: who is calling (tenant) and what they may do (role).

Keys are stored only as their SHA-256 digests (a key given in plain text in the configuration is hashed
when the configuration is read, and the plain text is not kept). A presented key is hashed and compared
with every stored digest using `hmac.compare_digest`, without stopping at the first match, so the time
taken says nothing about which key, or how much of one, matched.

Roles: `client` may use the data plane (tasks, streams, its sessions, capabilities); `admin` may use
everything, including the control plane (catalog, pools). With no keys configured (only allowed on a
loopback address, or with `auth.allow_unauthenticated: true`) every caller is the `default` tenant
with the `admin` role.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from orchestratord.errors import Forbidden, Unauthorized

Role = Literal["client", "admin"]
ROLES: tuple[Role, ...] = ("client", "admin")
DEFAULT_TENANT = "default"
_BEARER_HINT = {"WWW-Authenticate": 'Bearer realm="orchestratord"'}


def hash_key(key: str) -> str:
    """The hex SHA-256 of a key, as stored in `auth.keys[].key_sha256` and in keys files."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class KeyEntry:
    digest: bytes
    tenant: str
    role: Role


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller, as established from its credential (never from anything else it sends)."""

    tenant: str
    role: Role
    key_id: str | None = None  # the first 12 hex digits of the key's digest, for logs

    def may(self, role: Role) -> bool:
        return self.role == "admin" or self.role == role


ANONYMOUS = Principal(DEFAULT_TENANT, "admin")


class ApiKeys:
    """Authenticates bearer tokens against stored digests."""

    def __init__(
        self, entries: Iterable[KeyEntry], *, compare: Callable[[bytes, bytes], bool] = hmac.compare_digest
    ) -> None:
        self._entries = tuple(entries)
        self._compare = compare

    @classmethod
    def from_digests(cls, keys: Iterable[tuple[str, str, Role]]) -> ApiKeys:
        """From (hex digest, tenant, role) triples, as the settings hold them."""
        return cls(KeyEntry(bytes.fromhex(d), tenant, role) for d, tenant, role in keys)

    @property
    def enabled(self) -> bool:
        return bool(self._entries)

    def authenticate(self, presented: str) -> Principal | None:
        digest = hashlib.sha256(presented.encode()).digest()
        found: KeyEntry | None = None
        for entry in self._entries:  # every entry is compared: no early exit
            if self._compare(entry.digest, digest) and found is None:
                found = entry
        if found is None:
            return None
        return Principal(found.tenant, found.role, found.digest.hex()[:12])

    def principal(self, authorization: str | None) -> Principal:
        """The caller named by an `Authorization` header; Unauthorized (401) when missing or wrong."""
        if not self.enabled:
            return ANONYMOUS
        if not authorization:
            raise Unauthorized(
                "missing API key: send it as 'Authorization: Bearer <key>'", headers=dict(_BEARER_HINT)
            )
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized(
                "malformed Authorization header: use 'Authorization: Bearer <key>'",
                headers=dict(_BEARER_HINT),
            )
        found = self.authenticate(token.strip())
        if found is None:
            raise Unauthorized("invalid API key", headers=dict(_BEARER_HINT))
        return found


def authorize(principal: Principal, role: Role) -> None:
    """Forbidden (403) unless the caller's role allows `role`'s endpoints."""
    if not principal.may(role):
        raise Forbidden(f"this API key has the role {principal.role!r}; this endpoint needs an {role!r} key")


def parse_keys_file(text: str, source: str) -> list[dict[str, str]]:
    """A keys file: one key per line, `<sha256 hex> <tenant> [<role>]` (role defaults to client);
    blank lines and lines starting with `#` are ignored. Only digests, never keys, belong in it."""
    keys: list[dict[str, str]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) not in (2, 3):
            raise ValueError(f"{source} line {number}: expected '<sha256 hex> <tenant> [client|admin]'")
        role = parts[2] if len(parts) == 3 else "client"
        keys.append({"key_sha256": parts[0].lower(), "tenant": parts[1], "role": role})
    return keys
