"""The controller under test in the fleet benchmarks: a real `edgefleet serve` process on loopback."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'proto'}"}


def fleet_cli(*args: str) -> str:
    """`python -m edgefleet.fleet.cli ARGS` (e.g. `enroll-key create --db …`); its stdout, stripped."""
    return subprocess.run([sys.executable, "-m", "edgefleet.fleet.cli", "--log-level", "warning", *args], cwd=ROOT,
                          env=ENV, check=True, capture_output=True, text=True).stdout.strip()


@dataclass
class ControllerProcess:
    proc: subprocess.Popen
    address: str       # HOST:PORT of the gRPC services
    metrics_url: str   # http://HOST:PORT/metrics


def start_controller(workdir: Path, *serve_args: str, log_level: str = "info",
                     launcher: list[str] | None = None, db: str | None = None,
                     log_name: str = "controller.log") -> ControllerProcess:
    """`serve` on 127.0.0.1 (any free port, metrics on) with `db` (default `workdir/fleet.db`; a
    postgresql:// URL for a replica), its log in `workdir/<log_name>`; returns once it said where it
    listens. `launcher` replaces `python -m edgefleet.fleet.cli` (a profiling wrapper that takes the
    same arguments)."""
    args = ["--log-level", log_level, "serve", "--db", db or str(workdir / "fleet.db"), "--listen", "127.0.0.1:0",
            "--metrics-listen", "127.0.0.1:0", *serve_args]
    log = (workdir / log_name).open("w")
    proc = subprocess.Popen([*(launcher or [sys.executable, "-m", "edgefleet.fleet.cli"]), *args],
                            stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT, env=ENV)
    address = metrics = ""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (address and metrics):
        line = proc.stdout.readline()
        if not line:
            raise SystemExit(f"controller exited: see {workdir / log_name}")
        if m := re.search(r"listening on (\S+:\d+)", line):
            address = m.group(1)
        if m := re.search(r"metrics on (http://\S+/metrics)", line):
            metrics = m.group(1)
    if not (address and metrics):
        raise SystemExit(f"controller did not say where it listens: see {workdir / log_name}")
    return ControllerProcess(proc, address, metrics)


def scrape(metrics_url: str) -> str:
    return urllib.request.urlopen(metrics_url, timeout=10).read().decode()


def metric(metrics_url: str, name: str) -> float:
    """One unlabelled sample of the controller's metrics (0 when absent)."""
    m = re.search(rf"^{name} (\S+)$", scrape(metrics_url), re.M)
    return float(m.group(1)) if m else 0.0
