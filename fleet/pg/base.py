"""What the PostgreSQL store's table mixins share: the connection pool, transactions, migrations.

Every method of the store may run on any thread of the controller's store pool, and several
controller processes (replicas) write the same database: a read-modify-write takes its rows
`for update` inside one transaction (`PgTables._tx`), and a write that must be unique across
replicas leans on a constraint (`on conflict`), never on a check made before it.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from . import schema

if TYPE_CHECKING:
    import psycopg
    import psycopg_pool

    from ..object_rows import GroupWrites
    from ..store import DeviceRecord

logger = logging.getLogger(__name__)

MIGRATION_LOCK = 0x6564_6765_666C_01
"""pg_advisory_xact_lock key: one replica migrates at a time, the others wait and find it done."""
INSTALL_HINT = "pip install 'edgefleet[postgres]' (psycopg 3 and psycopg-pool)"


def is_postgres_url(db: str) -> bool:
    return db.startswith(("postgresql://", "postgres://"))


def open_pool(url: str, *, min_size: int = 2, max_size: int = 8,
              timeout_s: float = 10.0) -> psycopg_pool.ConnectionPool:
    """A connection pool on `url`, opened (its first connections made) or ConnectionError saying why."""
    try:
        import psycopg
        import psycopg_pool
    except ImportError as err:
        from ..errors import ConfigError

        raise ConfigError(f"the PostgreSQL store needs psycopg: {INSTALL_HINT}") from err
    # check: a connection is tried before it is lent, so the calls after a PostgreSQL restart get new ones.
    pool = psycopg_pool.ConnectionPool(url, min_size=min_size, max_size=max_size, timeout=timeout_s, open=False,
                                       kwargs={"autocommit": True}, name="edgefleet-store",
                                       check=psycopg_pool.ConnectionPool.check_connection)
    try:
        pool.open(wait=True, timeout=timeout_s)
    except (psycopg.Error, psycopg_pool.PoolTimeout) as err:
        pool.close()
        raise ConnectionError(f"cannot connect to PostgreSQL at {redact(url)}: {err}") from err
    return pool


def redact(url: str) -> str:
    """The URL without its password, for logs and errors."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


class PgTables:
    """Base of `fleet.pg.store.PgStore` and its mixins. Connections autocommit; `_tx` groups statements."""

    pool: psycopg_pool.ConnectionPool

    @contextlib.contextmanager
    def _tx(self) -> Iterator[psycopg.Connection]:
        """A connection inside one transaction: committed when the block ends, rolled back if it raises."""
        with self.pool.connection() as conn, conn.transaction():
            yield conn

    def _rows(self, sql: str, params: Sequence[Any] = (), conn: psycopg.Connection | None = None) -> list[dict]:
        """Rows as dicts (column name -> value), on `conn` or a pooled connection."""
        from psycopg.rows import dict_row

        if conn is not None:
            return conn.cursor(row_factory=dict_row).execute(sql, params).fetchall()
        with self.pool.connection() as pooled:
            return pooled.cursor(row_factory=dict_row).execute(sql, params).fetchall()

    def _execute(self, sql: str, params: Sequence[Any] = (), conn: psycopg.Connection | None = None) -> int:
        """Run one statement; the rows it changed."""
        if conn is not None:
            return conn.execute(sql, params).rowcount
        with self.pool.connection() as pooled:
            return pooled.execute(sql, params).rowcount

    def _write_objects(self, conn: psycopg.Connection, writes: GroupWrites, now: float) -> None:
        """Objects, counts and pictures of a group commit, inside its transaction; `fleet.pg.objects` writes them."""
        raise NotImplementedError

    def _require(self, device_id: str, conn: psycopg.Connection | None = None) -> DeviceRecord:
        """The enrolled device, or NotFound; `fleet.pg.devices` reads it."""
        raise NotImplementedError


def migrate(pool: psycopg_pool.ConnectionPool, where: str) -> None:
    """Run the steps of `fleet.pg.schema` the database lacks, each in a transaction with its version bump,
    under an advisory lock so that replicas starting together run each step once."""
    steps = schema.MIGRATIONS
    with pool.connection() as conn:
        conn.execute("create table if not exists schema_version (version integer not null)")
        for target, step in enumerate(steps, start=1):
            with conn.transaction():
                conn.execute("select pg_advisory_xact_lock(%s)", [MIGRATION_LOCK])
                row = conn.execute("select max(version) from schema_version").fetchone()
                version = (row[0] if row else None) or 0
                if version > len(steps):
                    raise RuntimeError(f"{where} has schema version {version}, newer than this controller's "
                                       f"{len(steps)}")
                if version >= target:
                    continue
                for statement in step.statements:
                    conn.execute(statement)  # the steps are literal SQL
                conn.execute("delete from schema_version")
                conn.execute("insert into schema_version (version) values (%s)", [target])
            logger.info("migrated fleet schema to v%d (%s) in %s", target, step.summary, where)
