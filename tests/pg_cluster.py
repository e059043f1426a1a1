"""A throwaway PostgreSQL cluster for the tests: initdb into a temporary folder, pg_ctl on a free loopback port.

Debian's `postgresql` package puts the server in /usr/lib/postgresql/<major>/bin (not on PATH);
`make test` installs it when missing (scripts/setup-host.sh --test-broker). As root the cluster runs
as the `postgres` user (the server refuses to run as root). Trust authentication on 127.0.0.1 only:
the cluster lives as long as the test session and holds nothing but test data.
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

INSTALL_HINT = "sudo apt-get install postgresql (make test does it on Debian)"


def server_bin() -> Path | None:
    """The folder with initdb/pg_ctl/postgres: on PATH, else Debian's newest /usr/lib/postgresql/N/bin."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    return Path(candidates[-1]).parent if candidates else None


class PgCluster:
    """`start()` once; `database()` makes a fresh empty database and returns its URL; `stop()`/`start()`
    again keep the data (a test stops the server to see the controllers ride it out); `destroy()` at the end."""

    def __init__(self, port: int, root: Path | None = None):
        bin_dir = server_bin()
        if bin_dir is None:
            raise FileNotFoundError(f"PostgreSQL's server programs are not installed: {INSTALL_HINT}")
        self.bin = bin_dir
        self.port = port
        self.root = Path(root or tempfile.mkdtemp(prefix="edgefleet-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._as_postgres = os.geteuid() == 0
        self._initialised = False

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        command = [str(self.bin / argv[0]), *argv[1:]]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, check=check, capture_output=True, text=True, timeout=120)

    def _init(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
        settings = (f"port = {self.port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{self.root}'\n"
                    "fsync = on\nmax_connections = 300\nshared_buffers = 128MB\n")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(settings)
        self._initialised = True

    def start(self) -> PgCluster:
        if not self._initialised:
            self._init()
        result = self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start",
                           check=False)
        if result.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {result.stderr or result.stdout}\n{self.server_log()}")
        return self

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def server_log(self) -> str:
        try:
            return self.log.read_text()[-4000:]
        except OSError:
            return ""

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def database(self, name: str | None = None) -> str:
        """A new empty database; its URL."""
        import psycopg

        name = name or f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'create database "{name}"')
        return self.url(name)

    def drop(self, url: str) -> None:
        import psycopg

        name = url.rsplit("/", 1)[-1]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')
