#!/usr/bin/env python3
"""Fleet ingest at scale: simulated agents over real gRPC against a real controller process.

    python scripts/bench/fleet.py [--agents 1000] [--procs 8] [--seconds 30] [--warmup 5] [--fps 4]
                                  [--objects 5] [--batch 8] [--heartbeat-interval 5] [--workdir DIR]
                                  [--profile] [--out var/bench/fleet.json]

1. A controller in its own process (`python -m edgefleet.fleet.cli serve`, metrics on) with a fresh
   SQLite file and an enrollment key made by `python -m edgefleet.fleet.cli enroll-key create`.
2. `--procs` worker processes, each running its share of `--agents` on one asyncio loop.
   Every agent has its own channel (TCP connection), enrolls, opens a Session (hello, then
   heartbeats at the controller's interval) and a PublishDetections stream, and sends a batch
   of `--batch` frames every batch/fps seconds, `--objects` moving, tracked objects per frame.
   Publish->ack latency: from writing a batch to the ack that covers its last sequence.
3. After `--warmup` seconds, a steady window of `--seconds`: detections committed in it (from
   the store's `received` times), ack latency percentiles (agent side, and the controller's
   own histogram), the controller's CPU (percent of one core) and RSS (psutil).
4. The agents stop sending and wait for their last acks; the controller stops; the SQLite file
   is checked exactly: every acked (device, sequence) present once, nothing unsent present,
   every stored frame holding the objects sent.
`--profile` runs the controller under cProfile (event loop thread and store thread) and
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
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "proto"), str(Path(__file__).resolve().parent)]

from controller import fleet_cli, scrape, start_controller  # (scripts/bench/controller.py)
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


# ---- checks on the store ----

def check_store(db: Path, agents: list[dict], objects: int, window: tuple[float, float]) -> dict:
    """Exact: per device, the stored sequences against what the agent sent and what was acked."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        stored: dict[str, list[int]] = collections.defaultdict(list)
        rows = 0
        bad_objects = 0
        for device_id, sequence, n_objects in conn.execute(
                "select device_id, sequence, n_objects from detections order by device_id, sequence"):
            stored[device_id].append(sequence)
            rows += 1
            bad_objects += n_objects != objects
        counters = dict(conn.execute("select device_id, acked_sequence from devices").fetchall())
        stored_counts = dict(conn.execute("select device_id, detections_stored from devices").fetchall())
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
        start, end = window
        frames_w, dets_w = conn.execute(
            "select count(*), coalesce(sum(n_objects), 0) from detections where received >= ? and received < ?",
            [start, end]).fetchone()
        per_second = [d for _, d in conn.execute(
            "select cast(received as int) s, sum(n_objects) from detections where received >= ? and received < ?"
            " group by s order by s", [math.ceil(start), math.floor(end)])]
        first, last, total_dets = conn.execute(
            "select min(received), max(received), coalesce(sum(n_objects), 0) from detections").fetchone()
    finally:
        conn.close()
    return {
        "rows": rows, "lost": lost, "duplicated": duplicated, "unexpected": unexpected,
        "sent_but_unacked": unacked, "device_counter_mismatches": ack_mismatch,
        "frames_with_wrong_object_count": bad_objects,
        "window": {"frames": frames_w, "detections": dets_w, "seconds": end - start,
                   "detections_per_s": round(dets_w / (end - start), 1),
                   "frames_per_s": round(frames_w / (end - start), 1),
                   "detections_per_s_min_1s": min(per_second) if per_second else None,
                   "detections_per_s_max_1s": max(per_second) if per_second else None},
        "whole_run": {"detections": total_dets,
                      "detections_per_s": round(total_dets / (last - first), 1) if first and last > first else None},
    }


# ---- the run ----

@dataclass
class Measured:
    """What the run sampled over the window: the controller's RSS throughout; at the window's start and
    end, the controller's and the workers' CPU seconds and the controller's ack histogram."""
    rss: list[int] = field(default_factory=list)
    cpu_at: dict[str, float] = field(default_factory=dict)
    workers_cpu: dict[str, float] = field(default_factory=dict)
    hist: dict[str, dict] = field(default_factory=dict)
    host_cpu: float | None = None


