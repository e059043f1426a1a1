"""Artifact bytes, content addressed: `<root>/<sha[:2]>/<sha256>`.

An upload streams into `<root>/incoming/` while it is hashed, and is renamed into place only
once it is complete and matches what its manifest claims, so a file at its address is always
whole. Reads are `pread`s of one chunk at a time: a thousand devices fetching the same
artifact cost one chunk of memory each, never the whole file.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import InvalidArgument, NotFound

SHA256 = re.compile(r"[0-9a-f]{64}")
DEFAULT_CHUNK = 1 << 20
MAX_CHUNK = 4 << 20
MIN_CHUNK = 4 << 10


class Upload:
    """One incoming file: `write()` chunks, then `finish()` (checks and publishes it) or `discard()`."""

    def __init__(self, store: ArtifactFiles, max_bytes: int):
        self.store = store
        self.max_bytes = max_bytes
        self.path = store.incoming / uuid.uuid4().hex
        self._file = open(self.path, "wb")  # noqa: SIM115 - closed by finish/discard
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.max_bytes:
            raise InvalidArgument(f"artifact is larger than this controller accepts ({self.max_bytes} bytes; "
                                  "see --max-artifact-mb)")
        self._hash.update(data)
        self._file.write(data)

    def finish(self, expected_sha256: str = "", expected_size: int = 0,
               check: Callable[[Path], None] | None = None) -> tuple[str, int]:
        """Verify against what the manifest claims (when it claims it) and `check` (which raises
        InvalidArgument for bytes it refuses), fsync, and move into place."""
        digest = self._hash.hexdigest()
        try:
            if not self.size:
                raise InvalidArgument("the upload has no bytes")
            if expected_size and expected_size != self.size:
                raise InvalidArgument(f"manifest.size_bytes is {expected_size}, {self.size} bytes arrived")
            if expected_sha256 and expected_sha256 != digest:
                raise InvalidArgument(f"manifest.sha256 is {expected_sha256}, the bytes hash to {digest}")
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            if check is not None:
                check(self.path)
            self.store.publish(self.path, digest)
        except BaseException:
            self.discard()
            raise
        return digest, self.size

    def discard(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)


class ArtifactFiles:
    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.incoming = self.root / "incoming"
        self.incoming.mkdir(parents=True, exist_ok=True)
        for stale in self.incoming.iterdir():  # uploads cut off by a restart
            stale.unlink()

    def path(self, sha256: str) -> Path:
        if not SHA256.fullmatch(sha256):
            raise InvalidArgument(f"sha256 must be 64 lowercase hex digits, got {sha256!r}")
        return self.root / sha256[:2] / sha256

    def upload(self, max_bytes: int) -> Upload:
        return Upload(self, max_bytes)

    def publish(self, complete: Path, sha256: str) -> None:
        """Move a complete, verified and fsync'd file (in `incoming/`) to its address."""
        target = self.path(sha256)
        target.parent.mkdir(exist_ok=True)
        os.replace(complete, target)

    def prepare(self, sha256: str) -> None:
        """Make the artifact's bytes ready to `open`: nothing to do here, where a file at its address
        is always whole. A subclass that fetches or checks them first does it here; it blocks, so
        async code calls it in a thread before `open`, which calls it too."""

    @contextlib.contextmanager
    def open(self, sha256: str) -> Iterator[tuple[int, int]]:
        """(file descriptor, size) of a stored artifact, for `os.pread`s of one chunk each."""
        self.prepare(sha256)
        try:
            fd = os.open(self.path(sha256), os.O_RDONLY)
        except FileNotFoundError as err:
            raise NotFound(f"artifact {sha256} has no bytes on this controller") from err
        try:
            yield fd, os.fstat(fd).st_size
        finally:
            os.close(fd)


def chunk_size(requested: int) -> int:
    """The chunk size to serve: the request's within [4 KiB, 4 MiB], or 1 MiB for 0."""
    if not requested:
        return DEFAULT_CHUNK
    return max(MIN_CHUNK, min(MAX_CHUNK, requested))


def bundle_check(fmt: str, labels: dict[str, str]) -> Callable[[Path], None] | None:
    """For a format that travels as a bundle (models.bundle: an OpenVINO IR, an NCNN model), the
    check an upload's bytes must pass before they are stored: a tar of exactly the files its
    models manifest (the label devices install from) lists, each whole. None for one-file formats.
    Raises InvalidArgument when the label is missing, unreadable or of another format."""
    from edgefleet.models import bundle
    from edgefleet.models.errors import ModelError
    from edgefleet.models.manifest import labelled_manifest

    if not bundle.is_bundled(fmt):
        return None
    try:
        manifest = labelled_manifest(labels, fmt)
    except ModelError as err:
        raise InvalidArgument(str(err)) from err

    def check(path: Path) -> None:
        try:
            bundle.check(path, fmt, manifest)
        except ModelError as err:
            raise InvalidArgument(f"the {fmt} bundle is refused: {str(err).replace(str(path), 'the upload')}") from err

    return check
