"""The model catalog: which model artifacts an operator has registered, their digests and lifecycle.

An entry's id is the `model_ref` jobs name. Its state is Active, Deprecated (new sessions need
`override: true`) or Retired (no new jobs). `verify` hashes the local artifact (SHA-256) and compares it
with the registered digest: a mismatch marks the entry untrusted, and jobs for it are refused with
UNTRUSTED_ARTIFACT until a later verify matches. Models without an entry are not restricted.

Entries persist in SQLite (`catalog.sqlite3` in `catalog.dir`); SQLite calls run in a worker thread,
and reads on the job path come from an in-memory copy kept in step with every write. With shared state
(`shared`, Redis) the entries live in Redis instead, for every replica: a change made through one is
written there, and every replica reads the entries again within `FOLLOW_S` of any change (a
`catalog.sqlite3` found at start seeds a deployment that never had a catalog, once).
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import sqlite3
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, TypeVar
from urllib.parse import unquote, urlsplit

import orjson

from orchestratord.errors import (
    Conflict,
    Internal,
    InvalidParams,
    ModelDeprecated,
    NotFound,
    OrchestratorError,
    PoolUnavailable,
    StateUnavailable,
    UntrustedArtifact,
)
from orchestratord.logs import get_logger
from orchestratord.state.shared import SharedState

ModelState = Literal["Active", "Deprecated", "Retired"]
Trust = Literal["unverified", "trusted", "untrusted"]
T = TypeVar("T")
log = get_logger(__name__)
FOLLOW_S = 0.25  # with shared state: how often a replica looks for changes made through the others
_CHUNK = 1 << 20
_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    id TEXT PRIMARY KEY,
    entry TEXT NOT NULL
)
"""


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    id: str
    digest: str  # lowercase hex SHA-256 of the artifact
    source: str  # where the artifact lives: a local path or file:// URL (verifiable), or any URI
    tags: tuple[str, ...] = ()
    state: ModelState = "Active"
    trust: Trust = "unverified"
    observed_digest: str | None = None  # what the last verify measured
    verified_at: float | None = None
    created_at: float = 0.0
    updated_at: float = 0.0

    def to_json(self) -> str:
        return orjson.dumps(self).decode()

    @classmethod
    def from_json(cls, text: str) -> CatalogEntry:
        data = orjson.loads(text)
        data["tags"] = tuple(data.get("tags") or ())
        return cls(**data)


