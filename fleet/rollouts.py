"""Staged rollouts of a model artifact: canary, then waves, each gated on the devices' own verdicts.

    create ──▶ RUNNING: wave 0 (the canary) gets DeployArtifact over its Sessions
                 │ every device of the wave reports ACTIVE          ──▶ next wave (unless PAUSED)
                 │ a canary device FAILED or ROLLED_BACK            ──▶ FAILED (halts; later waves never start)
                 │ failures in later waves > --max-failures         ──▶ FAILED
                 │ the last wave passed                             ──▶ SUCCEEDED
               pause/resume: a paused rollout lets the running wave finish but starts no new one
               abort ──▶ ABORTED

When a rollout ends FAILED or ABORTED, the devices of its started waves that have not switched
get CancelDeployment (the agent stops the download, build or shadow test and never swaps to it),
and with --on-failure rollback (the default) those that switched get Rollback: they go back to
their previous engine and report ROLLED_BACK. Until they do, their reason says "rolling back".
A device that switches after the end anyway (its cancel crossed its swap) is sent Rollback when
its ACTIVE arrives; one that was away is sent it when its Session opens again, unless a newer
rollout has reached it since. With --on-failure halt they keep the new engine.

A device decides on its own whether the new engine is good (`agent.engines`: load, warm-up,
shadow gate against the running engine on live frames); the controller only counts verdicts,
and a device that says nothing for `device_timeout_s` counts as failed. A device downloading
the artifact, or waiting for a download slot (fleet.gateway FetchArtifact), is not silent: a
large wave may queue devices for longer than the timeout before they send a byte.

Everything is in the store: a controller restarted mid-rollout reloads the rollouts that were
running, re-arms the timeouts, and re-sends DeployArtifact to each device of the current wave
without a final state when its Session opens (deploys are idempotent on the device).
"""
from __future__ import annotations

import asyncio
import logging
import math
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import FailedPrecondition, InvalidArgument, NotFound
from .hub import Command, Hub
from .rollout_store import (
    ON_FAILURE_POLICIES,
    SKIPPED_WAVE,
    ArtifactRecord,
    DeployState,
    RolloutDeviceRecord,
    RolloutRecord,
    RolloutSpec,
    RolloutState,
)
from .selectors import combined
from .store import MQTT_HARDWARE_PREFIX, DeviceRecord

logger = logging.getLogger(__name__)

IN_FLIGHT = (RolloutState.RUNNING, RolloutState.PAUSED)
ENDED_BADLY = (RolloutState.FAILED, RolloutState.ABORTED)
ALREADY_RUNNING = "already running this artifact"
"""The reason of an agent's ACTIVE when it ran the artifact before the rollout: nothing to roll back."""
ROLLING_BACK = "rolling back"
"""How a switched device's reason starts once the controller sent it Rollback, until it reports."""


PAST = {"pause": "paused", "resume": "resumed", "abort": "aborted"}


@dataclass(frozen=True)
class RolloutOptions:
    """The controller's artifact and rollout settings. Paths left None sit beside the database:
    `<db dir>/artifacts/` and `<db dir>/signing-key.pem`."""
    artifacts_dir: Path | None = None
    signing_key: Path | None = None
    device_timeout_s: float = 900.0
    gate_min_agreement: float = 0.8
    gate_window_s: int = 20
    max_artifact_mb: int = 2048
    fetch_streams: int = 32
    """FetchArtifact streams served at once; more wait their turn, first come first served."""
    fetch_stream_s: float = 15.0
    """A FetchArtifact stream ends after this long and the device resumes from where it got (the
    end of its turn): a slow device cannot hold a slot for its whole download."""


@dataclass(frozen=True)
class Requirements:
    """What an artifact needs of a device (from its manifest)."""
    format: str
    tensorrt_version: str = ""
    gpu_compute_capability: str = ""
    runtime: str = ""
    """The manifest's `labels.runtime` (onnxruntime, openvino, ncnn); "" : the format's own
    (RUNTIME_OF_FORMAT: an OpenVINO IR needs openvino, an NCNN model ncnn)."""


