#!/usr/bin/env python3
"""Fleet ingest at scale: simulated agents over real gRPC against real controller processes.

    python scripts/bench/fleet.py [--agents 1000] [--procs 8] [--seconds 30] [--warmup 5] [--fps 4]
                                  [--objects 5] [--batch 8] [--heartbeat-interval 5] [--workdir DIR]
                                  [--db postgres|postgresql://…] [--replicas N]
                                  [--profile] [--out var/bench/fleet.json]

1. The database: a fresh SQLite file (default); with `--db postgres` a throwaway PostgreSQL cluster
   (tests/pg_cluster.py, destroyed after the run); with `--db postgresql://…` that database, which
   must hold no detections. An enrollment key made by `python -m edgefleet.fleet.cli enroll-key create`.
2. `--replicas` controllers (`python -m edgefleet.fleet.cli serve`, metrics on), each in its own
   process on that database (more than one needs PostgreSQL), started one after the other.
3. `--procs` worker processes, each running its share of `--agents` on one asyncio loop.
   Every agent has its own channel (TCP connection) to one replica (agent i to replica i mod N),
   enrolls, opens a Session (hello, then heartbeats at the controller's interval) and a
   PublishDetections stream, and sends a batch of `--batch` frames every batch/fps seconds,
   `--objects` moving, tracked objects per frame.
   Publish->ack latency: from writing a batch to the ack that covers its last sequence.
4. After `--warmup` seconds, a steady window of `--seconds`: detections committed in it (from
   the store's `received` times), ack latency percentiles (agent side, and the controllers' own
   histograms summed), the controllers' CPU (percent of one core, summed over replicas; CPU
   seconds per million detections committed in the window) and RSS (psutil); for PostgreSQL on
   this host, its server processes' CPU the same way; the detections' bytes on disk per million.
5. The agents stop sending and wait for their last acks; the controllers stop; the database is
   checked exactly: every acked (device, sequence) present once, nothing unsent present,
   every stored frame holding the objects sent.
`--profile` runs each controller under cProfile (event loop thread and store threads) and
writes the top functions to the workdir. Writes JSON (stdout, or --out); prints a summary.
"""
from __future__ import annotations

import argparse
import collections
import math
import multiprocessing as mp
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "proto"), str(Path(__file__).resolve().parent)]

from controller import ControllerProcess, fleet_cli, scrape, start_controller  # (scripts/bench/controller.py)
from fleet_db import BenchDatabase, check_store, open_database  # (scripts/bench/fleet_db.py)
from report import write_report  # (scripts/bench/report.py)
from sim_fleet import worker_main  # (scripts/bench/sim_fleet.py)

# ---- the controller process ----

def instrumented_controller(argv: list[str], out: Path, profile: bool) -> int:
    """`fleet.cli.main(argv)` with its garbage collector pauses logged to `out` (`serve` tunes the
    collector itself: fleet.cli.tune_gc_for_serving); with `profile`, under cProfile (the event
    loop thread and every other Python thread)."""
    import cProfile
    import gc
    import pstats
    import threading

    profiles = [cProfile.Profile()] if profile else []

    def in_thread(frame, event, arg):  # first call in a new thread: a profiler of its own replaces this hook
        prof = cProfile.Profile()
        profiles.append(prof)
        prof.enable()

    if profile:
        threading.setprofile(in_thread)
    pauses: dict[int, list[float]] = collections.defaultdict(list)
    started: list[float] = [0.0]

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            pauses[info["generation"]].append(time.perf_counter() - started[0])

    gc.callbacks.append(on_gc)
    from edgefleet.fleet.cli import main

    if profiles:
        profiles[0].enable()
    try:
        return main(argv)
    finally:
        if profiles:
            profiles[0].disable()  # the other threads' profilers ended with their threads
        with out.open("w") as fh:
            for generation, times in sorted(pauses.items()):
                fh.write(f"gc generation {generation}: {len(times)} collections, {1000 * sum(times):.0f} ms in all, "
                         f"longest {1000 * max(times):.1f} ms\n")
            for n, prof in enumerate(profiles):
                try:
                    stats = pstats.Stats(prof, stream=fh)
                except TypeError:  # a thread that never ran Python code
                    continue
                fh.write(f"\n===== thread {n} ({'event loop' if n == 0 else 'worker'}) =====\n")
                stats.sort_stats("tottime").print_stats(35)
                stats.sort_stats("cumulative").print_stats(35)