class Catalog:
    def __init__(
        self,
        directory: str | Path,
        *,
        artifacts_dir: str | Path | None = None,
        wall: Callable[[], float] = time.time,
        shared: SharedState | None = None,
    ) -> None:
        self.path = Path(directory) / "catalog.sqlite3"
        self._shared = shared
        self._version = -1  # of the shared catalog, as last read
        self._seed: list[str] | None = None  # id, JSON, ...: what catalog.sqlite3 held, for Redis
        self._follower: asyncio.Task[None] | None = None
        self.artifacts_dir = None if artifacts_dir is None else Path(artifacts_dir)
        self._wall = wall
        self._entries: dict[str, CatalogEntry] = {}
        self._db: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()

    # -- lifecycle -------------------------------------------------------------------------------
    async def open(self) -> None:
        self._db = await asyncio.to_thread(self._connect)
        rows = await self._run(lambda db: db.execute("SELECT entry FROM models").fetchall())
        self._entries = {e.id: e for e in (CatalogEntry.from_json(r[0]) for r in rows)}
        if self._shared is not None:
            self._seed = [part for e in self._entries.values() for part in (e.id, e.to_json())]
            self._entries = {}
            await self.aclose()  # the entries are Redis's now; the file only seeded them
            try:
                await self._follow_once(self._shared)
            except StateUnavailable:
                log.warning("catalog_not_loaded", reason="state backend unreachable; retrying")
            self._follower = asyncio.create_task(self._follow(self._shared))

    async def _follow(self, shared: SharedState) -> None:
        """Read the shared catalog again whenever its version moves (a change on any replica)."""
        while True:
            await asyncio.sleep(FOLLOW_S)
            try:
                await self._follow_once(shared)
            except StateUnavailable:
                continue  # keep the entries it has; they are read again when Redis is back
            except Exception:  # task root: a follower that stops would leave this replica's copy stale
                log.error("catalog_follow_error", exc_info=True)

    async def _follow_once(self, shared: SharedState) -> None:
        if self._seed is not None:
            if self._seed:
                await shared.catalog_change("seed", *self._seed)
            self._seed = None
        if await shared.catalog_version() == self._version:
            return
        self._version, stored = await shared.catalog_entries()
        self._entries = {model_id: CatalogEntry.from_json(text) for model_id, text in stored.items()}

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False)
        with db:
            db.execute(_SCHEMA)
        return db

    async def aclose(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            await asyncio.gather(self._follower, return_exceptions=True)
            self._follower = None
        if self._db is not None:
            db, self._db = self._db, None
            await asyncio.to_thread(db.close)

    async def _run(self, call: Callable[[sqlite3.Connection], T]) -> T:
        """One SQLite call at a time, in a worker thread."""
        async with self._lock:
            if self._db is None:
                raise Internal("the model catalog is closed")
            return await asyncio.to_thread(call, self._db)

    # -- reads -----------------------------------------------------------------------------------
    def list(self) -> list[CatalogEntry]:
        return sorted(self._entries.values(), key=lambda e: e.id)

    def get(self, model_id: str) -> CatalogEntry:
        entry = self._entries.get(model_id)
        if entry is None:
            raise NotFound(f"no catalog entry {model_id!r}; GET /v1/catalog/models lists them")
        return entry

    # -- writes ----------------------------------------------------------------------------------
    async def add(
        self, model_id: str, digest: str, source: str, tags: Sequence[str], state: ModelState
    ) -> CatalogEntry:
        if model_id in self._entries:
            raise Conflict(f"catalog entry {model_id!r} already exists; DELETE it first to replace it")
        now = self._wall()
        entry = CatalogEntry(
            model_id, digest.lower(), source, tuple(tags), state, created_at=now, updated_at=now
        )
        await self._save(entry, new=True)
        return entry

    async def delete(self, model_id: str) -> None:
        self.get(model_id)
        if self._shared is not None:
            if not await self._shared.catalog_change("del", model_id):
                raise NotFound(f"no catalog entry {model_id!r}; GET /v1/catalog/models lists them")
        else:
            await self._write(lambda db: db.execute("DELETE FROM models WHERE id = ?", (model_id,)))
        self._entries.pop(model_id, None)

    async def set_state(self, model_id: str, state: ModelState) -> CatalogEntry:
        entry = replace(self.get(model_id), state=state, updated_at=self._wall())
        await self._save(entry)
        return entry

    async def verify(self, model_id: str) -> CatalogEntry:
        """Hash the local artifact and compare; a mismatch marks the entry untrusted."""
        entry = self.get(model_id)
        path = local_path(entry.source)
        try:
            observed = await asyncio.to_thread(self._hash_artifact, model_id, path)
        except OSError as exc:  # the file is not what the server has: its state, not the request
            raise Conflict(
                f"cannot read the artifact of {model_id!r} at {str(path)!r} ({exc.strerror}); put the "
                "file there, or DELETE the entry and register it with the right source"
            ) from None
        except ValueError as exc:  # a NUL: no file system can name it
            raise InvalidParams(
                f"cannot read the artifact of {model_id!r}: its source {entry.source!r} is not a valid "
                f"path ({exc}); DELETE the entry and register it with a valid source"
            ) from None
        now = self._wall()
        trust: Trust = "trusted" if observed == entry.digest else "untrusted"
        verified = replace(entry, trust=trust, observed_digest=observed, verified_at=now, updated_at=now)
        await self._save(verified)
        return verified

    def _hash_artifact(self, model_id: str, path: Path) -> str:
        """The file's digest, read only under `artifacts_dir` (symlinks resolved first, so a link
        cannot lead out of it); Conflict for a file elsewhere, or when no directory is configured."""
        resolved = path.resolve()  # ValueError for a NUL: the source itself is malformed
        if self.artifacts_dir is None:
            raise Conflict(
                "verify reads artifacts only under catalog.artifacts_dir, which is not configured; set "
                "it to the directory that holds the model files"
            )
        root = self.artifacts_dir.resolve()
        if not resolved.is_relative_to(root):
            raise Conflict(
                f"the artifact of {model_id!r} at {str(path)!r} is outside catalog.artifacts_dir "
                f"({str(root)!r}); verify reads only files under it"
            )
        return sha256_file(path)

    async def _save(self, entry: CatalogEntry, *, new: bool = False) -> None:
        if self._shared is not None:
            if not await self._shared.catalog_change("add" if new else "put", entry.id, entry.to_json()):
                if new:  # added through another replica a moment ago
                    raise Conflict(
                        f"catalog entry {entry.id!r} already exists; DELETE it first to replace it"
                    )
                raise NotFound(f"no catalog entry {entry.id!r}: it was deleted meanwhile")
            self._entries[entry.id] = entry
            return
        await self._write(
            lambda db: db.execute(
                "INSERT INTO models (id, entry) VALUES (?, ?) "
                "ON CONFLICT(id) DO UPDATE SET entry = excluded.entry",
                (entry.id, entry.to_json()),
            )
        )
        self._entries[entry.id] = entry

    async def _write(self, statement: Callable[[sqlite3.Connection], object]) -> None:
        def run(db: sqlite3.Connection) -> None:
            with db:
                statement(db)

        await self._run(run)

    # -- the job path ----------------------------------------------------------------------------
    def usable(self, model_ref: str) -> bool:
        """Whether a job outside any session may use the model now (not untrusted, retired or
        deprecated)."""
        try:
            self.check(model_ref, new_session=True, override=False)
        except OrchestratorError:
            return False
        return True

    def check(self, model_ref: str, *, new_session: bool, override: bool) -> None:
        """Refuse a job for an untrusted or retired model, or a new session on a deprecated one."""
        entry = self._entries.get(model_ref)
        if entry is None:
            return
        if entry.trust == "untrusted":
            raise UntrustedArtifact(
                f"model {model_ref!r} failed verification: its artifact's sha256 is "
                f"{entry.observed_digest}, not the registered {entry.digest}; an operator must restore "
                "the artifact and verify it again"
            )
        if entry.state == "Retired":
            error = PoolUnavailable(f"model {model_ref!r} is retired; no pool serves it any more")
            error.retriable = False
            raise error
        if entry.state == "Deprecated" and new_session and not override:
            raise ModelDeprecated(
                f'model {model_ref!r} is deprecated: move to another model, or send "override": true '
                "to start a new session on it anyway"
            )


def local_path(source: str) -> Path:
    """The local file an entry's source names; InvalidParams when it is not a local path."""
    parts = urlsplit(source)
    if parts.scheme == "file":
        return Path(unquote(parts.path))
    if parts.scheme and len(parts.scheme) > 1:
        raise InvalidParams(
            f"source {source!r} is not a local file; verify hashes a local path or file:// URL"
        )
    return Path(source)


def sha256_file(path: Path) -> str:
    """The file's SHA-256. Only regular files: a device or a pipe (/dev/zero) would never end."""
    if not stat.S_ISREG(path.stat().st_mode):
        raise OSError(errno.EINVAL, "not a regular file")
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