RUNTIME_OF_FORMAT = {"onnx": "onnxruntime", "openvino-ir": "openvino", "ncnn": "ncnn"}


def device_runtimes(profile: dict) -> set[str]:
    """The CPU runtimes a device reports: onnxruntime when it has any provider, and the probe's
    `runtimes` (in the wire profile's extra map, comma separated)."""
    extra = profile.get("extra", {}) or {}
    found = {r for r in str(extra.get("runtimes", "")).split(",") if r}
    if profile.get("onnxruntime_providers"):
        found.add("onnxruntime")
    return found


@dataclass(frozen=True)
class StatusReport:
    """A device's DeploymentStatus, as the servicer hands it over."""
    rollout_id: str
    artifact_sha256: str
    state: DeployState
    progress: float = 0.0
    reason: str = ""
    gate_metrics: dict[str, float] | None = None


def incompatibility(requirements: Requirements, device: DeviceRecord) -> str:
    """Why the device cannot run the artifact; "" when it can."""
    if device.hardware_id.startswith(MQTT_HARDWARE_PREFIX):
        return "MQTT-only device: it has no Session to receive an engine"
    profile = device.profile
    runtime = requirements.runtime or RUNTIME_OF_FORMAT.get(requirements.format, "")
    if runtime:
        return "" if runtime in device_runtimes(profile) else f"no {runtime} on the device"
    if requirements.format == "tensorrt-engine":
        have = profile.get("tensorrt_version", "")
        if not have:
            return "no TensorRT on the device"
        if _major_minor(have) != _major_minor(requirements.tensorrt_version):
            return f"engine built for TensorRT {requirements.tensorrt_version}, the device has {have}"
        if profile.get("gpu_compute_capability", "") != requirements.gpu_compute_capability:
            return (f"engine built for compute capability {requirements.gpu_compute_capability}, the device's GPU "
                    f"is {profile.get('gpu_compute_capability') or 'absent'}")
        return ""
    if requirements.format == "ultralytics-pt":
        return "" if "ultralytics" in profile.get("extra", {}) else "no ultralytics on the device"
    return f"unknown artifact format {requirements.format!r}"


def _major_minor(version: str) -> tuple[str, ...]:
    return tuple(re.split(r"[.+-]", version)[:2])


def plan_waves(device_ids: list[str], canary: int, waves_percent: tuple[int, ...]) -> list[list[str]]:
    """Split the targets into the canary wave and then cumulative percentages of all targets.

    Ten devices, canary 1, waves 10,50,100: [1 device], [4 devices] (up to 50 %), [5 devices];
    a wave that would be empty (10 % of ten is the canary already) is left out.
    """
    waves = [device_ids[:canary]] if device_ids else []
    assigned = len(waves[0]) if waves else 0
    for percent in waves_percent:
        upto = max(assigned, math.ceil(percent * len(device_ids) / 100))
        if upto > assigned:
            waves.append(device_ids[assigned:upto])
            assigned = upto
    return waves


def cancel_command(rollout: RolloutRecord) -> Command:
    return Command("cancel_deployment", {"rollout_id": rollout.rollout_id,
                                         "reason": f"rollout {rollout.rollout_id} {rollout.state.name.lower()}"})


def rollback_command(rollout: RolloutRecord) -> Command:
    return Command("rollback", {"reason": f"rollout {rollout.rollout_id} {rollout.state.name.lower()} "
                                          "(--on-failure rollback)"})


def state_text(state: DeployState) -> str:
    """A device's state in words: "pending" before it started, "shadow testing", "rolled back"."""
    return "pending" if state == DeployState.WAITING else state.name.lower().replace("_", " ")


def wave_counts(rollout: RolloutRecord, index: int) -> tuple[int, int]:
    """(succeeded, failed) of a wave: devices ACTIVE, and devices FAILED or ROLLED_BACK."""
    devices = rollout.in_wave(index)
    return (sum(1 for d in devices if d.state == DeployState.ACTIVE),
            sum(1 for d in devices if d.state in (DeployState.FAILED, DeployState.ROLLED_BACK)))