def scrape_ack_histogram(url: str) -> dict[float, float]:
    """The controller's own ack latency histogram: cumulative count per upper bound (s)."""
    text = scrape(url)
    buckets = {}
    for m in re.finditer(r'^edgefleet_ack_latency_seconds_bucket\{le="([^"]+)"\} (\S+)$', text, re.MULTILINE):
        buckets[math.inf if m.group(1) == "+Inf" else float(m.group(1))] = float(m.group(2))
    return buckets


def histogram_quantile(q: float, before: dict, after: dict) -> float | None:
    """Upper bound of the bucket holding quantile q of the observations between two scrapes."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return None
    target = q * counts[-1]
    for bound, count in zip(bounds, counts):
        if count >= target:
            return bound
    return math.inf


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, max(0, math.ceil(q / 100 * len(values)) - 1))]


# ---- the run ----

@dataclass
class Measured:
    """What the run sampled over the window: each replica's RSS throughout; at the window's start and end,
    each replica's, the workers' and the database server's CPU seconds, the replicas' ack histograms
    (summed) and the detections' size and write-ahead log position."""
    rss: list[list[int]] = field(default_factory=list)
    cpu_at: dict[str, list[float]] = field(default_factory=dict)
    workers_cpu: dict[str, float] = field(default_factory=dict)
    db_cpu: dict[str, float | None] = field(default_factory=dict)
    db_bytes: dict[str, int | None] = field(default_factory=dict)
    wal: dict[str, int | None] = field(default_factory=dict)
    hist: dict[str, dict] = field(default_factory=dict)
    host_cpu: float | None = None


def cpu_s(proc) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def summed_histogram(urls: list[str]) -> dict[float, float]:
    total: dict[float, float] = collections.defaultdict(float)
    for url in urls:
        for bound, count in scrape_ack_histogram(url).items():
            total[bound] += count
    return dict(total)


def mark(measured: Measured, name: str, ctls: list, workers: list, urls: list[str], db: BenchDatabase) -> None:
    """Everything sampled at the window's start or end, under `name`."""
    import psutil

    measured.cpu_at[name] = [cpu_s(c) for c in ctls]
    measured.workers_cpu[name] = sum(cpu_s(w) for w in workers)
    measured.db_cpu[name] = db.server_cpu_s()
    measured.db_bytes[name] = db.detections_bytes()
    measured.wal[name] = db.wal_position()
    measured.hist[name] = summed_histogram(urls)
    if name == "start":
        psutil.cpu_percent(None)
    else:
        measured.host_cpu = psutil.cpu_percent(None)


def measure(ctls: list, workers: list, urls: list[str], db: BenchDatabase, start: float,
            window: tuple[float, float]) -> Measured:
    """Sample until the window has ended, printing progress every 5 s."""
    measured = Measured(rss=[[] for _ in ctls])
    marks = [("start", window[0]), ("end", window[1])]
    while marks or time.time() < window[1] + 0.5:
        now = time.time()
        if marks and now >= marks[0][1]:
            mark(measured, marks.pop(0)[0], ctls, workers, urls, db)
            continue
        for samples, ctl in zip(measured.rss, ctls):
            samples.append(ctl.memory_info().rss)
        if int(now) % 5 == 0:
            rss = sum(samples[-1] for samples in measured.rss)
            print(f"  t={now - start:5.1f}s  {db.frames_committed()} frames committed  controller rss "
                  f"{rss / 2**20:.0f} MiB", file=sys.stderr)
        time.sleep(min(1.0, max(0.05, (marks[0][1] - time.time()) if marks else 1.0)))
    return measured


