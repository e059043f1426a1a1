"""The controller's commands, carried out between ticks on the loop thread, each answered with a
CommandResult (the link queues it; the controller's caller waits for it).

The link's thread only queues them (`Agent.commands`); `apply_commands` takes what arrived since the
last tick and hands each to its part: a deployment, its cancel and a rollback to the engine manager
(agent.engines, which answers when its worker is done), a desired-configuration document to
agent.desired, a plan override to the supervisor, a restart to agent.restart, a CaptureFrame to
`FrameCaptures`; a ping is answered at once, and a command this agent does not know is refused, naming it.

CaptureFrame answers with the stream's latest frame (the loop's `FrameLoop.latest`) drawn with its
tracked boxes, labels, scores and track ids and with that stream's zones (their occupancy now) and
lines (their crossings since the agent started, in and out), downscaled to `max_width` (0:
DEFAULT_CAPTURE_WIDTH), as a JPEG of at most CAPTURE_MAX_BYTES in the answer's `snapshot` (kind "live"):
its quality lowered until it fits, and when even the lowest does not (a frame of noise), its width halved.
The stream is checked on the loop thread and refused with the reason (an unknown stream, naming the
known ones; one with no frame yet; a served stream, whose frames the agent does not keep); the drawing
and encoding run on a worker thread of their own, which sends the answer when done, so the loop never
waits for a JPEG. At most MAX_PENDING_CAPTURES wait there; more are refused as busy.
"""
from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from edgefleet.adaptive.errors import LadderError
from edgefleet.common.annotate import Box, LineShape, ZoneShape, encode_jpeg, render
from edgefleet.common.records import SnapshotRecord

from .analytics import TOTALS, Totals
from .desired import ApplyConfig, ConfigStatus, apply_document
from .engines import CancelDeployment, DeployRequest
from .latest import LatestFrame
from .link import AGENT_VERSION
from .messages import CaptureFrame, Ping, Restart, Rollback, SetPlan, Unsupported
from .restart import restart
from .zones import StreamAnalytics

if TYPE_CHECKING:
    from .supervisor import Agent

logger = logging.getLogger(__name__)

DEFAULT_CAPTURE_WIDTH = 640
CAPTURE_MAX_BYTES = 150_000
MIN_CAPTURE_WIDTH = 80
MAX_PENDING_CAPTURES = 4
"""CaptureFrames drawn or waiting to be: a burst beyond this is refused rather than queued behind."""
SERVED_NO_FRAME = "no frame kept for served streams"


def apply_commands(agent: Agent, now: float) -> None:
    """Apply what the controller sent since the last tick (on the loop thread)."""
    while not agent.commands.empty():
        command = agent.commands.get_nowait()
        if isinstance(command, DeployRequest):
            agent.engines.deploy(command)
        elif isinstance(command, CancelDeployment):
            agent.link.send_result(command.command_id, True,
                                   detail=agent.engines.cancel(command.rollout_id, command.reason))
        elif isinstance(command, Rollback):
            agent.engines.rollback(command.command_id, command.reason)
        elif isinstance(command, ApplyConfig):
            apply_config(agent, command)
        elif isinstance(command, CaptureFrame):
            capture_frame(agent, command)
        else:
            _answer(agent, command, now)


def _answer(agent: Agent, command: Ping | SetPlan | Restart | Unsupported, now: float) -> None:
    """The commands answered here at once: ping, a plan override (or why it was refused), restart
    (agent.restart), and those this agent does not know."""
    if isinstance(command, Ping):
        agent.link.send_result(command.command_id, True, detail="pong")
    elif isinstance(command, SetPlan):
        try:
            agent.apply_plan_override(command.override, now)
        except LadderError as err:
            logger.error("plan override %s refused: %s", command.command_id, err)
            agent.link.send_result(command.command_id, False, error=str(err))
            return
        agent.link.send_result(command.command_id, True, detail=agent.plan.reason)
    elif isinstance(command, Restart):
        restart(agent, command)
    else:
        logger.info("command %s (%s) is not supported by this agent", command.command_id, command.action)
        agent.link.send_result(command.command_id, False,
                               error=f"this agent ({AGENT_VERSION}) does not carry out {command.action!r}")


def apply_config(agent: Agent, command: ApplyConfig) -> ConfigStatus:
    """The controller's document, on the loop thread (agent.desired.apply_document): its status goes up
    (what the controller stores), then the command's answer like every command's (what a caller waits for)."""
    status = apply_document(agent, command)
    applied = status.applied_version == command.version
    if applied:
        agent.replan(f"desired config v{command.version} ({status.how})")
    agent.link.send_config(status)
    agent.link.send_result(command.command_id, applied, error="; ".join(status.errors) if not applied else "",
                           detail=status.how if applied else "")
    return status


# ---- CaptureFrame ----

Send = Callable[[str, bool, str, str, SnapshotRecord | None], None]
"""(command_id, ok, error, detail, snapshot): how a capture's answer goes up (`Link.send_result`)."""


@dataclass(frozen=True)
class Capture:
    """What a CaptureFrame draws, gathered on the loop thread."""
    command_id: str
    latest: LatestFrame
    max_width: int
    analytics: StreamAnalytics | None


