"""`AsyncStore`: the controller's store, awaited from the event loop; the typed interface every caller uses.

The backend is `fleet.store.FleetStore` (one SQLite file; its calls run on one dedicated thread, which
serialises them without holding the event loop) or `fleet.pg.store.PgStore` (PostgreSQL; its calls run on
as many threads as its connection pool has connections). Both have the same methods, results and errors
(tests/contract runs one suite against both); each method here runs its namesake on the store's threads.

`ingest` group-commits detection batches through `store_frames_many` (`fleet.ingest`): many devices'
batches per transaction. Start it in the event loop; stop it before `close()`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from edgefleet.common.records import Record, SnapshotRecord, TrackedObject

from . import auth
from .audit_store import DEFAULT_LIMIT, AuditRecord
from .detection_store import FrameRecord, StoreResult
from .errors import InvalidArgument, NotFound
from .ingest import IngestWriter
from .object_queries import CountBucketRow, CountQuery, ObjectQuery
from .rollout_store import ArtifactRecord, EventRecord, RolloutDeviceRecord, RolloutRecord, RolloutState
from .selectors import Selector
from .store import DeviceRecord, FleetStore

if TYPE_CHECKING:
    from .pg.store import PgStore

logger = logging.getLogger(__name__)

T = TypeVar("T")


def open_store(db: str, *, autocheckpoint: bool = True) -> FleetStore | PgStore:
    """The store `db` names: a postgresql:// URL, or the path of the SQLite file."""
    from .pg.base import is_postgres_url

    if is_postgres_url(db):
        from .pg.store import PgStore

        return PgStore(db)
    return FleetStore(db, autocheckpoint=autocheckpoint)


