"""What every `edgefleet` command shares: its user-facing error, JSON output, the controller's
database opened without creating one by accident, time arguments, and a quiet end when the
reader of stdout goes away (`edgefleet detections | head`)."""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from google.protobuf.message import Message

from .convert import to_json_dict

ENV_CONTROLLER = "EDGEFLEET_CONTROLLER"
ENV_TOKEN = "EDGEFLEET_TOKEN"
SIGPIPE_EXIT = 141
"""What a shell reports for a program a closed pipe ended (128 + SIGPIPE), as `git log | head` does."""


class CliError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


# ---- output ----

def print_json(value: Any) -> None:
    """Messages (alone or in lists and dicts) as `to_json_dict` renders them: every field, numbers as numbers."""
    print(json.dumps(_jsonable(value), indent=2))


def _jsonable(value: Any) -> Any:
    if isinstance(value, Message):
        return to_json_dict(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def quiet_broken_pipe(run: Callable[[], int]) -> int:
    """`run()`; when stdout's reader has gone (`| head`), end quietly with 141 instead of a traceback.

    Python's advice: point stdout at /dev/null so the flush at exit does not raise again."""
    try:
        code = run()
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return SIGPIPE_EXIT


# ---- the controller's database ----

DEFAULT_DB = "var/fleet.db"
DB_HELP = ("the controller's database: a SQLite file (default var/fleet.db) or a postgresql:// URL "
           "(default: $EDGEFLEET_DB when set)")


def db_arg(p) -> None:
    """--db for `serve` and the secrets commands: $EDGEFLEET_DB, else var/fleet.db; the flag wins."""
    p.add_argument("--db", default=os.environ.get("EDGEFLEET_DB") or DEFAULT_DB, metavar="PATH|URL", help=DB_HELP)


def existing_db(db: str, create: bool) -> str:
    """`db`, refusing to make a new SQLite file unless `create`: a mistyped or missing --db would
    otherwise leave an empty controller database (and keys no controller reads) in the working folder.
    A postgresql:// URL names a server database, made by whoever runs it (the schema is made on first use)."""
    from .pg.base import is_postgres_url

    if create or is_postgres_url(db) or Path(db).exists():
        return db
    raise CliError(f"no controller database at {db}: pass the controller's --db, "
                   "or --create to make a new one there")


# ---- times ----

DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def time_arg(flag: str, now: Callable[[], float] = time.time) -> Callable[[str], float]:
    """An argparse type for a point in time: a duration ago (`90s`, `10m`, `2h`, `7d`), `today` (local
    midnight) or an ISO 8601 time (`2026-05-01T12:00`, local time unless it names its zone); seconds
    since the epoch."""

    def parse(text: str) -> float:
        match = DURATION.match(text.strip())
        if match:
            return now() - float(match.group(1)) * UNIT_S[match.group(2)]
        if text.strip() == "today":
            return local_midnight(now())
        try:
            return dt.datetime.fromisoformat(text.strip()).timestamp()
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag}: {text!r} is neither a duration (30s, 10m, 2h, 7d), today, "
                           "nor an ISO time (2026-05-01T12:00:00)") from None

    return parse


def local_midnight(seconds: float) -> float:
    """The start of the local day `seconds` falls in."""
    day = dt.datetime.fromtimestamp(seconds).date()
    return dt.datetime.combine(day, dt.time()).timestamp()


def format_time(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


# ---- files ----

def write_output(path: str, data: bytes, force: bool) -> str:
    """Write `data` to `path` (`-`: stdout) and say where it went. An existing file is kept unless
    `force` (a picture written over a picture is lost); the write goes through a temporary file beside
    it, so a reader never sees half a JPEG."""
    if path == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return "stdout"
    target = Path(path)
    if target.is_dir():
        raise CliError(f"{path} is a folder: name the file to write (e.g. {target / 'picture.jpg'})")
    if target.exists() and not force:
        raise CliError(f"{path} exists: pass --force to replace it")
    partial = target.with_name(f".{target.name}.partial")
    try:
        partial.write_bytes(data)
        partial.replace(target)
    except OSError as err:
        partial.unlink(missing_ok=True)
        raise CliError(f"cannot write {path}: {err.strerror or err}") from err
    return str(target)
