"""Which controller replica the link is connected to: rounds over the endpoints, backoff, and what
the agent logs about connections, switches and failures.

The link (agent.link) is connected to one replica at a time. `Replicas.run` tries the endpoints
of a round (agent.controllers.Rotation: resolved anew, the one lost last at the end) one after
another without waiting; a connection that was accepted and then lost is followed by the
backoff's first delay (a fraction of a second) and a new round, a round that reached nothing by
a growing delay up to the link's `backoff_max_s`. So with another replica up, the agent is on it
well within a few seconds of losing one; with every replica down, it retries no faster than
the backoff allows.
"""
from __future__ import annotations

import asyncio
import logging
import random
import threading
from collections.abc import Awaitable, Callable
from typing import Literal

import grpc

from .controllers import Endpoint, Rotation, parse_controllers

logger = logging.getLogger(__name__)

KEEPALIVE = (("grpc.keepalive_time_ms", 30_000), ("grpc.keepalive_timeout_ms", 10_000),
             ("grpc.keepalive_permit_without_calls", 1), ("grpc.http2.max_pings_without_data", 0))
"""Ping the controller every 30 s of silence and drop the connection after 10 s without an answer:
a link that dies without a FIN or RST (a cellular NAT forgetting its mapping) is otherwise only
noticed when TCP gives up, many minutes later. The controller permits it (fleet.server)."""

CONNECT_TIMEOUT_S = 3.0
"""With other endpoints to try, how long one may take to connect (TCP and TLS) before the link moves
on: a replica gone without refusing (a dead route, a blackholed address) must not keep the agent
from the others. With one endpoint in the round the link waits as long as gRPC tries."""
ACCEPT_TIMEOUT_S = 10.0
"""With other endpoints to try, how long a connected replica may take to accept the Session."""
GRPC_CONNECT_TIMEOUT_S = 20.0
"""gRPC's default time for one connection attempt, kept with a single endpoint."""
PATIENCE_DOUBLINGS = 3
"""Each round that reached nothing doubles both timeouts, up to 2**3 times (24 s, 80 s): a link slow
enough to miss them (a satellite or congested cellular link) still connects at a later round."""


class Backoff:
    """Exponential backoff with jitter: the n-th delay is uniform in [c/2, c], c = min(maximum,
    initial * 2**n) ("equal jitter": never under half the ceiling, so a fleet that lost its
    controller spreads its reconnects without any agent hammering it)."""

    def __init__(self, initial: float = 0.5, maximum: float = 10.0):
        self.initial, self.maximum = initial, maximum
        self.attempt = 0

    def reset(self) -> None:
        self.attempt = 0

    def next_delay(self) -> float:
        ceiling = min(self.maximum, self.initial * (2 ** self.attempt))
        self.attempt += 1
        return random.uniform(ceiling / 2, ceiling)


