#!/usr/bin/env python3
"""Group-commit throughput of the store: `store_frames_many` on SQLite and on PostgreSQL, in one run.

    python scripts/bench/store_ingest.py [--devices 50] [--frames 20] [--objects 3] [--groups 40]
                                         [--rounds 3] [--replays 5] [--writers 1,2] [--db postgresql://…]
                                         [--out var/bench/store_ingest.json]

Each group is what the controller's ingest writer commits under load (fleet/ingest.py): one batch per
device, `--frames` new frames of `--objects` objects each, so devices × frames frames per transaction.
The targets take turns, `--rounds` times `--groups` groups each, so that the drift of a shared machine
hits them alike. Per target: frames committed per second, ms per group (p50, p95, mean), and the same
for `--replays` groups per round that resend the round's last frames (a reconnect's replay: all
duplicates). Targets: SQLite (a fresh file, WAL, synchronous=NORMAL: a commit does not wait for the
disk), PostgreSQL (fsync on, synchronous_commit on: a commit waits for its WAL on disk), PostgreSQL with
synchronous_commit off (what SQLite's NORMAL promises: an OS crash may lose the last commits), and
PostgreSQL with several writers at once (`--writers`: that many stores, as replicas, each committing
groups of its own devices). PostgreSQL runs on a throwaway cluster (tests/pg_cluster.py) unless `--db`
names a database (it must be empty: the benchmark enrolls its devices there). Every frame is checked
stored once at the end. Writes JSON (stdout, or --out).
"""
from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "proto"), str(Path(__file__).resolve().parent)]

from report import write_report  # (scripts/bench/report.py)

from edgefleet.common.records import FrameRecord, ObjectRecord  # noqa: E402

CAPTURE_BASE = time.time()
"""Frame n of every device was captured n/10 s after this: today's partition on PostgreSQL."""


@dataclass
class Target:
    name: str
    open_store: Callable[[], object]
    writers: int = 1
    stores: list = field(default_factory=list)
    devices: list[list[str]] = field(default_factory=list)  # per writer
    next_sequence: int = 1  # every device of a target is at the same sequence
    group_s: list[float] = field(default_factory=list)
    replay_s: list[float] = field(default_factory=list)
    frames: int = 0
    replayed: int = 0
    wall_s: float = 0.0
    replay_wall_s: float = 0.0


def batch(first: int, n_frames: int, n_objects: int, capture_base: float) -> list[FrameRecord]:
    """Frames `first`.. of one device: tracked objects with float32-like boxes, as an agent sends them."""
    return [FrameRecord("cam0", s, s, capture_base + s / 10, [
        ObjectRecord(k + 1, k % 80, "person" if k % 3 else "car", 0.5 + k / 100,
                     (10.5 + s % 600, 20.25 + k, 110.75 + s % 600, 220.0 + k)) for k in range(n_objects)])
        for s in range(first, first + n_frames)]


def open_targets(args: argparse.Namespace, workdir: Path, pg_url: str) -> list[Target]:
    from edgefleet.fleet.pg.store import PgStore
    from edgefleet.fleet.store import FleetStore

    sep = "&" if "?" in pg_url else "?"
    async_url = f"{pg_url}{sep}options=-c%20synchronous_commit%3Doff"
    targets = [Target("sqlite", lambda: FleetStore(workdir / "fleet.db")),
               Target("postgres", lambda: PgStore(pg_url))]
    targets.append(Target("postgres synchronous_commit=off", lambda: PgStore(async_url)))
    targets += [Target(f"postgres x{n} writers", lambda: PgStore(pg_url), writers=n) for n in args.writers if n > 1]
    for t_index, target in enumerate(targets):
        target.stores = [target.open_store() for _ in range(target.writers)]
        key = target.stores[0].create_enroll_key("bench")
        target.devices = [[target.stores[0].enroll(key, f"hw-{t_index}-{w}-{d}", f"bench-{t_index}-{w}-{d}", "b", {},
                                                   {})[0].device_id for d in range(args.devices)]
                          for w in range(target.writers)]
    return targets


