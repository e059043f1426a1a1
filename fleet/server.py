"""The controller process: one grpc.aio server with both services, health and reflection."""
from __future__ import annotations

import collections
import functools
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, cast

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from edgefleet.common.metrics import MetricsServer
from edgefleet.v1 import agent_pb2, agent_pb2_grpc, fleet_pb2, fleet_pb2_grpc

from .artifacts import ArtifactFiles
from .async_store import AsyncStore, open_store
from .audit import AuditLog
from .auth import FLEET_CONTROL_ACCESS, Role
from .control import Deployments, FleetControlServicer
from .convert import deploy_command
from .errors import ConfigError
from .gateway import AgentGatewayServicer
from .hub import Hub
from .interceptors import FleetInterceptor
from .metrics import ControllerMetrics
from .object_rows import ALL_FRAMES, FramePolicy
from .pg.base import is_postgres_url
from .pg.peers import PgPeers
from .presence import Presence, PresenceMonitor
from .replicas import Peers
from .retention import RetentionPolicy, RetentionSweeper
from .rollouts import RolloutOptions, Rollouts
from .signing import SigningKey
from .store import FleetStore, WalCheckpointer
from .tls import ServerTLS

if TYPE_CHECKING:
    from .mqtt_bridge import BridgeConfig
    from .pg.store import PgStore

logger = logging.getLogger(__name__)

AGENT_GATEWAY = agent_pb2.DESCRIPTOR.services_by_name["AgentGateway"].full_name
FLEET_CONTROL = fleet_pb2.DESCRIPTOR.services_by_name["FleetControl"].full_name
HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
SERVICES = (AGENT_GATEWAY, FLEET_CONTROL)
KEEPALIVE_POLICY = (("grpc.http2.min_recv_ping_interval_without_data_ms", 20_000),
                    ("grpc.keepalive_permit_without_calls", 1))
"""Accept the agents' keepalive pings (every 30 s, agent.replicas.KEEPALIVE) even on a quiet connection;
gRPC's default expects at most one every 5 minutes and closes the connection of a client that pings more."""