async def first_set(timeout: float | None, *events: asyncio.Event) -> None:
    """Wait until one of `events` is set, at most `timeout` seconds (None: no limit)."""
    waiters = [asyncio.create_task(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def connect(channel: grpc.aio.Channel, timeout: float | None,
                  stopping: asyncio.Event) -> Literal["ready", "failed", "timeout", "stopped"]:
    """Let `channel` connect: ready, failed (its calls now fail at once, saying why), no answer
    within `timeout` seconds (None: as long as gRPC tries), or `stopping` was set meanwhile."""
    async def settle() -> grpc.ChannelConnectivity:
        state = channel.get_state(try_to_connect=True)
        while state not in (grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.TRANSIENT_FAILURE,
                            grpc.ChannelConnectivity.SHUTDOWN):
            await channel.wait_for_state_change(state)
            state = channel.get_state(try_to_connect=True)
        return state

    settled, stop = asyncio.create_task(settle()), asyncio.create_task(stopping.wait())
    try:
        await asyncio.wait([settled, stop], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        settled.cancel()
        stop.cancel()
    if not settled.cancelled() and settled.done():
        return "ready" if settled.result() == grpc.ChannelConnectivity.READY else "failed"
    return "stopped" if stopping.is_set() else "timeout"


def describe(err: grpc.aio.AioRpcError) -> str:
    return f"{err.code().name}: {err.details()}"


class Replicas:
    """The controller setting's endpoints, how to dial them (`channel`: TLS with `credentials`, or
    plaintext), the one connected to now (`endpoint`, None: none), and `connected`, set while a
    replica has accepted the Session. `last_error` says why the last connection was lost or the
    last attempt failed ("" while connected)."""

    def __init__(self, controller: str, backoff_max_s: float, credentials: grpc.ChannelCredentials | None = None):
        self.controller = controller
        self.credentials = credentials
        self.rotation = Rotation(parse_controllers(controller))
        self.backoff_max_s = backoff_max_s
        self.endpoint: Endpoint | None = None
        self.connected = threading.Event()
        self.last_error = ""
        self._lost: tuple[Endpoint, str] | None = None  # the connection lost last, and why
        self._failures: dict[str, str] = {}  # the last failure to connect to each endpoint, logged once
        self._alone = True  # the round has a single endpoint: nothing to move on to
        self._failed_rounds = 0  # rounds in a row that reached nothing

    @property
    def several(self) -> bool:
        """Whether there may be another endpoint to move to (several addresses, or a name)."""
        return self.rotation.several

    @property
    def connect_timeout_s(self) -> float | None:
        """How long the endpoint tried now may take to connect (None: as long as gRPC tries)."""
        return None if self._alone else CONNECT_TIMEOUT_S * 2 ** min(self._failed_rounds, PATIENCE_DOUBLINGS)

    @property
    def accept_timeout_s(self) -> float | None:
        """How long the endpoint connected to may take to accept the Session (None: no limit)."""
        return None if self._alone else ACCEPT_TIMEOUT_S * 2 ** min(self._failed_rounds, PATIENCE_DOUBLINGS)

    @property
    def connect_wait_s(self) -> float | None:
        """How long the link waits for a channel to connect: a little past gRPC's own deadline
        (`channel_options`), so that gRPC fails the attempt first and says why."""
        return None if self.connect_timeout_s is None else self.connect_timeout_s + 1.0

    def channel_options(self) -> list[tuple[str, int]]:
        """gRPC's own reconnect backoff, bounded like ours (its defaults, 1 s growing 1.6x up to
        120 s, would pace a channel's connection attempts underneath our retries), and the time one
        attempt may take: gRPC reads it from grpc.min_reconnect_backoff_ms (its minimum connect
        timeout): the round's connect timeout, else gRPC's default of 20 s."""
        maximum_ms = max(1000, int(self.backoff_max_s * 1000))
        return [("grpc.initial_reconnect_backoff_ms", min(500, maximum_ms)),
                ("grpc.min_reconnect_backoff_ms", int(1000 * (self.connect_timeout_s or GRPC_CONNECT_TIMEOUT_S))),
                ("grpc.max_reconnect_backoff_ms", maximum_ms),
                *KEEPALIVE]

    def channel(self, endpoint: Endpoint, api=grpc):
        """A channel to `endpoint` (`api`: grpc, or grpc.aio), pinging it as KEEPALIVE says; TLS
        checks the name the endpoint was resolved from (agent.controllers.Endpoint)."""
        options = [*self.channel_options(), *endpoint.channel_options()]
        return (api.secure_channel(endpoint.target, self.credentials, options=options) if self.credentials
                else api.insecure_channel(endpoint.target, options=options))

    async def run(self, connection: Callable[[Endpoint], Awaitable[bool]],
                  wait_stop: Callable[[float], Awaitable[bool]], stopped: Callable[[], bool]) -> None:
        """Round after round until `stopped()`: `connection(endpoint)` connects and serves until the
        connection is lost, returning whether the Session was accepted; `wait_stop(seconds)` sleeps,
        True when stop was asked meanwhile."""
        backoff = Backoff(maximum=self.backoff_max_s)
        while not stopped():
            endpoints, problems = await asyncio.to_thread(self.rotation.round)
            self._alone = len(endpoints) == 1
            for address, problem in problems:
                self.unreachable(address, problem)
            for endpoint in endpoints:
                if await connection(endpoint):
                    backoff.reset()  # it was connected: the next round starts soon
                    self._failed_rounds = 0
                    break
                if stopped():
                    return
            else:
                self._failed_rounds += 1
            if await wait_stop(backoff.next_delay()):
                return

    def first_endpoint(self) -> Endpoint | None:
        """The endpoint connected to, else the first of a round resolved now (for calls of their own)."""
        return self.endpoint or next(iter(self.rotation.round()[0]), None)

    def on_connected(self, endpoint: Endpoint) -> None:
        lost, self._lost = self._lost, None
        if lost is None:
            logger.info("connected to controller %s", endpoint)
        elif lost[0].target == endpoint.target:
            logger.info("connected to controller %s again", endpoint)
        else:
            logger.warning("connected to controller %s, switched from %s: %s", endpoint, lost[0], lost[1])
        self.rotation.connected(endpoint)
        self.endpoint = endpoint
        self._failures.clear()
        self.last_error = ""
        self.connected.set()

    def on_lost(self, endpoint: Endpoint, reason: str) -> None:
        self._lost = (endpoint, reason)
        self.endpoint = None
        self.last_error = reason
        self.connected.clear()
        logger.warning("lost controller %s: %s; %s", endpoint, reason,
                       "trying the other addresses, this one last" if self.several else "reconnecting")

    def unreachable(self, where: str, message: str) -> None:
        """A failed attempt to connect to `where`: logged once per endpoint until the message changes."""
        if self._failures.get(where) != message:
            logger.warning("controller %s: %s; %s", where, message,
                           "trying the next address, retrying with backoff once each was tried" if self.several
                           else "retrying with backoff")
        self._failures[where] = message
        self.last_error = message
        self.connected.clear()
