"""Real processes for the tests that kill and restart them, and reading the SQLite files they
leave behind (also used by scripts/bench/soak.py)."""
from __future__ import annotations

import select
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from .conftest import ROOT


def read_db(db: Path, sql: str, params=(), timeout: float = 10.0) -> list[tuple]:
    """Rows of a query on a SQLite file another process writes, read-only; [] while the file or
    the table does not exist yet."""
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=timeout)
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError:  # the table is not created yet
        return []
    finally:
        conn.close()


def outbox_state(state_dir: Path, timeout: float = 10.0) -> tuple[list[int], int]:
    """An agent's outbox: (sequences committed and not yet acknowledged, highest sequence ever assigned)."""
    db = state_dir / "outbox.db"
    pending = [s for (s,) in read_db(db, "select sequence from outbox order by sequence", timeout=timeout)]
    last = read_db(db, "select seq from sqlite_sequence where name = 'outbox'", timeout=timeout)
    return pending, (last[0][0] if last else 0)


class ControllerProcess:
    """`python -m edgefleet.fleet.cli serve` on a fixed port and db, killable and restartable; `serve_args`
    are more `serve` flags (the enrollment key `efk_test` and a 1 s heartbeat are given)."""

    def __init__(self, db: Path, port: int, log_dir: Path, *serve_args: str):
        self.db, self.port, self.log_dir, self.serve_args = db, port, log_dir, serve_args
        self.address = f"127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self, timeout: float = 60.0) -> ControllerProcess:
        self.starts += 1
        log = open(self.log_dir / f"controller-{self.starts}.log", "w")  # noqa: SIM115 - the process owns it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgefleet.fleet.cli", "--log-level", "warning", "serve", "--listen", self.address,
             "--db", str(self.db), "--enroll-key", "efk_test", "--heartbeat-interval", "1", *self.serve_args],
            stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT)
        log.close()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        assert "listening" in line, f"controller did not start: {line!r}\n{self.log()}"
        return self

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return (self.log_dir / f"controller-{self.starts}.log").read_text()[-3000:]