class Controller:
    """`start()` binds and serves; `stop()` goes NOT_SERVING, drains with grace, closes the db.

    Plaintext unless `tls` is given. Either way every call but Enroll, health and reflection
    needs a bearer token of the right role (see `fleet.interceptors`). With `metrics_listen`
    (HOST:PORT, port 0 picks one: `metrics_port`), Prometheus scrapes `GET /metrics` there.
    """

    def __init__(
        self,
        db_path: Path | str,
        listen: str = "127.0.0.1:50051",
        heartbeat_interval_s: int = 5,
        *,
        stale_after_s: float | None = None,
        offline_after_s: float | None = None,
        tls: ServerTLS | None = None,
        mqtt: BridgeConfig | None = None,
        rollout_options: RolloutOptions | None = None,
        metrics_listen: str | None = None,
        retention: RetentionPolicy | None = None,
        retention_every_s: float = 3600.0,
        store_frames: FramePolicy = ALL_FRAMES,
    ):
        self.db_path = db_path
        self.listen = listen
        self.heartbeat_interval_s = heartbeat_interval_s
        self.presence = Presence.for_heartbeat(heartbeat_interval_s, stale_after_s, offline_after_s)
        self.tls = tls
        self.store = open_store(str(db_path), autocheckpoint=False)
        self.store.frames_policy = store_frames  # which frames become rows (objects and counts always do)
        self.checkpointer = WalCheckpointer(db_path) if isinstance(self.store, FleetStore) else None
        self.db = AsyncStore(self.store)
        self.metrics = ControllerMetrics(self._device_statuses)
        try:
            self.metrics_server = MetricsServer(self.metrics.registry, metrics_listen) if metrics_listen else None
        except ValueError as err:
            raise ConfigError(f"metrics_listen: {err}") from err
        self.metrics_port: int | None = None
        self.peers = PgPeers(str(db_path)) if is_postgres_url(str(db_path)) else Peers()
        self.hub = Hub(self.metrics, self.peers)
        self.health = health.aio.HealthServicer()
        self.monitor = PresenceMonitor(self.db, self.hub, self.presence)
        self._setup_deployments(rollout_options or RolloutOptions())
        self.retention = RetentionSweeper(self.db, retention or RetentionPolicy(), retention_every_s)
        self.server: grpc.aio.Server | None = None
        self.port: int | None = None
        self.bridge = None
        if mqtt is not None:
            from .mqtt_bridge import MqttBridge

            upsert = functools.partial(self.db.submit, self.db.store.upsert_mqtt_device)
            self.bridge = MqttBridge.from_config(upsert, mqtt)

    def _setup_deployments(self, options: RolloutOptions) -> None:
        """Beside a SQLite file, the signing key and artifacts live next to it. On PostgreSQL every replica
        must sign with the same key (--signing-key, one file for all), and artifact bytes live in the
        database, each replica caching them under --artifacts-dir (default ~/.cache/edgefleet/artifacts)."""
        self.rollout_options = options
        files: ArtifactFiles
        if isinstance(self.peers, PgPeers):
            if options.signing_key is None:
                raise ConfigError("--signing-key is required with a PostgreSQL database: every controller replica "
                                  "must sign artifacts with the same Ed25519 key (a missing file is created at the "
                                  "first start: give that same file to every replica)")
            self.signing_key = SigningKey.load_or_create(options.signing_key)
            from .pg.artifacts import DatabaseBackedArtifactFiles

            cache = options.artifacts_dir or Path.home() / ".cache" / "edgefleet" / "artifacts"
            files = DatabaseBackedArtifactFiles(cache, cast("PgStore", self.store))
        else:
            home = Path(self.db_path).resolve().parent
            self.signing_key = SigningKey.load_or_create(options.signing_key or home / "signing-key.pem")
            files = ArtifactFiles(options.artifacts_dir or home / "artifacts")
        self.rollouts = Rollouts(self.db, self.hub, deploy_command, device_timeout_s=options.device_timeout_s,
                                 on_change=self.metrics.set_rollouts)
        self.deployments = Deployments(
            files, self.signing_key, self.rollouts,
            max_artifact_bytes=options.max_artifact_mb << 20, gate_min_agreement=options.gate_min_agreement,
            gate_window_s=options.gate_window_s,
        )

    async def start(self) -> int:
        policy = {
            AGENT_GATEWAY: Role.DEVICE,
            FLEET_CONTROL: Role.OPERATOR,
            HEALTH: None,
            reflection.SERVICE_NAME: None,
        }
        public = frozenset({f"/{AGENT_GATEWAY}/Enroll"})  # the enrollment key in the request is the credential
        access = {f"/{FLEET_CONTROL}/{name}": call for name, call in FLEET_CONTROL_ACCESS.items()}
        interceptor = FleetInterceptor(self.db.principal_for_token, policy, public, access,
                                       AuditLog(self.db, self.hub.note))
        self.server = grpc.aio.server(interceptors=[interceptor], options=KEEPALIVE_POLICY)
        gateway = AgentGatewayServicer(self.db, self.hub, self.heartbeat_interval_s, self.metrics,
                                       rollouts=self.rollouts, files=self.deployments.files,
                                       public_key=self.signing_key.public_bytes,
                                       fetch_streams=self.rollout_options.fetch_streams,
                                       fetch_stream_s=self.rollout_options.fetch_stream_s)
        self.rollouts.contact = gateway.fetch_contact
        agent_pb2_grpc.add_AgentGatewayServicer_to_server(gateway, self.server)
        fleet_pb2_grpc.add_FleetControlServicer_to_server(
            FleetControlServicer(self.db, self.hub, self.presence, self.deployments), self.server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection((*SERVICES, HEALTH, reflection.SERVICE_NAME), self.server)
        if self.tls:
            self.port = self.server.add_secure_port(self.listen, self.tls.credentials())
        else:
            self.port = self.server.add_insecure_port(self.listen)
        if not self.port:
            raise OSError(f"cannot listen on {self.listen}")
        if self.metrics_server is not None:
            self.metrics_port = self.metrics_server.start()  # first: a taken port fails before serving
        self.db.ingest.start()  # before serving: the first PublishDetections needs it
        await self.server.start()
        self.monitor.start()
        if self.checkpointer is not None:
            self.checkpointer.start()
        self.peers.address = f"{self.listen.rsplit(':', 1)[0]}:{self.port}"
        self.peers.on_leader(self._lead)
        await self.peers.start(self.hub, self.db)
        if self.bridge is not None:
            self.bridge.start()
        for service in ("", *SERVICES):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        transport = "plaintext" if not self.tls else "mutual TLS" if self.tls.client_ca else "TLS"
        logger.info("controller listening on %s (port %d, %s), db %s",
                    self.listen, self.port, transport, self.db_path)
        return self.port

    async def _lead(self, leader: bool) -> None:
        """The leader's jobs: rollout timeouts and retention run on one replica at a time."""
        if leader:
            await self.rollouts.start()
            self.retention.start()
        else:
            await self.retention.stop()
            await self.rollouts.stop()

    def _device_statuses(self) -> dict[str, int]:
        """Devices per status name; runs on the scraping thread, reads on the store's thread."""
        last_seen = self.db.submit(self.db.store.last_seen_by_device).result(timeout=5)
        now = time.time()
        return dict(collections.Counter(self.presence.status(seen, now).value for seen in last_seen.values()))

    async def wait(self) -> None:
        """Until the server terminates; at once when it is not serving (not started, or stopped)."""
        if self.server is not None:
            await self.server.wait_for_termination()

    async def stop(self, grace: float = 2.0) -> None:
        if self.server is None:
            return
        await self.health.enter_graceful_shutdown()
        if self.metrics_server is not None:
            self.metrics_server.stop()
        if self.bridge is not None:
            self.bridge.stop()
        await self.server.stop(grace)
        self.server = None
        await self.db.ingest.stop()  # commits what the drained streams queued
        await self.peers.stop()  # the leader's jobs (rollout timeouts, retention) stop with it
        await self.monitor.stop()
        self.db.close()
        if self.checkpointer is not None:
            self.checkpointer.stop()
        logger.info("controller stopped")
