#!/usr/bin/env python3
"""The fleet ingest matrix: SQLite x1, PostgreSQL x1 and PostgreSQL x2 controllers at each fleet size, in one run.

    python scripts/bench/fleet_matrix.py [--agents 1000,2000] [--seconds 20] [--warmup 5] [--procs 4]
                                         [--fps 4.2] [--objects 5] [--batch 8] [--idle-fps 0.1]
                                         [--pause 10] [--workdir DIR] [--out docs/bench/fleet-matrix.json]

Each cell is one `scripts/bench/fleet.py` run in its own process, one after the other (the SQLite
file fresh, each PostgreSQL cell on a throwaway cluster of its own: `--db postgres`), `--pause`
seconds apart, smaller fleets first. With `--idle-fps`, the three setups run once more at the
smallest fleet size with every agent sending one frame each 1/idle-fps seconds: what connected
agents cost (sessions, heartbeats) apart from their detections. Writes one JSON with every cell's
full report, `uptime` before and after the matrix (the machine may be shared), the goals of the
scale-out work and the costs the sizing is drawn from; prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

from report import write_report  # (scripts/bench/report.py)

SETUPS = (("SQLite", None, 1), ("PostgreSQL", "postgres", 1), ("PostgreSQL", "postgres", 2))
"""(label, fleet.py --db, --replicas) of each column of the matrix."""


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def checkout() -> dict:
    """The commit measured, and what the work tree changed under the packages the controller runs."""
    def git(*argv: str) -> str:
        return subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()

    changed = git("status", "--short", "--", "fleet", "common", "proto")
    return {"commit": git("rev-parse", "HEAD"), "uncommitted_under_fleet_common_proto": changed.splitlines()}


def run_cell(args, label: str, db: str | None, replicas: int, agents: int, idle: bool = False) -> dict:
    """One fleet.py run; its report, or what went wrong. `idle`: one frame per agent each 1/--idle-fps s."""
    name = f"{label.lower()}-x{replicas}-{agents}" + ("-idle" if idle else "")
    fps, batch = (args.idle_fps, 1) if idle else (args.fps, args.batch)
    workdir = Path(args.workdir) / name
    out = workdir / "fleet.json"
    out.unlink(missing_ok=True)
    argv = [sys.executable, str(HERE / "fleet.py"), "--agents", str(agents), "--procs", str(args.procs),
            "--seconds", str(args.seconds), "--warmup", str(args.warmup), "--fps", str(fps),
            "--objects", str(args.objects), "--batch", str(batch), "--replicas", str(replicas),
            "--workdir", str(workdir), "--out", str(out), *(["--db", db] if db else [])]
    print(f"== {label} x{replicas}, {agents} agents at {fps} fps ({uptime()})", file=sys.stderr, flush=True)
    started = time.time()
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
    sys.stderr.write(proc.stderr[-1500:])
    cell = {"name": name, "setup": label, "replicas": replicas, "agents": agents, "idle": idle,
            "fps": fps, "batch": batch, "exit_code": proc.returncode,
            "wall_s": round(time.time() - started, 1), "git": checkout(), "command": " ".join(argv[1:])}
    if out.exists():
        cell["report"] = json.loads(out.read_text())
    else:
        cell["error"] = proc.stderr[-3000:]
    return cell


def figures(cell: dict) -> dict | None:
    """The figures of one cell the table and the goals use (None when the run gave no report)."""
    r = cell.get("report")
    if r is None:
        return None
    lat, ctl, db = r["ack_latency_ms"], r["controller"], r["database"]
    return {
        "offered": r["config"]["offered_detections_per_s"], "committed": r["committed"]["detections_per_s"],
        "p50": lat["p50"], "p99": lat["p99"], "connected": r["agents"]["connected"], "failed": r["agents"]["failed"],
        "ctl_cpu_pct": ctl["cpu_percent_of_one_core"], "ctl_cpu_s_per_m": ctl["cpu_s_per_million_detections"],
        "db_cpu_pct": db["server_cpu_percent_of_one_core"], "db_cpu_s_per_m": db["server_cpu_s_per_million_detections"],
        "rss": ctl["rss_mib_max"], "disk_mb_per_m": _mb(db["detections_bytes_per_million_detections"]),
        "lost": r["integrity"]["lost"], "duplicated": r["integrity"]["duplicated"],
        "load": r["host_loadavg_1m"],
    }


def _mb(n: float | None) -> float | None:
    return None if n is None else round(n / 1e6)


def _n(x, digits: int = 0) -> str:
    if x is None:
        return "—"
    return f"{x:,.{digits}f}"


def table(cells: list[dict]) -> str:
    head = ("| setup | agents | offered det/s | committed det/s | ack p50 / p99 ms | connected / failed "
            "| controllers % of a core | PostgreSQL % of a core | CPU-s per M det: controllers / PostgreSQL "
            "| controllers RSS MiB | detections on disk MB per M | lost / dup | load 1m before → after |")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for cell in cells:
        f = figures(cell)
        setup = f"{cell['setup']} ×{cell['replicas']}" + (f" (idle: {cell['fps']} fps)" if cell["idle"] else "")
        if f is None:
            lines.append(f"| {setup} | {cell['agents']:,} | run failed (exit {cell['exit_code']}) |")
            continue
        lines.append(
            f"| {setup} | {cell['agents']:,} | {_n(f['offered'])} | {_n(f['committed'])} | {_n(f['p50'])} / "
            f"{_n(f['p99'])} | {f['connected']:,} / {f['failed']:,} | {_n(f['ctl_cpu_pct'])} | {_n(f['db_cpu_pct'])} "
            f"| {_n(f['ctl_cpu_s_per_m'])} / {_n(f['db_cpu_s_per_m'])} | {_n(f['rss'])} | {_n(f['disk_mb_per_m'])} "
            f"| {f['lost']} / {f['duplicated']} | {f['load']['before']} → {f['load']['after']} |")
    return "\n".join(lines)


def goals(cells: list[dict]) -> dict:
    """The acceptance goals of the scale-out work, checked against the cells that ran."""
    by = {(c["setup"], c["replicas"], c["agents"]): figures(c) for c in cells if not c["idle"]}
    out: dict = {}
    pg2 = by.get(("PostgreSQL", 2, 2000))
    if pg2 is not None:
        out["postgresql_x2_2000_agents"] = {
            "goal": ">= 40,000 det/s committed, p99 ack < 500 ms, no agent failing",
            "committed": pg2["committed"], "p99_ms": pg2["p99"], "failed": pg2["failed"],
            "reached": pg2["committed"] >= 40_000 and pg2["p99"] is not None and pg2["p99"] < 500
            and pg2["failed"] == 0}
    sq1, pg1 = by.get(("SQLite", 1, 1000)), by.get(("PostgreSQL", 1, 1000))
    if sq1 is not None and pg1 is not None:
        ratio = pg1["committed"] / sq1["committed"] if sq1["committed"] else None
        out["postgresql_x1_vs_sqlite_x1_1000_agents"] = {
            "goal": "PostgreSQL x1 committed det/s within 10 % of SQLite x1",
            "sqlite": sq1["committed"], "postgresql": pg1["committed"],
            "ratio": None if ratio is None else round(ratio, 3),
            "reached": ratio is not None and ratio >= 0.9}
    return out


def costs(cells: list[dict]) -> dict:
    """Per setup, from its idle and loaded cells of one fleet size: cores per 1,000 connected agents (idle),
    cores per 10,000 detections/s (loaded less idle, over the detections that added), disk per million."""
    out = {}
    for idle in (c for c in cells if c["idle"] and c.get("report")):
        loaded = next((c for c in cells if not c["idle"] and c.get("report") and c["setup"] == idle["setup"]
                       and c["replicas"] == idle["replicas"] and c["agents"] == idle["agents"]), None)
        if loaded is None:
            continue
        i, f = figures(idle), figures(loaded)
        added = f["committed"] - i["committed"]
        per_10k = 10_000 / added if added > 0 else None

        def cores(pct_loaded, pct_idle, per=per_10k):
            return None if None in (pct_loaded, pct_idle, per) else round((pct_loaded - pct_idle) / 100 * per, 3)

        report = loaded["report"]["database"]
        out[f"{idle['setup'].lower()}-x{idle['replicas']}"] = {
            "from": [idle["name"], loaded["name"]],
            "controller_cores_per_1000_agents": round(i["ctl_cpu_pct"] / 100 / idle["agents"] * 1000, 3),
            "controller_cores_per_10000_detections_per_s": cores(f["ctl_cpu_pct"], i["ctl_cpu_pct"]),
            "postgresql_cores_per_1000_agents": None if i["db_cpu_pct"] is None
            else round(i["db_cpu_pct"] / 100 / idle["agents"] * 1000, 3),
            "postgresql_cores_per_10000_detections_per_s": cores(f["db_cpu_pct"], i["db_cpu_pct"]),
            "detections_bytes_per_million": report["detections_bytes_per_million_detections"],
            "wal_bytes_per_million": report["wal_bytes_per_million_detections_window"],
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", default="1000,2000", help="fleet sizes, comma separated")
    parser.add_argument("--seconds", type=float, default=20.0, help="each run's measured window")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--procs", type=int, default=4, help="worker processes of simulated agents")
    parser.add_argument("--fps", type=float, default=4.2)
    parser.add_argument("--objects", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--idle-fps", type=float, default=0.1,
                        help="frames per second per agent of the idle cells (0: none)")
    parser.add_argument("--pause", type=float, default=10.0, help="seconds between cells")
    parser.add_argument("--workdir", default=None, help="each run's files in a folder of its own here")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    args.workdir = args.workdir or f"/tmp/edgefleet-matrix-{os.getpid()}"
    sizes = [int(a) for a in args.agents.split(",")]
    before, load_before, started = uptime(), os.getloadavg(), time.time()
    plan = [(label, db, replicas, sizes[0], True) for label, db, replicas in SETUPS if args.idle_fps > 0]
    plan += [(label, db, replicas, agents, False) for agents in sizes for label, db, replicas in SETUPS]
    cells = []
    for k, cell in enumerate(plan):
        if k:
            time.sleep(args.pause)
        cells.append(run_cell(args, *cell))
    result = {
        "command": "python scripts/bench/fleet_matrix.py " + " ".join(sys.argv[1:]),
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
                 "processor": platform.processor() or None},
        "uptime_before": before, "uptime_after": uptime(),
        "loadavg_before": [round(x, 2) for x in load_before], "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "wall_s": round(time.time() - started, 1),
        "goals": goals(cells), "costs": costs(cells), "table": table(cells), "runs": cells,
    }
    write_report(result, args.out)
    print(result["table"])
    print(json.dumps({"goals": result["goals"], "costs": result["costs"]}, indent=2))
    return 0 if all(c.get("report") for c in cells) else 1


if __name__ == "__main__":
    sys.exit(main())
