"""The controller process: one grpc.aio server with both services, health and reflection."""
from __future__ import annotations

import asyncio
import functools
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from edgefleet.v1 import agent_pb2, agent_pb2_grpc, fleet_pb2, fleet_pb2_grpc

from .control import FleetControlServicer
from .gateway import AgentGatewayServicer
from .hub import Hub
from .interceptors import FleetInterceptor
from .store import FleetStore

logger = logging.getLogger(__name__)

SERVICES = (
    agent_pb2.DESCRIPTOR.services_by_name["AgentGateway"].full_name,
    fleet_pb2.DESCRIPTOR.services_by_name["FleetControl"].full_name,
)


class AsyncStore:
    """Runs FleetStore methods on one dedicated thread: serialised SQLite, free event loop."""

    def __init__(self, store: FleetStore):
        self.store = store
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fleet-db")

    def __getattr__(self, name: str):
        method = getattr(self.store, name)

        async def call(*args, **kwargs):
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._pool, functools.partial(method, *args, **kwargs))

        return call

    def close(self) -> None:
        self._pool.submit(self.store.close).result()
        self._pool.shutdown(wait=True)


class Controller:
    """`start()` binds and serves; `stop()` goes NOT_SERVING, drains with grace, closes the db."""

    def __init__(self, db_path: Path | str, listen: str = "127.0.0.1:50051", heartbeat_interval_s: int = 5):
        self.db_path = db_path
        self.listen = listen
        self.heartbeat_interval_s = heartbeat_interval_s
        self.store = FleetStore(db_path)
        self.db = AsyncStore(self.store)
        self.hub = Hub()
        self.health = health.aio.HealthServicer()
        self.server: grpc.aio.Server | None = None
        self.port: int | None = None

    async def start(self) -> int:
        self.server = grpc.aio.server(interceptors=[FleetInterceptor(self.db.device_for_token)])
        agent_pb2_grpc.add_AgentGatewayServicer_to_server(
            AgentGatewayServicer(self.db, self.hub, self.heartbeat_interval_s), self.server
        )
        fleet_pb2_grpc.add_FleetControlServicer_to_server(
            FleetControlServicer(self.db, self.hub, self.heartbeat_interval_s), self.server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (*SERVICES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self.server,
        )
        self.port = self.server.add_insecure_port(self.listen)
        if not self.port:
            raise OSError(f"cannot listen on {self.listen}")
        await self.server.start()
        for service in ("", *SERVICES):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        logger.info("controller listening on %s (port %d), db %s", self.listen, self.port, self.db_path)
        return self.port

    async def wait(self) -> None:
        await self.server.wait_for_termination()

    async def stop(self, grace: float = 2.0) -> None:
        if self.server is None:
            return
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        self.server = None
        self.db.close()
        logger.info("controller stopped")