def collect_agents(results, workers: list, timeout: float) -> tuple[list[dict], list[str]]:
    """Every worker's agent reports, and the workers that failed (with their error)."""
    agents, failures = [], []
    for _ in workers:
        worker, out, err = results.get(timeout=timeout)
        agents += out
        if err:
            failures.append(f"worker {worker}: {err}")
    for w in workers:
        w.join(30)
    return agents, failures


def stop_all(workers: list, controllers: list[subprocess.Popen]) -> None:
    for w in workers:
        if w.is_alive():
            w.kill()
    for controller in controllers:
        controller.send_signal(signal.SIGTERM)
    for controller in controllers:
        try:
            controller.wait(60)
        except subprocess.TimeoutExpired:
            controller.kill()


def replica_files(k: int) -> tuple[str, str]:
    """Replica k's log and profile file names in the workdir (replica 0 keeps the single controller's names)."""
    suffix = f"-{k}" if k else ""
    return f"controller{suffix}.log", f"controller{suffix}.prof.txt"


def start_replicas(args, workdir: Path, db: BenchDatabase) -> list[ControllerProcess]:
    """`--replicas` controllers on the database, one after the other (the first migrates the schema and
    makes the signing key the others load)."""
    serve_args = ["--heartbeat-interval", str(args.heartbeat_interval)]
    started = []
    for k in range(args.replicas):
        log_name, prof_name = replica_files(k)
        extra = []
        if db.backend == "postgresql":
            extra = ["--signing-key", str(workdir / "signing-key.pem"), "--artifacts-dir", str(workdir / f"cache-{k}")]
        launcher = [sys.executable, __file__, "--_controller", str(workdir / prof_name), "--"]
        started.append(start_controller(workdir, *serve_args, *extra, db=db.serve_arg, log_name=log_name,
                                        launcher=launcher if args.profile else None))
    return started


def run_agents(args, cfg: dict, ctls: list, urls: list[str], db: BenchDatabase, controllers: list):
    """The workers: connect every agent, publish through warm-up and window, measure, collect their reports."""
    import psutil

    ctx = mp.get_context("spawn")
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    start_at = ctx.Value("d", 0.0)
    shares = [list(range(w, args.agents, args.procs)) for w in range(args.procs)]
    workers = [ctx.Process(target=worker_main, args=(w, shares[w], cfg, ready, go, start_at, results), daemon=True)
               for w in range(args.procs)]
    connect_started = time.time()
    for w in workers:
        w.start()
    try:
        connected = sum(ready.get(timeout=cfg["ready_timeout"]) for _ in workers)
        connect_s = time.time() - connect_started
        print(f"{connected} agents connected in {connect_s:.1f}s", file=sys.stderr)
        start = time.time() + 1.0
        start_at.value = start
        go.set()
        window = (start + args.warmup, start + args.warmup + args.seconds)
        measured = measure(ctls, [psutil.Process(w.pid) for w in workers], urls, db, start, window)
        agents, failures = collect_agents(results, workers, cfg["drain_timeout"] + 60)
    finally:
        go.set()
        stop_all(workers, controllers)
    return agents, failures, measured, window, connect_s


