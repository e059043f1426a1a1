"""Real processes for the tests that kill and restart them."""
from __future__ import annotations

import select
import signal
import subprocess
import sys
from pathlib import Path

from .conftest import ROOT


class ControllerProcess:
    """`python -m fleet.cli serve` on a fixed port and db, killable and restartable; `serve_args`
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
            [sys.executable, "-m", "fleet.cli", "--log-level", "warning", "serve", "--listen", self.address,
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