def wave_state(rollout: RolloutRecord, index: int) -> RolloutState:
    """A wave's state, as its counts say: PENDING before it started (also when the rollout ended
    before it), the rollout's own state while some of its devices are at work, then SUCCEEDED
    without failures, FAILED with failures that failed the rollout (or the canary's)."""
    if index > rollout.wave:
        return RolloutState.PENDING
    succeeded, failed = wave_counts(rollout, index)
    if succeeded + failed < len(rollout.in_wave(index)):
        return rollout.state
    if not failed:
        return RolloutState.SUCCEEDED
    return RolloutState.FAILED if index == 0 or rollout.state in ENDED_BADLY else RolloutState.SUCCEEDED


def validate_spec(spec: RolloutSpec) -> None:
    if spec.canary < 1:
        raise InvalidArgument(f"canary must be >= 1 device, got {spec.canary}")
    waves = spec.waves_percent
    if not waves or any(not 1 <= w <= 100 for w in waves) or list(waves) != sorted(set(waves)):
        raise InvalidArgument(f"waves_percent must rise strictly within 1..100, got {list(waves)}")
    if waves[-1] != 100:
        raise InvalidArgument(f"the last wave must reach 100 %, got {list(waves)}")
    if not 0 <= spec.gate_fps_ratio <= 10 or math.isnan(spec.gate_fps_ratio):
        raise InvalidArgument(f"gate_fps_ratio must be within 0..10, got {spec.gate_fps_ratio}")
    if not 0 <= spec.gate_min_agreement <= 1:
        raise InvalidArgument(f"gate_min_agreement must be within 0..1, got {spec.gate_min_agreement}")
    if spec.max_failures < 0:
        raise InvalidArgument(f"max_failures must be >= 0, got {spec.max_failures}")
    if spec.on_failure not in ON_FAILURE_POLICIES:
        raise InvalidArgument(f"on_failure must be one of {', '.join(ON_FAILURE_POLICIES)}, got {spec.on_failure!r}")