def run(args) -> dict:
    import psutil

    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="edgefleet-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    db = open_database(args.db, workdir)
    try:
        key = fleet_cli("enroll-key", "create", "--db", db.serve_arg, "--name", "bench", "--create")
        cfg = {
            "run_id": f"{os.getpid()}-{int(time.time())}", "fps": args.fps, "objects": args.objects,
            "batch": args.batch, "seconds": args.seconds, "warmup": args.warmup,
            "heartbeat_interval": args.heartbeat_interval, "enroll_key": key,
            "connect_concurrency": 16, "ready_timeout": 120 + args.agents / 5, "drain_timeout": 30.0,
        }
        loadavg_before = os.getloadavg()
        started = start_replicas(args, workdir, db)
        cfg["addresses"] = [c.address for c in started]
        print(f"controller pid {', '.join(str(c.proc.pid) for c in started)} on {', '.join(cfg['addresses'])} "
              f"({db.backend}); {args.agents} agents in {args.procs} processes", file=sys.stderr)
        agents, failures, measured, window, connect_s = run_agents(
            args, cfg, [psutil.Process(c.proc.pid) for c in started], [c.metrics_url for c in started], db,
            [c.proc for c in started])
        store = check_store(db, agents, args.objects, window)
        db_bytes_end = db.detections_bytes()
    finally:
        db.close()
    return report(args, workdir, agents, failures, measured, window, connect_s, store, loadavg_before) | {
        "database": database_report(db, measured, store, db_bytes_end, window)}


def per_million(amount: float | None, detections: int) -> float | None:
    return None if amount is None or not detections else round(amount * 1e6 / detections, 1)


def database_report(db: BenchDatabase, measured: Measured, store: dict, bytes_end: int | None,
                    window: tuple[float, float]) -> dict:
    """The database's side: its server's CPU over the window (PostgreSQL on this host) and disk per million
    detections (grown over the window; held at the end over every detection of the run)."""
    dets_w, seconds = store["window"]["detections"], window[1] - window[0]
    cpu, size, wal = measured.db_cpu, measured.db_bytes, measured.wal
    server_cpu = None if cpu["start"] is None or cpu["end"] is None else cpu["end"] - cpu["start"]

    def grew(d: dict) -> int | None:
        return None if d["start"] is None or d["end"] is None else d["end"] - d["start"]

    return {
        "backend": db.backend,
        "server_cpu_percent_of_one_core": None if server_cpu is None else round(100 * server_cpu / seconds, 1),
        "server_cpu_s_per_million_detections": per_million(server_cpu, dets_w),
        "detections_bytes_end": bytes_end,
        "detections_bytes_per_million_detections": per_million(bytes_end, store["whole_run"]["detections"]),
        "detections_bytes_growth_per_million_detections_window": per_million(grew(size), dets_w),
        "wal_bytes_per_million_detections_window": per_million(grew(wal), dets_w),
    }


def controller_report(workdir: Path, measured: Measured, seconds: float, dets_w: int) -> dict:
    """The controllers' side, summed over the replicas, and each replica's own figures."""
    replicas = []
    for k, (start, end) in enumerate(zip(measured.cpu_at["start"], measured.cpu_at["end"])):
        log_name, prof_name = replica_files(k)
        ingest = re.findall(r"ingest writer stopped: (.*)", (workdir / log_name).read_text(errors="replace"))
        rss = measured.rss[k]
        replicas.append({
            "cpu_percent_of_one_core": round(100 * (end - start) / seconds, 1), "cpu_s": end - start,
            "rss_mib_max": round(max(rss) / 2**20, 1) if rss else None,
            "rss_mib_end": round(rss[-1] / 2**20, 1) if rss else None,
            "ingest": ingest[-1] if ingest else None, "gc": _gc_lines(workdir / prof_name)})
    cpu = sum(r.pop("cpu_s") for r in replicas)
    first = replicas[0]
    return {
        "cpu_percent_of_one_core": round(100 * cpu / seconds, 1),
        "rss_mib_max": round(sum(r["rss_mib_max"] or 0 for r in replicas), 1) if first["rss_mib_max"] else None,
        "rss_mib_end": round(sum(r["rss_mib_end"] or 0 for r in replicas), 1) if first["rss_mib_end"] else None,
        "ingest": first["ingest"], "gc": first["gc"],
        "cpu_s_per_million_detections": per_million(cpu, dets_w),
    } | ({"replicas": replicas} if len(replicas) > 1 else {})


