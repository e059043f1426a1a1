"""What ListObjects and CountObjects ask of the store, and what CountObjects gets back.

Both stores (fleet.store.FleetStore on SQLite, fleet.pg.store.PgStore) answer
`list_objects(ObjectQuery) -> list[TrackedObject]` (newest first: last seen descending, then device id
and object id ascending), `count_objects(CountQuery) -> list[CountBucketRow]` and
`get_snapshot(object_id, kind, device_id) -> SnapshotRecord`.
"""
from __future__ import annotations

from dataclasses import dataclass

BUCKETS = {"": 0, "minute": 60, "hour": 3600, "day": 86400}
"""CountQuery.bucket -> its width in seconds ("": one bucket for the whole range). Buckets start at
multiples of their width in UTC."""


@dataclass(frozen=True)
class ObjectCursor:
    """Where a page ended: the last object answered (the next page starts after it)."""
    last_seen: float
    device_id: str
    object_id: str


@dataclass(frozen=True)
class ObjectQuery:
    device_ids: tuple[str, ...] | None = None  # None: every device
    stream_id: str = ""
    label: str = ""
    zone: str = ""                 # entered this zone
    line: str = ""                 # crossed this line
    since: float | None = None     # last seen at or after
    until: float | None = None     # first seen before
    active: bool = False           # only objects whose track has not ended
    limit: int = 100
    after: ObjectCursor | None = None


@dataclass(frozen=True)
class CountQuery:
    device_ids: tuple[str, ...] | None = None
    stream_id: str = ""
    kind: str = ""                 # "zone", "line", "" both
    name: str = ""
    label: str = ""
    direction: str = ""
    since: float | None = None     # minute start at or after
    until: float | None = None     # minute start before
    bucket: str = ""               # a key of BUCKETS
    by_device: bool = False
    by_stream: bool = False


@dataclass(frozen=True)
class CountBucketRow:
    """One bucket: `start` None when not bucketed; `device_id`/`stream_id` empty unless grouped by them."""
    start: float | None
    device_id: str
    stream_id: str
    kind: str
    name: str
    label: str
    direction: str
    count: int
