"""The database under test in scripts/bench/fleet.py, and what the bench reads from it.

Three kinds: a fresh SQLite file in the workdir (the default), a throwaway PostgreSQL cluster started
for the run and destroyed after it (`--db postgres`, tests/pg_cluster.py), or a PostgreSQL database
given by URL (`--db postgresql://…`, which must hold no detections yet: the exactness check counts
every stored row). Each answers the bench's questions the same way: frames committed so far, the
exact check of every acked (device, sequence), the bytes the detections take, and, for a PostgreSQL
server on this host, the CPU time of its processes (the postmaster and every backend, psutil).
"""
from __future__ import annotations

import collections
import math
import socket
import sqlite3
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


class BenchDatabase:
    """What the bench asks of a database; `serve_arg` is what `edgefleet serve --db` takes."""

    backend = ""
    serve_arg = ""
    second_sql = ""
    """SQL for the whole second of `received`, to group the committed detections per second."""

    def rows(self, sql: str, params: tuple | list = ()) -> list[tuple]:
        """The rows of `sql` (placeholders written `%s`)."""
        raise NotImplementedError

    def one(self, sql: str, params: tuple | list = ()) -> tuple:
        return self.rows(sql, params)[0]

    def frames_committed(self) -> int:
        raise NotImplementedError

    def detections_bytes(self) -> int | None:
        """Bytes the detections take on disk (table, indexes and TOAST; every partition)."""
        raise NotImplementedError

    def wal_position(self) -> int | None:
        """Bytes of write-ahead log written so far (None where not known)."""
        return None

    def server_cpu_s(self) -> float | None:
        """CPU seconds the database server's processes have used (None: no server, or not on this host)."""
        return None

    def close(self) -> None:
        """Release what the bench opened; a throwaway cluster is destroyed."""


class SqliteDatabase(BenchDatabase):
    """A fresh SQLite file (any file of an earlier run at that path is removed first)."""

    backend = "sqlite"
    second_sql = "cast(received as int)"

    def __init__(self, path: Path):
        self.path = path
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        self.serve_arg = str(path)

    def rows(self, sql: str, params: tuple | list = ()) -> list[tuple]:
        conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        try:
            return conn.execute(sql.replace("%s", "?"), list(params)).fetchall()
        finally:
            conn.close()

    def frames_committed(self) -> int:
        return self.one("select max(rowid) from detections")[0] or 0

    def detections_bytes(self) -> int | None:
        """The whole file (every table; the detections are nearly all of it), once the controller closed it."""
        page_count, = self.one("pragma page_count")
        page_size, = self.one("pragma page_size")
        return page_count * page_size


class PostgresDatabase(BenchDatabase):
    """A PostgreSQL database by URL; `cluster` (a tests.pg_cluster.PgCluster) is destroyed at `close`."""

    backend = "postgresql"
    second_sql = "floor(received)::bigint"

    def __init__(self, url: str, cluster=None):
        import psycopg

        self.url = self.serve_arg = url
        self.cluster = cluster
        self.conn = psycopg.connect(url, autocommit=True)
        self.postmaster = self._local_postmaster()

    def _local_postmaster(self):
        """The server's postmaster process when it runs on this host (this connection's backend's parent)."""
        import psutil

        pid, = self.conn.execute("select pg_backend_pid()").fetchone()
        try:
            parent = psutil.Process(pid).parent()
        except psutil.Error:
            return None
        return parent if parent is not None and "postgres" in parent.name() else None

    def rows(self, sql: str, params: tuple | list = ()) -> list[tuple]:
        return self.conn.execute(sql, params).fetchall()

    def has_detections(self) -> int:
        """Rows already in `detections` (0 when the schema is not there yet)."""
        if self.one("select to_regclass('detections')")[0] is None:
            return 0
        return self.one("select count(*) from detections")[0]

    def frames_committed(self) -> int:
        return self.one("select coalesce(sum(detections_stored), 0)::bigint from devices")[0]

    def detections_bytes(self) -> int | None:
        return self.one("select coalesce(sum(pg_total_relation_size(relid)), 0)::bigint"
                        " from pg_partition_tree('detections')")[0]

    def wal_position(self) -> int | None:
        return self.one("select (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint")[0]

    def server_cpu_s(self) -> float | None:
        """The postmaster's own and reaped children's CPU, plus every live backend's and worker's."""
        import psutil

        if self.postmaster is None:
            return None
        t = self.postmaster.cpu_times()
        total = t.user + t.system + t.children_user + t.children_system
        for child in self.postmaster.children():
            try:
                c = child.cpu_times()
            except psutil.NoSuchProcess:  # ended between the listing and now: counted by children_* next time
                continue
            total += c.user + c.system
        return float(total)

    def close(self) -> None:
        self.conn.close()
        if self.cluster is not None:
            self.cluster.destroy()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def open_database(spec: str | None, workdir: Path) -> BenchDatabase:
    """None: a fresh SQLite file `workdir/fleet.db`; "postgres": a throwaway cluster on a free loopback port
    (its data under workdir); a postgresql:// URL: that database, which must hold no detections."""
    if not spec:
        return SqliteDatabase(workdir / "fleet.db")
    if spec == "postgres":
        from tests.pg_cluster import PgCluster

        cluster = PgCluster(free_port(), root=workdir / "pg").start()
        try:
            return PostgresDatabase(cluster.database("fleet_bench"), cluster)
        except BaseException:
            cluster.destroy()
            raise
    if not spec.startswith(("postgresql://", "postgres://")):
        raise SystemExit(f"--db must be postgres or a postgresql:// URL, got {spec!r} (no --db: SQLite)")
    db = PostgresDatabase(spec)
    if (n := db.has_detections()):
        db.close()
        raise SystemExit(f"--db {spec} already holds {n} detections; the exactness check needs an empty database "
                         "(or use --db postgres for a throwaway cluster)")
    return db