class Rollouts:
    """The rollout state machine, on the controller's event loop. `deploy_command(rollout, artifact)`
    builds the DeployArtifact command (protobuf stays in fleet.convert); `on_change(counts)` gets the
    number of rollouts in each state after every change (the metrics gauge). `contact(device_id)`
    is when the controller last heard from a device other than by a status report (now, while a
    download of it is open; set by the server to the gateway's `fetch_contact`)."""

    def __init__(self, db, hub: Hub, deploy_command, *, device_timeout_s: float = 900.0,
                 check_every_s: float = 1.0, on_change=None):
        self.db = db
        self.hub = hub
        self.deploy_command = deploy_command
        self.device_timeout_s = device_timeout_s
        self.check_every_s = check_every_s
        self.on_change = on_change
        self.contact: Callable[[str], float] = lambda device_id: 0.0
        # One transition at a time: statuses, timeouts and operators interleave, on this replica and others.
        self._lock = hub.peers.lock
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        running = await self.db.list_rollouts(IN_FLIGHT)
        for rollout in running:
            logger.info("rollout %s continues at wave %d/%d (%s)", rollout.rollout_id, rollout.wave + 1,
                        rollout.waves, rollout.state.name.lower())
        await self._changed()
        self._task = asyncio.create_task(self._watch_timeouts(), name="rollout-timeouts")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    # ---- operators ----

    async def create(self, artifact_sha256: str, spec: RolloutSpec, requirements: Requirements) -> RolloutRecord:
        validate_spec(spec)
        await self.db.get_artifact(artifact_sha256)  # NotFound before anything is written
        selector = combined(spec.selector, spec.select)
        devices = await self.db.devices_matching(selector)
        if not devices:
            raise FailedPrecondition(f"no device matches the selector {str(selector) or '(all)'}")
        skipped = {d.device_id: incompatibility(requirements, d) for d in devices}
        targets = sorted((d.device_id for d in devices if not skipped[d.device_id]),
                         key=lambda i: (not self.hub.connected(i), i))  # connected devices make the canary
        if not targets:
            reasons = "; ".join(f"{i}: {r}" for i, r in sorted(skipped.items())[:3])
            reasons += f"; and {len(skipped) - 3} more" if len(skipped) > 3 else ""
            raise FailedPrecondition(f"no selected device can run this {requirements.format} artifact ({reasons})")
        now = time.time()
        records = [RolloutDeviceRecord(i, wave, updated=now)
                   for wave, ids in enumerate(plan_waves(targets, spec.canary, spec.waves_percent)) for i in ids]
        records += [RolloutDeviceRecord(i, SKIPPED_WAVE, reason=f"skipped: {r}", updated=now)
                    for i, r in sorted(skipped.items()) if r]
        rollout = RolloutRecord(f"ro-{uuid.uuid4().hex[:8]}", artifact_sha256, RolloutState.RUNNING, spec, 0,
                                now, now, devices=records)
        async with self._lock():
            rollout = await self.db.insert_rollout(rollout)
            skipped_n = sum(1 for d in rollout.devices if d.skipped)
            await self._event(rollout, f"rollout {rollout.rollout_id} of {artifact_sha256[:12]} created: "
                                       f"{len(targets)} device(s) in {rollout.waves} wave(s)"
                                       + (f", {skipped_n} skipped as incompatible" if skipped_n else ""))
            await self._start_wave(rollout, 0)
            return await self.db.get_rollout(rollout.rollout_id)

    async def pause(self, rollout_id: str, reason: str = "") -> RolloutRecord:
        return await self._operator(rollout_id, "pause", (RolloutState.RUNNING,), RolloutState.PAUSED, reason)

    async def resume(self, rollout_id: str, reason: str = "") -> RolloutRecord:
        rollout_id = (await self._operator(rollout_id, "resume", (RolloutState.PAUSED,), RolloutState.RUNNING,
                                           reason)).rollout_id
        async with self._lock():
            await self._advance(rollout_id)
        return await self.db.get_rollout(rollout_id)

    async def abort(self, rollout_id: str, reason: str = "") -> RolloutRecord:
        """ABORTED: its devices' deployments are cancelled, and with on_failure "rollback" those that
        switched go back to their previous engine."""
        return await self._operator(rollout_id, "abort", (RolloutState.PENDING, *IN_FLIGHT),
                                    RolloutState.ABORTED, reason)

    async def _operator(self, rollout_id: str, verb: str, allowed: tuple[RolloutState, ...], to: RolloutState,
                        reason: str) -> RolloutRecord:
        """`rollout_id` may be a unique prefix of the id (the store's find_rollout)."""
        async with self._lock():
            rollout = await self.db.find_rollout(rollout_id)
            rollout_id = rollout.rollout_id
            if rollout.state not in allowed:
                raise FailedPrecondition(f"rollout {rollout_id} is {rollout.state.name.lower()}: cannot {verb} it")
            said = f"{PAST[verb]} by an operator" + (f": {reason}" if reason else "")
            if to == RolloutState.ABORTED:
                await self._finish(rollout, to, said)
                return await self.db.get_rollout(rollout_id)
            rollout = await self.db.update_rollout(rollout_id, state=to)
            await self._event(rollout, f"rollout {rollout_id} {said}")
            return rollout

    # ---- devices ----

    async def commands_for(self, device_id: str) -> list[Command]:
        """DeployArtifact for every in-flight rollout whose started wave holds the device and has no
        final word from it yet: sent when its Session opens (it was away, or the controller restarted)."""
        commands = []
        for rollout in await self.db.rollouts_of_device(device_id, IN_FLIGHT):
            device = rollout.device(device_id)
            if 0 <= device.wave <= rollout.wave and not device.state.final:
                commands.append(self.deploy_command(rollout, await self.db.get_artifact(rollout.artifact_sha256)))
        return commands + await self._unfinished_endings(device_id)

    async def _unfinished_endings(self, device_id: str) -> list[Command]:
        """For a device back after a rollout of it failed or was aborted: CancelDeployment when it was
        still at work on it, Rollback when it was sent one and has not answered (only while that
        rollout is the newest that reached the device)."""
        ended = [r for r in await self.db.rollouts_of_device(device_id, ENDED_BADLY)
                 if 0 <= r.device(device_id).wave <= r.wave]
        newest = max((r.created for r in await self.db.rollouts_of_device(device_id, tuple(RolloutState))
                      if 0 <= r.device(device_id).wave <= r.wave), default=0.0)
        commands = []
        for rollout in ended:
            device = rollout.device(device_id)
            if not device.state.final:
                commands.append(cancel_command(rollout))
            elif device.reason.startswith(ROLLING_BACK) and rollout.created >= newest:
                commands.append(rollback_command(rollout))
        return commands

    async def on_status(self, device_id: str, report: StatusReport) -> None:
        async with self._lock():
            try:
                rollout = await self.db.get_rollout(report.rollout_id)
            except NotFound:  # an agent reporting on a rollout this controller never had (another db?)
                logger.warning("%s reports on unknown rollout %r", device_id, report.rollout_id)
                return
            device = rollout.device(device_id)
            if device is None or device.skipped:
                logger.warning("%s reports on rollout %s it is not part of", device_id, rollout.rollout_id)
                return
            changed = report.state != device.state
            device.state, device.updated = report.state, time.time()
            if report.reason or changed:
                device.reason = report.reason
            if report.gate_metrics:
                device.gate_metrics = dict(report.gate_metrics)
            await self.db.update_rollout_device(rollout.rollout_id, device)
            if not changed:
                return
            said = f": {report.reason}" if report.reason else ""  # `device` is in `rollout`: both current
            await self._event(rollout, f"{device_id}: rollout {rollout.rollout_id} wave {device.wave + 1} "
                                       f"{state_text(report.state)}{said}", device_id)
            if report.state == DeployState.ACTIVE and rollout.state in ENDED_BADLY:
                await self._send_back(rollout, [device])  # it switched after the end: its cancel came too late
            elif report.state.final:
                await self._advance(rollout.rollout_id)

    # ---- transitions ----

    async def _start_wave(self, rollout: RolloutRecord, wave: int) -> None:
        now = time.time()
        devices = rollout.in_wave(wave)
        sent = 0
        artifact: ArtifactRecord = await self.db.get_artifact(rollout.artifact_sha256)
        for device in devices:
            device.updated = now  # the timeout counts from the wave's start
            await self.db.update_rollout_device(rollout.rollout_id, device)
            sent += self.hub.send(device.device_id, self.deploy_command(rollout, artifact)) > 0
        rollout = await self.db.update_rollout(rollout.rollout_id, wave=wave)
        await self._event(rollout, f"rollout {rollout.rollout_id}: wave {wave + 1}/{rollout.waves} started on "
                                   f"{len(devices)} device(s) ({sent} connected now, the rest when they connect)")

    async def _advance(self, rollout_id: str) -> None:
        """Fail, finish, or start the next wave, from the devices' states. Holds `_lock`."""
        rollout = await self.db.get_rollout(rollout_id)
        if rollout.state not in IN_FLIGHT:
            return
        failed = [d for d in rollout.devices
                  if d.state in (DeployState.FAILED, DeployState.ROLLED_BACK) and 0 <= d.wave <= rollout.wave]
        canary_failed = [d for d in failed if d.wave == 0]
        if canary_failed:
            first = canary_failed[0]
            await self._finish(rollout, RolloutState.FAILED, f"canary failed on {first.device_id}: {first.reason}")
            return
        if len(failed) > rollout.spec.max_failures:
            await self._finish(rollout, RolloutState.FAILED, f"{len(failed)} device(s) failed, more than "
                                                             f"--max-failures {rollout.spec.max_failures}")
            return
        if not all(d.state.final for d in rollout.in_wave(rollout.wave)):
            return
        if rollout.wave + 1 >= rollout.waves:
            await self._finish(rollout, RolloutState.SUCCEEDED, "")
        elif rollout.state == RolloutState.RUNNING:
            await self._start_wave(rollout, rollout.wave + 1)

    async def _finish(self, rollout: RolloutRecord, state: RolloutState, reason: str) -> None:
        """End the rollout; when it failed or was aborted, cancel what its devices still do for it and,
        with on_failure "rollback", send the devices that switched back (the reason says how many)."""
        started = [d for d in rollout.devices if 0 <= d.wave <= rollout.wave]
        busy = [d for d in started if not d.state.final]
        switched = [d for d in started if d.state == DeployState.ACTIVE and d.reason != ALREADY_RUNNING]
        if state in ENDED_BADLY:
            reason += f"; {len(busy)} device(s) told to stop their deployment" if busy else ""
            if switched and rollout.spec.on_failure == "rollback":
                reason += f"; {len(switched)} device(s) that switched sent back to their previous engine"
            elif switched:
                reason += f"; {len(switched)} device(s) keep the new engine (--on-failure halt)"
        rollout = await self.db.update_rollout(rollout.rollout_id, state=state, reason=reason)
        active = sum(1 for d in rollout.devices if d.state == DeployState.ACTIVE)
        await self._event(rollout, f"rollout {rollout.rollout_id} {state.name.lower()}"
                                   + (f": {reason}" if reason else "") + f" ({active} device(s) on the new engine)")
        if state in ENDED_BADLY:
            for device in busy:
                self.hub.send(device.device_id, cancel_command(rollout))
            await self._send_back(rollout, switched)

    async def _send_back(self, rollout: RolloutRecord, devices: list[RolloutDeviceRecord]) -> None:
        """Rollback to each device (on_failure "rollback"); its reason says so until it reports ROLLED_BACK."""
        devices = [d for d in devices if d.reason != ALREADY_RUNNING]
        if rollout.spec.on_failure != "rollback" or not devices:
            return
        for device in devices:
            sent = self.hub.send(device.device_id, rollback_command(rollout)) > 0
            device.reason = (f"{ROLLING_BACK}: rollout {rollout.state.name.lower()}"
                             + ("" if sent else "; sent when it connects"))
            await self.db.update_rollout_device(rollout.rollout_id, device)
        rollout = await self.db.get_rollout(rollout.rollout_id)
        await self._event(rollout, f"rollout {rollout.rollout_id}: Rollback sent to "
                                   f"{', '.join(d.device_id for d in devices)} (--on-failure rollback)")

    async def _watch_timeouts(self) -> None:
        while True:
            await asyncio.sleep(self.check_every_s)
            try:
                await self.check_timeouts(time.time())
            except Exception:  # noqa: BLE001 - the next round tries again; the server keeps serving
                logger.exception("rollout timeout check failed")

    async def check_timeouts(self, now: float) -> None:
        for rollout in await self.db.list_rollouts(IN_FLIGHT):
            late = [d for d in rollout.in_wave(rollout.wave)
                    if not d.state.final and now - max(d.updated, self.contact(d.device_id)) > self.device_timeout_s]
            for device in late:
                await self.on_status(device.device_id, StatusReport(
                    rollout.rollout_id, rollout.artifact_sha256, DeployState.FAILED,
                    reason=f"no report from the device for {self.device_timeout_s:.0f} s "
                           f"(last state {device.state.name.lower()})"))

    async def _event(self, rollout: RolloutRecord, message: str, device_id: str = "") -> None:
        await self.db.add_event("rollout", message, device_id, rollout.rollout_id)
        logger.info("%s", message)
        self.hub.rollout_changed(rollout, message)
        await self._changed()

    async def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(await self.db.rollout_counts())