def measure(ctl, procs: list, metrics_url: str | None, db: Path, start: float,
            window: tuple[float, float]) -> Measured:
    """Sample until the window has ended, printing progress every 5 s."""
    import psutil

    measured = Measured()

    def ctl_cpu() -> float:
        t = ctl.cpu_times()
        return t.user + t.system

    def workers_cpu_now() -> float:
        return sum(p.cpu_times().user + p.cpu_times().system for p in procs)

    marks = [("start", window[0]), ("end", window[1])]
    progress_db = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    while marks or time.time() < window[1] + 0.5:
        now = time.time()
        if marks and now >= marks[0][1]:
            name, _ = marks.pop(0)
            measured.cpu_at[name], measured.workers_cpu[name] = ctl_cpu(), workers_cpu_now()
            measured.hist[name] = scrape_ack_histogram(metrics_url) if metrics_url else {}
            if name == "start":
                psutil.cpu_percent(None)
            else:
                measured.host_cpu = psutil.cpu_percent(None)
            continue
        measured.rss.append(ctl.memory_info().rss)
        if int(now) % 5 == 0:
            n = progress_db.execute("select max(rowid) from detections").fetchone()[0] or 0
            print(f"  t={now - start:5.1f}s  {n} frames committed  controller rss "
                  f"{measured.rss[-1] / 2**20:.0f} MiB", file=sys.stderr)
        time.sleep(min(1.0, max(0.05, (marks[0][1] - time.time()) if marks else 1.0)))
    progress_db.close()
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


def stop_all(workers: list, controller: subprocess.Popen) -> None:
    for w in workers:
        if w.is_alive():
            w.kill()
    controller.send_signal(signal.SIGTERM)
    try:
        controller.wait(60)
    except subprocess.TimeoutExpired:
        controller.kill()


def run(args) -> dict:
    import psutil

    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="edgefleet-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    db = workdir / "fleet.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    key = fleet_cli("enroll-key", "create", "--db", str(db), "--name", "bench", "--create")
    cfg = {
        "run_id": f"{os.getpid()}-{int(time.time())}", "fps": args.fps, "objects": args.objects,
        "batch": args.batch, "seconds": args.seconds, "warmup": args.warmup,
        "heartbeat_interval": args.heartbeat_interval, "enroll_key": key,
        "connect_concurrency": 16, "ready_timeout": 120 + args.agents / 5, "drain_timeout": 30.0,
    }
    loadavg_before = os.getloadavg()
    launcher = [sys.executable, __file__, "--_controller", str(workdir / "controller.prof.txt"), "--"]
    started = start_controller(workdir, "--heartbeat-interval", str(cfg["heartbeat_interval"]),
                               launcher=launcher if args.profile else None)
    controller, address, metrics_url = started.proc, started.address, started.metrics_url
    cfg["address"] = address
    ctl = psutil.Process(controller.pid)
    print(f"controller pid {controller.pid} on {address}; {args.agents} agents in {args.procs} processes",
          file=sys.stderr)
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
        measured = measure(ctl, [psutil.Process(w.pid) for w in workers], metrics_url, db, start, window)
        agents, failures = collect_agents(results, workers, cfg["drain_timeout"] + 60)
    finally:
        go.set()
        stop_all(workers, controller)
    rss, cpu_at, workers_cpu, hist = measured.rss, measured.cpu_at, measured.workers_cpu, measured.hist
    store = check_store(db, agents, args.objects, window)
    in_window = [lat for a in agents for written, lat in a["latencies"] if window[0] <= written < window[1]]
    lag = [x for a in agents for written_lag in [a["send_lag"]] for x in written_lag]
    seconds = window[1] - window[0]
    ctl_log = (workdir / "controller.log").read_text(errors="replace")
    ingest = re.findall(r"ingest writer stopped: (.*)", ctl_log)
    connected_end = sum(1 for a in agents
                        if a["connected_at"] and (a["failed_at"] is None or a["failed_at"] >= window[1]))
    return {
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "config": {"agents": args.agents, "procs": args.procs, "seconds": args.seconds, "warmup": args.warmup,
                   "fps": args.fps, "objects": args.objects, "batch": args.batch,
                   "heartbeat_interval_s": args.heartbeat_interval, "profile": args.profile,
                   "offered_detections_per_s": args.agents * args.fps * args.objects},
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
        "controller": {
            "cpu_percent_of_one_core": round(100 * (cpu_at["end"] - cpu_at["start"]) / seconds, 1),
            "rss_mib_max": round(max(rss) / 2**20, 1) if rss else None,
            "rss_mib_end": round(rss[-1] / 2**20, 1) if rss else None,
            "ingest": ingest[-1] if ingest else None,
            "gc": _gc_lines(workdir / "controller.prof.txt"),
        },
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


def summary(r: dict) -> str:
    c, lat, ctl, integ = r["committed"], r["ack_latency_ms"], r["controller"], r["integrity"]
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
        f"ingest: {ctl['ingest']}",
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
    parser.add_argument("--workdir", help="controller db and log (default: a new temporary folder)")
    parser.add_argument("--profile", action="store_true", help="cProfile the controller (workdir/controller.prof.txt)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.agents < 1 or args.procs < 1 or args.batch < 1 or args.fps <= 0 or args.objects < 0:
        parser.error("--agents, --procs, --batch must be >= 1, --fps > 0, --objects >= 0")
    args.procs = min(args.procs, args.agents)
    result = run(args)
    write_report(result, args.out)
    print(summary(result), file=sys.stderr)
    ok = result["integrity"]["lost"] == 0 and result["integrity"]["duplicated"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