# ---- the exactness check ----

def check_store(db: BenchDatabase, agents: list[dict], objects: int, window: tuple[float, float]) -> dict:
    """Exact: per device, the stored sequences against what the agent sent and what was acked."""
    stored: dict[str, list[int]] = collections.defaultdict(list)
    rows = bad_objects = 0
    for device_id, sequence, n_objects in db.rows(
            "select device_id, sequence, n_objects from detections order by device_id, sequence"):
        stored[device_id].append(sequence)
        rows += 1
        bad_objects += n_objects != objects
    counters = dict(db.rows("select device_id, acked_sequence from devices"))
    stored_counts = dict(db.rows("select device_id, detections_stored from devices"))
    lost = duplicated = unexpected = unacked = ack_mismatch = 0
    for agent in agents:
        sequences = stored.pop(agent["device_id"], [])
        present = set(sequences)
        duplicated += len(sequences) - len(present)
        lost += sum(1 for s in range(1, agent["acked"] + 1) if s not in present)
        unexpected += sum(1 for s in present if not 1 <= s <= agent["sent"])
        unacked += agent["sent"] - agent["acked"]
        if agent["device_id"] and (counters.get(agent["device_id"], 0) != agent["acked"]
                                   or stored_counts.get(agent["device_id"], 0) != len(sequences)):
            ack_mismatch += 1
    unexpected += sum(len(v) for v in stored.values())  # devices no agent of this run was
    return {
        "rows": rows, "lost": lost, "duplicated": duplicated, "unexpected": unexpected,
        "sent_but_unacked": unacked, "device_counter_mismatches": ack_mismatch,
        "frames_with_wrong_object_count": bad_objects,
    } | committed_in(db, window)


def committed_in(db: BenchDatabase, window: tuple[float, float]) -> dict:
    """Frames and detections committed in the window (by `received`), per second at least and most."""
    start, end = window
    frames_w, dets_w = db.one(
        "select count(*), coalesce(sum(n_objects), 0) from detections where received >= %s and received < %s",
        [start, end])
    per_second = [int(d) for _, d in db.rows(
        f"select {db.second_sql} s, sum(n_objects) from detections where received >= %s and received < %s"
        " group by s order by s", [math.ceil(start), math.floor(end)])]
    first, last, total_dets = db.one(
        "select min(received), max(received), coalesce(sum(n_objects), 0) from detections")
    frames_w, dets_w, total_dets = int(frames_w), int(dets_w), int(total_dets)
    return {
        "window": {"frames": frames_w, "detections": dets_w, "seconds": end - start,
                   "detections_per_s": round(dets_w / (end - start), 1),
                   "frames_per_s": round(frames_w / (end - start), 1),
                   "detections_per_s_min_1s": min(per_second) if per_second else None,
                   "detections_per_s_max_1s": max(per_second) if per_second else None},
        "whole_run": {"detections": total_dets,
                      "detections_per_s": round(total_dets / (last - first), 1) if first and last > first else None},
    }
