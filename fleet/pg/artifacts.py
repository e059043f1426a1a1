"""Artifact bytes every controller replica can serve: kept in PostgreSQL, cached on each replica's disk.

Replicas share the database and nothing else, so an artifact uploaded to one replica must reach
a device that fetches it from another. Its bytes go into the database (`artifact_chunks`: the
sha256, a chunk number, 1 MiB of bytes) rather than onto shared storage: the controller then
needs no shared filesystem or object store (nothing to mount or provision on Kubernetes, nothing
more to back up), artifacts are tens of MB and few (a model per rollout), and a replica reads each
from the database once, into its local cache; devices are served from that file exactly as a
single controller serves them (`os.pread`s of one chunk at a time).

- Upload (any replica): the bytes stream into `incoming/` while they are hashed, as ever; when the
  upload finishes, before the file moves to its address, they are written to the database in one
  transaction (`PgRolloutTables.store_artifact_bytes`; `on conflict do nothing`, so the same
  artifact uploaded to two replicas at once keeps one copy). UploadArtifact answers, and the
  artifact's record exists, only after that commit: every replica can then serve it.
- Fetch (any replica): `prepare` (which `open` calls) finds the file at its address, or reads the
  bytes from the database into `incoming/`, checks their sha256, fsyncs and renames them into place.
  One thread per artifact does this at a time; concurrent fetches of the same missing artifact wait
  for it and read the file it made.
- A cached file is hashed once per process before it is first served (and again whenever its size,
  inode or modification time changes); one that does not hash to its name is deleted and read from
  the database again, never served.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ..artifacts import DEFAULT_CHUNK, ArtifactFiles
from ..errors import FleetError, NotFound

if TYPE_CHECKING:
    from .rollouts import PgRolloutTables

logger = logging.getLogger(__name__)

DATABASE_CHUNK = DEFAULT_CHUNK
"""Bytes per row of `artifact_chunks` (1 MiB)."""


class CorruptArtifact(FleetError):
    """The database's bytes of an artifact do not hash to its sha256 (INTERNAL)."""


class DatabaseBackedArtifactFiles(ArtifactFiles):
    """`ArtifactFiles` under `root` (this replica's cache) whose bytes also live in `store`'s database."""

    def __init__(self, root: Path | str, store: PgRolloutTables):
        super().__init__(root)
        self.store = store
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._checked: dict[str, tuple[int, int, int]] = {}
        """sha256 -> (inode, size, mtime_ns) of the cached file when it last hashed to its name."""

    def publish(self, complete: Path, sha256: str) -> None:
        """Write the bytes to the database (unless it has them), then move the file to its address."""
        with self._lock(sha256):
            written = self.store.store_artifact_bytes(sha256, _chunks_of(complete))
            super().publish(complete, sha256)
            self._remember(sha256)
        logger.info("artifact %s: %s", sha256[:12], "bytes written to the database" if written
                    else "the database had its bytes already")

    def prepare(self, sha256: str) -> None:
        """The cached file, checked; or the bytes read from the database into it (NotFound when it has none)."""
        path = self.path(sha256)
        with self._lock(sha256):
            if not self._cached(sha256, path):
                self._materialise(sha256)

    def _lock(self, sha256: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(sha256, threading.Lock())

    def _remember(self, sha256: str) -> None:
        self._checked[sha256] = _identity(os.stat(self.path(sha256)))

    def _cached(self, sha256: str, path: Path) -> bool:
        """Whether the file at `path` is whole: checked since it last changed, or hashing to `sha256` now."""
        try:
            identity = _identity(os.stat(path))
        except FileNotFoundError:
            return False
        if self._checked.get(sha256) == identity:
            return True
        if _sha256_of(path) == sha256:
            self._checked[sha256] = identity
            return True
        logger.warning("artifact %s: the cached file %s does not hash to its name; reading it from the database "
                       "again", sha256[:12], path)
        self._checked.pop(sha256, None)
        path.unlink(missing_ok=True)
        return False

    def _materialise(self, sha256: str) -> None:
        part = self.incoming / uuid.uuid4().hex
        digest, size = hashlib.sha256(), 0
        try:
            with open(part, "wb") as out, contextlib.closing(self.store.artifact_bytes(sha256)) as chunks:
                for data in chunks:
                    digest.update(data)
                    out.write(data)
                    size += len(data)
                out.flush()
                os.fsync(out.fileno())
            if not size:
                raise NotFound(f"artifact {sha256} has no bytes in the fleet database")
            if digest.hexdigest() != sha256:
                raise CorruptArtifact(f"artifact {sha256}: the database's {size} bytes hash to {digest.hexdigest()}")
            super().publish(part, sha256)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        self._remember(sha256)
        logger.info("artifact %s: %d bytes read from the database into %s", sha256[:12], size, self.path(sha256))


def _chunks_of(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as file:
        while data := file.read(DATABASE_CHUNK):
            yield data


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    for data in _chunks_of(path):
        digest.update(data)
    return digest.hexdigest()


def _identity(stat: os.stat_result) -> tuple[int, int, int]:
    return stat.st_ino, stat.st_size, stat.st_mtime_ns