def report(args, workdir: Path, agents: list[dict], failures: list[str], measured: Measured,
           window: tuple[float, float], connect_s: float, store: dict, loadavg_before: tuple) -> dict:
    workers_cpu, hist = measured.workers_cpu, measured.hist
    in_window = [lat for a in agents for written, lat in a["latencies"] if window[0] <= written < window[1]]
    lag = [x for a in agents for written_lag in [a["send_lag"]] for x in written_lag]
    seconds = window[1] - window[0]
    connected_end = sum(1 for a in agents
                        if a["connected_at"] and (a["failed_at"] is None or a["failed_at"] >= window[1]))
    return {
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "config": {"agents": args.agents, "procs": args.procs, "seconds": args.seconds, "warmup": args.warmup,
                   "fps": args.fps, "objects": args.objects, "batch": args.batch,
                   "heartbeat_interval_s": args.heartbeat_interval, "profile": args.profile,
                   "offered_detections_per_s": args.agents * args.fps * args.objects,
                   "db": "sqlite" if not args.db else "postgresql", "replicas": args.replicas},
        "workdir": str(workdir),
        "agents": {"connected": sum(1 for a in agents if a["connected_at"]),
                   "connected_through_window": connected_end, "connect_s": round(connect_s, 1),
                   "failed": sum(1 for a in agents if a["failed_at"]),
                   "errors": sorted({e for a in agents for e in a["errors"]})[:10],
                   "worker_failures": failures,
                   "batches": sum(a["batches"] for a in agents),
                   "heartbeats": sum(a["heartbeats"] for a in agents)},
        "committed": store["window"] | {"whole_run": store["whole_run"]},
        "ack_latency_ms": {
            "batches": len(in_window),
            "p50": _ms(percentile(in_window, 50)), "p90": _ms(percentile(in_window, 90)),
            "p99": _ms(percentile(in_window, 99)), "max": _ms(max(in_window) if in_window else None),
            "controller_histogram_p50_le": _ms(histogram_quantile(0.5, hist.get("start", {}), hist.get("end", {}))),
            "controller_histogram_p99_le": _ms(histogram_quantile(0.99, hist.get("start", {}), hist.get("end", {}))),
            "agent_send_lag_p99": _ms(percentile(lag, 99)),
        },
        "controller": controller_report(workdir, measured, seconds, store["window"]["detections"]),
        "agents_cpu_percent_of_one_core": round(100 * (workers_cpu["end"] - workers_cpu["start"]) / seconds, 1),
        "host_cpu_percent_all_cores": measured.host_cpu,
        "host_loadavg_1m": {"before": round(loadavg_before[0], 2), "after": round(os.getloadavg()[0], 2)},
        "integrity": {k: store[k] for k in ("rows", "lost", "duplicated", "unexpected", "sent_but_unacked",
                                             "device_counter_mismatches", "frames_with_wrong_object_count")}
                     | {"ack_reported_duplicates": sum(a["ack_duplicates"] for a in agents)},
    }


def _gc_lines(path: Path) -> list[str] | None:
    if not path.exists():
        return None
    return [line for line in path.read_text().splitlines() if line.startswith("gc ")]


def _ms(seconds: float | None) -> float | None:
    if seconds is None:
        return None
    return math.inf if math.isinf(seconds) else round(1000 * seconds, 1)


def _mb(n: float | None) -> float | None:
    return None if n is None else round(n / 1e6, 1)


