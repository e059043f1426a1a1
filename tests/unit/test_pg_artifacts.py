"""Artifact bytes in PostgreSQL: two replicas (two caches, one database) serve what either was sent."""
from __future__ import annotations

import hashlib
import logging
import os
import threading

import psycopg
import pytest

from edgefleet.fleet.errors import NotFound
from edgefleet.fleet.pg.artifacts import CorruptArtifact, DatabaseBackedArtifactFiles
from edgefleet.fleet.pg.store import PgStore

MIB = 1 << 20
LOGGER = "edgefleet.fleet.pg.artifacts"



@pytest.fixture
def replicas(pg_replicas, tmp_path):
    """Two replicas' artifact files: each its own cache folder, one database."""
    return [DatabaseBackedArtifactFiles(tmp_path / name, store) for name, store in zip("ab", pg_replicas)]


def upload(files: DatabaseBackedArtifactFiles, data: bytes, piece: int = 300_000) -> str:
    """Upload `data` as UploadArtifact does, in pieces; its sha256."""
    incoming = files.upload(max_bytes=len(data))
    for start in range(0, len(data), piece):
        incoming.write(data[start:start + piece])
    sha256, size = incoming.finish(hashlib.sha256(data).hexdigest(), len(data))
    assert size == len(data)
    return sha256


def served(files: DatabaseBackedArtifactFiles, sha256: str, chunk: int = MIB) -> bytes:
    """The bytes `open` serves, read as FetchArtifact reads them."""
    with files.open(sha256) as (fd, total):
        data = b"".join(os.pread(fd, chunk, offset) for offset in range(0, total, chunk))
    assert len(data) == total
    return data


def chunk_rows(store: PgStore, sha256: str) -> list[tuple[int, int]]:
    return [(r["index"], r["n"]) for r in store._rows(
        "select index, length(data) as n from artifact_chunks where sha256 = %s order by index", [sha256])]


def test_an_upload_to_one_replica_is_served_byte_identical_by_the_other(replicas, pg_replicas):
    a, b = replicas
    data = os.urandom(3 * MIB + 12345)
    sha256 = upload(a, data)
    assert chunk_rows(pg_replicas[0], sha256) == [(0, MIB), (1, MIB), (2, MIB), (3, 12345)]
    assert not b.path(sha256).exists()
    assert served(b, sha256) == data
    assert b.path(sha256).read_bytes() == data  # cached: later fetches read the file
    assert served(a, sha256) == data
    assert list(b.incoming.iterdir()) == []


def test_the_same_artifact_uploaded_to_both_replicas_is_kept_once(replicas, pg_replicas, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    data = os.urandom(MIB + 1)
    assert upload(replicas[0], data) == upload(replicas[1], data)
    sha256 = hashlib.sha256(data).hexdigest()
    assert chunk_rows(pg_replicas[1], sha256) == [(0, MIB), (1, 1)]
    assert [r.getMessage() for r in caplog.records] == [f"artifact {sha256[:12]}: bytes written to the database",
                                                        f"artifact {sha256[:12]}: the database had its bytes already"]
    assert served(replicas[1], sha256) == data


def test_concurrent_fetches_of_a_missing_artifact_read_the_database_once(replicas, caplog):
    a, b = replicas
    data = os.urandom(2 * MIB + 7)
    sha256 = upload(a, data)
    caplog.set_level(logging.INFO, logger=LOGGER)
    start, results = threading.Barrier(8), []

    def fetch():
        start.wait()
        results.append(served(b, sha256))

    threads = [threading.Thread(target=fetch) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [data] * 8
    read = [r for r in caplog.records if "read from the database" in r.getMessage()]
    assert [r.getMessage() for r in read] == [f"artifact {sha256[:12]}: {len(data)} bytes read from the database "
                                              f"into {b.path(sha256)}"]


@pytest.mark.parametrize("restarted", [False, True], ids=["same-process", "after-a-restart"])
def test_a_corrupted_cache_file_is_not_served(replicas, pg_replicas, tmp_path, caplog, restarted):
    a, b = replicas
    data = os.urandom(MIB + 99)
    sha256 = upload(a, data)
    assert served(b, sha256) == data
    cached = b.path(sha256)
    with open(cached, "r+b") as file:  # one flipped byte, the size unchanged
        file.seek(MIB)
        file.write(bytes([data[MIB] ^ 0xFF]))
    if restarted:
        b = DatabaseBackedArtifactFiles(tmp_path / "b", pg_replicas[1])
    caplog.set_level(logging.INFO, logger=LOGGER)
    assert served(b, sha256) == data
    assert cached.read_bytes() == data
    assert any("does not hash to its name" in r.getMessage() for r in caplog.records)


def test_a_truncated_upload_file_on_the_uploading_replica_is_replaced_too(replicas):
    a, _ = replicas
    data = os.urandom(MIB)
    sha256 = upload(a, data)
    os.truncate(a.path(sha256), 10)
    assert served(a, sha256) == data


def test_an_artifact_the_database_lacks_is_not_found(replicas):
    _, b = replicas
    with pytest.raises(NotFound, match=f"artifact {'c' * 64} has no bytes in the fleet database"):
        with b.open("c" * 64):
            pass
    assert not b.path("c" * 64).exists()
    assert list(b.incoming.iterdir()) == []


def test_bytes_in_the_database_that_do_not_hash_to_their_name_are_not_served(replicas, pg_replicas):
    _, b = replicas
    sha256 = hashlib.sha256(b"the real bytes").hexdigest()
    assert pg_replicas[0].store_artifact_bytes(sha256, [b"other ", b"bytes"])
    with pytest.raises(CorruptArtifact, match="the database's 11 bytes hash to"):
        with b.open(sha256):
            pass
    assert not b.path(sha256).exists()
    assert list(b.incoming.iterdir()) == []


def test_an_upload_the_database_did_not_take_is_not_stored(pg_url, tmp_path):
    store = PgStore(pg_url)
    files = DatabaseBackedArtifactFiles(tmp_path / "a", store)
    store.close()  # the database is out of reach
    data = os.urandom(1000)
    with pytest.raises(psycopg.OperationalError, match="closed"):
        upload(files, data)
    assert not files.path(hashlib.sha256(data).hexdigest()).exists()
    assert list(files.incoming.iterdir()) == []