class AsyncStore:
    slow_call_s = 0.25
    """A store call that holds a store thread longer is logged (with how long it waited for the
    thread): with SQLite every other call, ingest's group commits included, waited behind it."""

    def __init__(self, store: FleetStore | PgStore):
        self.store = store
        self.threads = getattr(store, "pool_size", 1)
        self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="fleet-db")
        self.ingest = IngestWriter(self)

    async def _call(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._timed, method, time.perf_counter(), args, kwargs)

    def submit(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> Future[T]:
        """Run a store method (`store.<name>`) on the store's threads from any thread (the MQTT bridge, a
        metrics scrape); a Future."""
        return self._pool.submit(self._timed, method, time.perf_counter(), args, kwargs)

    def _timed(self, method: Callable[..., T], queued: float, args: tuple, kwargs: dict) -> T:
        started = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            took = time.perf_counter() - started
            if took > self.slow_call_s:
                logger.warning(
                    "store call %s held a store thread %.0f ms (after waiting %.0f ms for it)",
                    getattr(method, "__name__", method),
                    1000 * took,
                    1000 * (started - queued),
                )

    def close(self) -> None:
        self._pool.submit(self.store.close).result()
        self._pool.shutdown(wait=True)

    async def add_artifact(self, record: ArtifactRecord) -> ArtifactRecord:
        return await self._call(self.store.add_artifact, record)

    async def add_audit(self, record: AuditRecord) -> int:
        return await self._call(self.store.add_audit, record)

    async def add_event(
        self, kind: str, message: str, device_id: str = "", rollout_id: str = "", when: float | None = None
    ) -> EventRecord:
        return await self._call(self.store.add_event, kind, message, device_id, rollout_id, when)

    async def delete_detections_before(self, cutoff: float, limit: int = 10_000) -> int:
        return await self._call(self.store.delete_detections_before, cutoff, limit)

    async def delete_events_before(self, cutoff: float, limit: int = 10_000) -> int:
        return await self._call(self.store.delete_events_before, cutoff, limit)

    async def device_may_fetch(self, device_id: str, sha256: str) -> bool:
        return await self._call(self.store.device_may_fetch, device_id, sha256)

    async def devices_matching(self, selector: Selector) -> list[DeviceRecord]:
        return await self._call(self.store.devices_matching, selector)

    async def enroll(
        self, enroll_key: str, hardware_id: str, hostname: str, agent_version: str, profile: dict, labels: dict
    ) -> tuple[DeviceRecord, str]:
        return await self._call(self.store.enroll, enroll_key, hardware_id, hostname, agent_version, profile, labels)

    async def find_rollout(self, id_or_prefix: str) -> RolloutRecord:
        return await self._call(self.store.find_rollout, id_or_prefix)

    async def get_artifact(self, sha256: str) -> ArtifactRecord:
        return await self._call(self.store.get_artifact, sha256)

    async def get_device(self, device_id: str) -> DeviceRecord:
        return await self._call(self.store.get_device, device_id)

    async def get_rollout(self, rollout_id: str) -> RolloutRecord:
        return await self._call(self.store.get_rollout, rollout_id)

    async def health_history(
        self, device_id: str, since: float, until: float, resolution_s: int | None = None
    ) -> list[dict]:
        return await self._call(self.store.health_history, device_id, since, until, resolution_s)

    async def insert_rollout(self, rollout: RolloutRecord) -> RolloutRecord:
        return await self._call(self.store.insert_rollout, rollout)

    async def last_seen_by_device(self) -> dict[str, float | None]:
        return await self._call(self.store.last_seen_by_device)

    async def list_artifacts(self) -> list[ArtifactRecord]:
        return await self._call(self.store.list_artifacts)

    async def list_audit(self, since: float = 0.0, limit: int = DEFAULT_LIMIT) -> list[AuditRecord]:
        return await self._call(self.store.list_audit, since, limit)

    async def list_detections(
        self,
        device_id: str,
        stream_id: str = "",
        after_sequence: int = 0,
        limit: int = 100,
        *,
        since: float | None = None,
        until: float | None = None,
        labels: Sequence[str] = (),
    ) -> tuple[list[FrameRecord], int]:
        return await self._call(
            self.store.list_detections,
            device_id,
            stream_id,
            after_sequence,
            limit,
            since=since,
            until=until,
            labels=labels,
        )

    async def list_detections_of(
        self,
        device_ids: Sequence[str],
        stream_id: str = "",
        limit: int = 100,
        *,
        since: float | None = None,
        until: float | None = None,
        labels: Sequence[str] = (),
    ) -> tuple[list[FrameRecord], int]:
        return await self._call(
            self.store.list_detections_of, device_ids, stream_id, limit, since=since, until=until, labels=labels
        )

    async def list_devices(self) -> list[DeviceRecord]:
        return await self._call(self.store.list_devices)

    async def list_rollouts(self, states: tuple[RolloutState, ...] = ()) -> list[RolloutRecord]:
        return await self._call(self.store.list_rollouts, states)

    async def principal_for_token(self, token: str) -> auth.Principal | None:
        return await self._call(self.store.principal_for_token, token)

    async def record_config_status(self, device_id: str, status: dict) -> DeviceRecord:
        return await self._call(self.store.record_config_status, device_id, status)

    async def record_heartbeat(
        self, device_id: str, health: dict, plan: dict | None, *, now: float | None = None
    ) -> DeviceRecord:
        return await self._call(self.store.record_heartbeat, device_id, health, plan, now=now)

    async def record_hello(
        self,
        device_id: str,
        agent_version: str,
        profile: dict,
        plan: dict,
        streams: list[str],
        labels: dict[str, str] | None = None,
    ) -> DeviceRecord:
        return await self._call(self.store.record_hello, device_id, agent_version, profile, plan, streams, labels)

    async def remove_device(self, device_id: str, purge_data: bool) -> int:
        return await self._call(self.store.remove_device, device_id, purge_data)

    async def revoke_device(self, device_id: str) -> DeviceRecord:
        return await self._call(self.store.revoke_device, device_id)

    async def rollout_counts(self) -> dict[RolloutState, int]:
        return await self._call(self.store.rollout_counts)

    async def rollouts_of_device(self, device_id: str, states: tuple[RolloutState, ...]) -> list[RolloutRecord]:
        return await self._call(self.store.rollouts_of_device, device_id, states)

    async def rollup_health(
        self, device_id: str, *, now: float, raw_keep_s: float, minute_keep_s: float, keep_s: float | None
    ) -> dict[str, int]:
        return await self._call(
            self.store.rollup_health,
            device_id,
            now=now,
            raw_keep_s=raw_keep_s,
            minute_keep_s=minute_keep_s,
            keep_s=keep_s,
        )

    async def set_desired_configs(self, device_ids: list[str], document: str, set_from: str) -> list[DeviceRecord]:
        return await self._call(self.store.set_desired_configs, device_ids, document, set_from)

    async def set_operator_labels(self, device_id: str, set_labels: dict[str, str], remove: list[str]) -> DeviceRecord:
        return await self._call(self.store.set_operator_labels, device_id, set_labels, remove)

    async def set_plan_override(self, device_id: str, override: dict) -> DeviceRecord:
        return await self._call(self.store.set_plan_override, device_id, override)

    async def store_frames_many(
        self, batches: list[tuple[str, list[Record]]]
    ) -> list[StoreResult | InvalidArgument | NotFound]:
        return await self._call(self.store.store_frames_many, batches)

    # ---- objects, counts, snapshots (fleet.object_store) ----

    async def list_objects(self, query: ObjectQuery) -> list[TrackedObject]:
        return await self._call(self.store.list_objects, query)

    async def count_objects(self, query: CountQuery) -> list[CountBucketRow]:
        return await self._call(self.store.count_objects, query)

    async def get_snapshot(self, object_id: str, kind: str = "crop", device_id: str = "") -> SnapshotRecord:
        return await self._call(self.store.get_snapshot, object_id, kind, device_id)

    async def delete_objects_before(self, cutoff: float, limit: int = 10_000) -> int:
        return await self._call(self.store.delete_objects_before, cutoff, limit)

    async def delete_counts_before(self, cutoff: float, limit: int = 10_000) -> int:
        return await self._call(self.store.delete_counts_before, cutoff, limit)

    async def delete_snapshots_before(self, cutoff: float, limit: int = 10_000) -> int:
        return await self._call(self.store.delete_snapshots_before, cutoff, limit)

    async def update_rollout(
        self, rollout_id: str, *, state: RolloutState | None = None, wave: int | None = None, reason: str | None = None
    ) -> RolloutRecord:
        return await self._call(self.store.update_rollout, rollout_id, state=state, wave=wave, reason=reason)

    async def update_rollout_device(self, rollout_id: str, device: RolloutDeviceRecord) -> None:
        return await self._call(self.store.update_rollout_device, rollout_id, device)