def summary(r: dict) -> str:
    c, lat, ctl, integ, d = r["committed"], r["ack_latency_ms"], r["controller"], r["integrity"], r["database"]
    lines = [
        (f"agents: {r['agents']['connected']}/{r['config']['agents']} connected "
         f"({r['agents']['connected_through_window']} through the window, {r['agents']['failed']} failed)"),
        (f"committed: {c['detections_per_s']:.0f} detections/s over {c['seconds']:.0f}s "
         f"(offered {r['config']['offered_detections_per_s']:.0f}; 1s min {c['detections_per_s_min_1s']}, "
         f"max {c['detections_per_s_max_1s']}); {c['frames_per_s']:.0f} frames/s"),
        (f"publish->ack: p50 {lat['p50']} ms, p99 {lat['p99']} ms, max {lat['max']} ms "
         f"(controller histogram p99 <= {lat['controller_histogram_p99_le']} ms)"),
        (f"controller: {ctl['cpu_percent_of_one_core']}% of one core, rss max {ctl['rss_mib_max']} MiB; "
         f"agents {r['agents_cpu_percent_of_one_core']}% of one core; host {r['host_cpu_percent_all_cores']}% "
         f"(load average before {r['host_loadavg_1m']['before']}, after {r['host_loadavg_1m']['after']})"),
        (f"CPU-s per million detections: controllers {ctl['cpu_s_per_million_detections']}, "
         f"database server {d['server_cpu_s_per_million_detections']} ({d['backend']}, "
         f"{r['config']['replicas']} replica(s)); detections on disk "
         f"{_mb(d['detections_bytes_per_million_detections'])} MB per million"),
        *(f"ingest{f' (replica {k})' if 'replicas' in ctl else ''}: {rep['ingest']}"
          for k, rep in enumerate(ctl.get("replicas", [ctl]))),
        (f"integrity: {integ['rows']} rows, lost {integ['lost']}, duplicated {integ['duplicated']}, "
         f"unexpected {integ['unexpected']}, unacked at end {integ['sent_but_unacked']}, "
         f"ack-reported duplicates {integ['ack_reported_duplicates']}"),
    ]
    return "\n".join(lines)


def main() -> int:
    if len(sys.argv) > 3 and sys.argv[1] == "--_controller":  # internal: the profiled controller process
        return instrumented_controller(sys.argv[4:], Path(sys.argv[2]), profile=True)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--procs", type=int, default=8, help="worker processes the agents are spread over")
    parser.add_argument("--seconds", type=float, default=30.0, help="steady window that is measured")
    parser.add_argument("--warmup", type=float, default=5.0, help="publishing before the window starts")
    parser.add_argument("--fps", type=float, default=4.0, help="frames per second per agent")
    parser.add_argument("--objects", type=int, default=5, help="detections per frame")
    parser.add_argument("--batch", type=int, default=8, help="frames per DetectionBatch")
    parser.add_argument("--heartbeat-interval", type=int, default=5, help="the controller's heartbeat interval (s)")
    parser.add_argument("--workdir", help="controller db and logs (default: a new temporary folder)")
    parser.add_argument("--db", metavar="postgres|URL",
                        help="postgres: a throwaway PostgreSQL cluster for the run; postgresql://…: that (empty) "
                             "database (default: a SQLite file in the workdir)")
    parser.add_argument("--replicas", type=int, default=1, help="controller processes on the database (PostgreSQL)")
    parser.add_argument("--profile", action="store_true",
                        help="cProfile the controllers (workdir/controller.prof.txt, controller-1.prof.txt, …)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.agents < 1 or args.procs < 1 or args.batch < 1 or args.fps <= 0 or args.objects < 0:
        parser.error("--agents, --procs, --batch must be >= 1, --fps > 0, --objects >= 0")
    if args.replicas < 1 or (args.replicas > 1 and not args.db):
        parser.error("--replicas must be >= 1, and more than one needs --db postgres or a postgresql:// URL")
    args.procs = min(args.procs, args.agents)
    result = run(args)
    write_report(result, args.out)
    print(summary(result), file=sys.stderr)
    ok = result["integrity"]["lost"] == 0 and result["integrity"]["duplicated"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