class FrameCaptures:
    """CaptureFrame's drawing and encoding on a worker thread of its own (`submit`), answered by `send`."""

    def __init__(self, send: Send, totals: Totals | None = TOTALS):
        self._send = send
        self._totals = totals
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="capture")
        self._lock = threading.Lock()
        self._pending = 0

    @property
    def pending(self) -> int:
        """Captures being drawn, waiting to be, or being answered."""
        return self._pending

    def submit(self, capture: Capture) -> bool:
        """Queue the capture; False (nothing queued) when MAX_PENDING_CAPTURES already wait."""
        with self._lock:
            if self._pending >= MAX_PENDING_CAPTURES:
                return False
            self._pending += 1
        try:
            self._pool.submit(self._run, capture)
        except RuntimeError:  # closed: the agent is stopping
            with self._lock:
                self._pending -= 1
            return False
        return True

    def close(self) -> None:
        """Finish what was asked (each a few milliseconds), then stop the worker."""
        self._pool.shutdown(wait=True, cancel_futures=False)

    def _run(self, capture: Capture) -> None:
        try:
            snapshot = live_snapshot(capture, self._totals)
        except Exception as err:  # noqa: BLE001 - any failure is the caller's answer, never the worker's end
            logger.error("capture %s of stream %s failed: %s", capture.command_id, capture.latest.stream_id, err)
            self._send(capture.command_id, False, f"drawing stream {capture.latest.stream_id!r} failed: {err}", "",
                       None)
        else:
            self._send(capture.command_id, True, "", f"{len(snapshot.jpeg)} bytes, frame "
                       f"{capture.latest.frame_index}", snapshot)
        finally:
            with self._lock:
                self._pending -= 1


def live_snapshot(capture: Capture, totals: Totals | None = TOTALS) -> SnapshotRecord:
    """The stream's latest frame drawn and encoded (kind "live"); ValueError when it cannot be."""
    latest = capture.latest
    height, width = latest.image.shape[:2]
    boxes = [Box(xyxy, label, float(score), int(track_id))
             for xyxy, label, score, track_id in zip(latest.xyxy, latest.labels, latest.scores, latest.track_ids)]
    zones, lines = _shapes(latest.stream_id, capture.analytics, width, height, totals)
    max_width = capture.max_width or DEFAULT_CAPTURE_WIDTH
    drawn = render(latest.image, boxes, zones, lines, max_width=max_width)
    return SnapshotRecord(latest.stream_id, "", "live", "", latest.capture_time, _fit(drawn))


def _fit(drawn: np.ndarray) -> bytes:
    """The picture as a JPEG under CAPTURE_MAX_BYTES: at its width when some quality fits, else at half
    the width, and so on (a frame of pure noise); ValueError below MIN_CAPTURE_WIDTH."""
    width = drawn.shape[1]
    while True:
        try:
            return encode_jpeg(drawn, max_width=width, max_bytes=CAPTURE_MAX_BYTES)
        except ValueError:
            if width // 2 < MIN_CAPTURE_WIDTH:
                raise
            width //= 2


def _shapes(stream_id: str, analytics: StreamAnalytics | None, width: int, height: int,
            totals: Totals | None) -> tuple[list[ZoneShape], list[LineShape]]:
    """The stream's zones with their occupancy now and its lines with their crossings since start."""
    if analytics is None:
        return [], []
    try:
        zones, lines = analytics.geometry(width, height)
    except ValueError:  # pixel coordinates outside this frame: the loop refuses them (and stops) too
        return [], []
    crossings, _, occupancy = totals.snapshot() if totals is not None else ({}, {}, {})
    directions: Counter[tuple[str, str]] = Counter()
    for (stream, line, _label, direction), count in crossings.items():
        if stream == stream_id:
            directions[(line, direction)] += count
    return ([ZoneShape(z.name, z.polygon, occupancy.get((stream_id, z.name), 0)) for z in zones],
            [LineShape(ln.name, ln.points, f"in {directions[(ln.name, 'in')]} out {directions[(ln.name, 'out')]}")
             for ln in lines])


def capture_frame(agent: Agent, command: CaptureFrame) -> None:
    """Check the stream here (on the loop thread) and hand the drawing to the agent's FrameCaptures,
    or refuse with the reason."""
    latest, error = _latest(agent, command.stream_id)
    if latest is None:
        logger.info("capture %s refused: %s", command.command_id, error)
        agent.link.send_result(command.command_id, False, error=error)
        return
    capture = Capture(command.command_id, latest, command.max_width, agent.options.analytics.get(latest.stream_id))
    if not agent.captures.submit(capture):
        agent.link.send_result(command.command_id, False, error=f"busy: {MAX_PENDING_CAPTURES} captures are "
                                                                 "being drawn; ask again")


def _latest(agent: Agent, stream_id: str) -> tuple[LatestFrame | None, str]:
    """The stream's latest frame, or why there is none."""
    local = [s.stream_id for s in agent.loop.streams]
    served = {h.stream_id for feed in agent.loop.feeds for h in feed.stream_health()}
    wanted = stream_id or (local[0] if local else "")
    if not wanted:
        return None, f"this agent has no local stream to capture ({SERVED_NO_FRAME})"
    if wanted not in local:
        if wanted in served:
            return None, f"stream {wanted!r} is served (edge-agent serve): {SERVED_NO_FRAME}"
        known = ", ".join(local) or "none"
        return None, f"unknown stream {wanted!r}: this agent's local streams are {known}"
    latest = agent.loop.latest.get(wanted)
    if latest is None:
        return None, f"stream {wanted!r} has no frame yet"
    return latest, ""