def commit_groups(target: Target, args: argparse.Namespace, first: int, n_groups: int, times: list[float]) -> int:
    """Each writer commits `n_groups` groups of its devices from sequence `first` on (in threads at once);
    the frames they sent."""
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        store, devices = target.stores[w], target.devices[w]
        try:
            for g in range(n_groups):
                start = first + g * args.frames
                group = [(d, batch(start, args.frames, args.objects, CAPTURE_BASE)) for d in devices]
                began = time.perf_counter()
                results = store.store_frames_many(group)
                times.append(time.perf_counter() - began)
                bad = [r for r in results if isinstance(r, BaseException)]
                if bad:
                    raise bad[0]
        except BaseException as err:  # reported by the caller
            errors.append(err)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(target.writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise SystemExit(f"{target.name}: {errors[0]!r}")
    return target.writers * n_groups * len(target.devices[0]) * args.frames


def run_round(target: Target, args: argparse.Namespace) -> None:
    began = time.perf_counter()
    target.frames += commit_groups(target, args, target.next_sequence, args.groups, target.group_s)
    target.wall_s += time.perf_counter() - began
    target.next_sequence += args.groups * args.frames
    if args.replays:
        began = time.perf_counter()
        replay_from = target.next_sequence - args.replays * args.frames
        target.replayed += commit_groups(target, args, replay_from, args.replays, target.replay_s)
        target.replay_wall_s += time.perf_counter() - began


def check(target: Target) -> None:
    """Every device stores each of its frames once and acks the last."""
    store = target.stores[0]
    for devices in target.devices:
        for device_id in devices:
            device = store.get_device(device_id)
            want = target.next_sequence - 1
            if (device.acked_sequence, device.detections_stored) != (want, want):
                raise SystemExit(f"{target.name}: {device_id} acked {device.acked_sequence}, stores "
                                 f"{device.detections_stored}, not {want}")


def summary(target: Target, args: argparse.Namespace) -> dict:
    def ms(times: list[float]) -> dict:
        if not times:
            return {}
        ordered = sorted(times)
        return {"p50": round(1000 * statistics.median(ordered), 2),
                "p95": round(1000 * ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 2),
                "mean": round(1000 * statistics.fmean(ordered), 2)}

    frames_per_group = args.devices * args.frames
    return {
        "target": target.name, "writers": target.writers, "groups": len(target.group_s),
        "frames_per_group": frames_per_group, "frames": target.frames,
        "frames_per_s": round(target.frames / target.wall_s), "group_ms": ms(target.group_s),
        "replay_frames_per_s": round(target.replayed / target.replay_wall_s) if target.replayed else None,
        "replay_group_ms": ms(target.replay_s),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=50, help="batches per group (one per device)")
    parser.add_argument("--frames", type=int, default=20, help="frames per batch")
    parser.add_argument("--objects", type=int, default=3, help="objects per frame")
    parser.add_argument("--groups", type=int, default=40, help="groups per target per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--replays", type=int, default=5, help="replayed groups per target per round")
    parser.add_argument("--writers", type=lambda v: [int(n) for n in v.split(",")], default=[1, 2],
                        help="PostgreSQL: also run with this many writers at once (comma-separated)")
    parser.add_argument("--db", help="postgresql://… of an empty database (default: a throwaway cluster)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    import psycopg

    cluster = None
    with tempfile.TemporaryDirectory(prefix="store-ingest-") as tmp:
        if args.db:
            pg_url = args.db
        else:
            from tests.pg_cluster import PgCluster

            cluster = PgCluster(free_port()).start()  # its own folder: the server runs as postgres when root
            pg_url = cluster.database("bench")
        targets: list[Target] = []
        try:
            targets = open_targets(args, Path(tmp), pg_url)
            for _ in range(args.rounds):
                for target in targets:
                    run_round(target, args)
            for target in targets:
                check(target)
            with psycopg.connect(pg_url) as conn:
                server = conn.execute("show server_version").fetchone()
        finally:
            for target in targets:
                for store in target.stores:
                    store.close()
            if cluster is not None:
                cluster.destroy()
    results = [summary(t, args) for t in targets]
    for r in results:
        print(f"{r['target']:34s} {r['frames_per_s']:>8,} frames/s  {r['group_ms']['p50']:7.1f} ms/group p50 "
              f"({r['group_ms']['p95']:.1f} p95)  replays {r['replay_frames_per_s'] or 0:>8,} frames/s",
              file=sys.stderr)
    write_report({
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "postgres": server[0] if server else None, "psycopg": psycopg.__version__},
        "config": {"devices": args.devices, "frames": args.frames, "objects": args.objects, "groups": args.groups,
                   "rounds": args.rounds, "replays": args.replays, "db": "--db" if args.db else "throwaway cluster"},
        "results": results,
    }, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
