"""FleetControl: the service operators, the TUI and integrations call."""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import grpc

from edgefleet.v1 import fleet_pb2, fleet_pb2_grpc, types_pb2

from . import audit, detection_queries, objects_api
from .artifacts import SHA256, ArtifactFiles, bundle_check
from .commands import Commands
from .convert import (
    artifact_to_pb,
    device_config_to_pb,
    device_to_pb,
    fleet_change_to_pb,
    frame_to_pb,
    requirements,
    rollout_spec,
    rollout_to_pb,
    timestamp,
    to_dict,
)
from .detection_store import FrameRecord
from .errors import FailedPrecondition, InvalidArgument
from .hub import Hub
from .presence import Presence
from .rollout_store import ArtifactRecord
from .rollouts import Rollouts
from .selectors import combined
from .signing import SigningKey
from .store import DeviceRecord
from .twin import Twin
from .twin_store import config_view

logger = logging.getLogger(__name__)

MAX_LIST_LIMIT = 10_000
WATCH_QUEUE_SIZE = 256
ARTIFACT_FORMATS = ("onnx", "tensorrt-engine", "ultralytics-pt", "openvino-ir", "ncnn")


@dataclass(frozen=True)
class Deployments:
    """What the artifact and rollout RPCs need: where bytes go, the signing key, the state machine,
    and the gate settings a CreateRolloutRequest cannot carry (the controller's defaults)."""

    files: ArtifactFiles
    key: SigningKey
    rollouts: Rollouts
    max_artifact_bytes: int = 2 << 30
    gate_min_agreement: float = 0.8
    gate_window_s: int = 20


class FleetControlServicer(fleet_pb2_grpc.FleetControlServicer):
    def __init__(self, db, hub: Hub, presence: Presence, deployments: Deployments | None = None):
        self.db = db
        self.hub = hub
        self.twin = Twin(db, hub)
        self.presence = presence
        self.deployments = deployments
        self.commands = Commands(db, hub)

    def _device_pb(self, record: DeviceRecord) -> fleet_pb2.Device:
        status = self.presence.status(record.last_seen)
        return device_to_pb(record, status, self.hub.connected(record.device_id))

    # ---- devices ----

    async def ListDevices(self, request, context) -> fleet_pb2.ListDevicesResponse:
        """Every device the status and the selector (`selector` map and `select` expression) both match."""
        selector = combined(request.selector, request.select)
        devices = [self._device_pb(record) for record in await self.db.devices_matching(selector)]
        if request.status:
            devices = [device for device in devices if device.status == request.status]
        return fleet_pb2.ListDevicesResponse(devices=devices)

    async def SetDeviceLabels(self, request, context) -> fleet_pb2.Device:
        """Set and remove the device's operator labels (they win over its own); a fleet event says what changed."""
        if not request.device_id:
            raise InvalidArgument("device_id is empty")
        if not request.set and not request.remove:
            raise InvalidArgument("nothing to change: give labels to set, keys to remove, or both")
        device = await self.db.set_operator_labels(request.device_id, dict(request.set), list(request.remove))
        what = ", ".join([f"{k}={v}" for k, v in sorted(request.set.items())] + [f"-{k}" for k in request.remove])
        await self.db.add_event("labels", f"operator labels of {device.device_id}: {what}", device.device_id)
        self.hub.device_changed(device, f"labels of {device.hostname} ({device.device_id}) changed: {what}")
        logger.info("operator labels of %s: %s", device.device_id, what)
        return self._device_pb(device)

    async def GetDevice(self, request, context) -> fleet_pb2.Device:
        if not request.device_id:
            raise InvalidArgument("device_id is empty")
        return self._device_pb(await self.db.get_device(request.device_id))

    async def WatchFleet(self, request, context):
        """Every device once, then each change as it happens.

        The watcher is registered before the snapshot is read, so a change that lands in
        between is sent (after the snapshot) rather than lost.
        """
        watcher = self.hub.fleet.watch(maxsize=WATCH_QUEUE_SIZE)
        try:
            now = timestamp(time.time())
            for record in await self.db.list_devices():
                yield fleet_pb2.FleetEvent(time=now, device=self._device_pb(record))
            while True:
                change = await watcher.queue.get()
                for event in fleet_change_to_pb(change, self.presence):
                    event.dropped = watcher.dropped
                    yield event
        finally:
            self.hub.fleet.unwatch(watcher)

    async def SetPlanOverride(self, request, context) -> fleet_pb2.Device:
        """Store the override and send it down every open Session of the device.

        A device that is not connected gets it when its next Session opens.
        """
        if not request.device_id:
            raise InvalidArgument("device_id is empty")
        override = _plan_override(request)
        previous = (await self.db.get_device(request.device_id)).plan_override
        device = await self.db.set_plan_override(request.device_id, override)
        what = "cleared" if not override else "set"
        logger.info("plan override for %s %s", device.device_id, what)
        self.hub.device_changed(device, f"plan override for {device.hostname} ({device.device_id}) {what}")
        await self.commands.deliver_plan(device, override, previous)
        return self._device_pb(device)

    async def SetDesiredConfig(self, request, context) -> fleet_pb2.SetDesiredConfigResponse:
        """Store the next version of a device's (or a selector's devices') configuration and send it (fleet.twin)."""
        return await self.twin.set_request(request)

    async def GetDeviceConfig(self, request, context) -> fleet_pb2.DeviceConfig:
        """Desired vs reported: the document, what the device last said it runs or refused, in_sync."""
        if not request.device_id:
            raise InvalidArgument("device_id is empty")
        return device_config_to_pb(config_view(await self.db.get_device(request.device_id)))

    async def SendCommand(self, request, context) -> fleet_pb2.SendCommandResponse:
        """Restart, roll back, or ping a device (or a selector's devices) and wait for each one's answer."""
        return await self.commands.send(request)

    async def RevokeDevice(self, request, context) -> fleet_pb2.Device:
        """Refuse the device's token from now on and end its open streams; its data stays (fleet.commands)."""
        return self._device_pb(await self.commands.revoke(request.device_id, request.reason))

    async def RemoveDevice(self, request, context) -> fleet_pb2.RemoveDeviceResponse:
        """Delete a revoked or disconnected device; with purge_data its detections, health and events too."""
        deleted = await self.commands.remove(request.device_id, request.purge_data)
        return fleet_pb2.RemoveDeviceResponse(device_id=request.device_id, detections_deleted=deleted)

    async def ListAudit(self, request, context) -> fleet_pb2.ListAuditResponse:
        return await audit.list_audit(self.db, request)

    # ---- detections ----

    async def ListDetections(self, request, context) -> fleet_pb2.ListDetectionsResponse:
        """One device's, a selector's or every device's records, by time range and label (fleet.detection_queries)."""
        return await detection_queries.list_detections(self.db, request)

    async def WatchDetections(self, request, context):
        if request.min_score < 0 or request.min_score > 1:
            raise InvalidArgument(f"min_score must be within 0..1, got {request.min_score}")
        labels = set(request.labels)
        devices = detection_queries.DeviceSet(self.db, detection_queries.request_selector(request))
        await devices.refresh()

        def accepts(frame: FrameRecord) -> FrameRecord | None:
            if request.device_id and frame.device_id != request.device_id or not devices.admits(frame.device_id):
                return None
            if request.stream_id and frame.stream_id != request.stream_id:
                return None
            if not labels and not request.min_score:
                return frame
            objects = [o for o in frame.objects
                       if (not labels or o.label in labels) and o.score >= request.min_score]
            if not objects:
                return None
            return FrameRecord(frame.stream_id, frame.sequence, frame.frame_index, frame.capture_time,
                               objects, frame.device_id)

        watcher = self.hub.detections.watch(accepts, maxsize=WATCH_QUEUE_SIZE)
        try:
            while True:
                try:
                    frame = await asyncio.wait_for(watcher.queue.get(), detection_queries.DEVICE_SET_REFRESH_S)
                except TimeoutError:
                    await devices.refresh()
                    continue
                yield fleet_pb2.WatchDetectionsResponse(frame=frame_to_pb(frame), dropped=watcher.dropped)
                await devices.refresh()
        finally:
            self.hub.detections.unwatch(watcher)

    # ---- objects, counts, pictures (fleet.objects_api) ----

    async def ListObjects(self, request, context) -> fleet_pb2.ListObjectsResponse:
        """Tracked objects, newest first, by device or selector, stream, label, zone, line, time; paged."""
        return await objects_api.list_objects(self.db, request)

    async def CountObjects(self, request, context) -> fleet_pb2.CountObjectsResponse:
        """Zone entries and line crossings summed by time bucket and the request's grouping, with their total."""
        return await objects_api.count_objects(self.db, request)

    async def GetSnapshot(self, request, context) -> types_pb2.Snapshot:
        return await objects_api.get_snapshot(self.db, request)

    async def GetFrame(self, request, context) -> types_pb2.Snapshot:
        """A stream's latest annotated frame, asked of the device now (CaptureFrame) wherever its Session is."""
        try:
            return await objects_api.get_frame(self.db, self.hub, request)
        except objects_api.FrameTimedOut as err:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(err))
            raise  # abort raises; this line is for the type checker

    # ---- artifacts ----

    def _deployments(self) -> Deployments:
        if self.deployments is None:
            raise FailedPrecondition("this controller runs without an artifact store")
        return self.deployments

    async def UploadArtifact(self, request_iterator, context) -> types_pb2.Artifact:
        """The manifest, then the bytes; stored under their sha256 and the manifest signed."""
        deployments = self._deployments()
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("body") != "manifest":
            raise InvalidArgument("the first UploadArtifact message must carry the manifest")
        manifest = types_pb2.ArtifactManifest()
        manifest.CopyFrom(first.manifest)
        _check_manifest(manifest)
        check = bundle_check(manifest.format, dict(manifest.labels))
        upload = deployments.files.upload(deployments.max_artifact_bytes)
        try:
            async for message in request_iterator:
                if message.WhichOneof("body") != "chunk":
                    raise InvalidArgument("after the manifest, UploadArtifact messages carry chunks only")
                upload.write(message.chunk)
        except BaseException:
            upload.discard()
            raise
        sha256, size = await asyncio.to_thread(upload.finish, manifest.sha256, manifest.size_bytes, check)
        manifest.sha256, manifest.size_bytes = sha256, size
        if not manifest.HasField("created"):
            manifest.created.CopyFrom(timestamp(time.time()))
        record = await self.db.add_artifact(ArtifactRecord(
            sha256, manifest.name, manifest.format, size, manifest.SerializeToString(deterministic=True),
            deployments.key.sign(manifest), time.time()))
        await self.db.add_event("artifact", f"artifact {manifest.name} ({sha256[:12]}, {size} bytes) stored")
        logger.info("artifact %s %s stored (%d bytes)", manifest.name, sha256[:12], size)
        return artifact_to_pb(record)

    async def ListArtifacts(self, request, context) -> fleet_pb2.ListArtifactsResponse:
        return fleet_pb2.ListArtifactsResponse(artifacts=[artifact_to_pb(a) for a in await self.db.list_artifacts()])

    # ---- rollouts ----

    async def CreateRollout(self, request, context) -> fleet_pb2.Rollout:
        deployments = self._deployments()
        if not SHA256.fullmatch(request.artifact_sha256):
            raise InvalidArgument(f"artifact_sha256 must be 64 lowercase hex digits, got {request.artifact_sha256!r}")
        artifact = await self.db.get_artifact(request.artifact_sha256)
        spec = rollout_spec(request, deployments.gate_min_agreement, deployments.gate_window_s)
        rollout = await deployments.rollouts.create(artifact.sha256, spec, requirements(artifact))
        return rollout_to_pb(rollout)

    async def GetRollout(self, request, context) -> fleet_pb2.Rollout:
        if not request.rollout_id:
            raise InvalidArgument("rollout_id is empty")
        return rollout_to_pb(await self.db.find_rollout(request.rollout_id))  # an id or a unique prefix

    async def ListRollouts(self, request, context) -> fleet_pb2.ListRolloutsResponse:
        return fleet_pb2.ListRolloutsResponse(rollouts=[rollout_to_pb(r) for r in await self.db.list_rollouts()])

    async def PauseRollout(self, request, context) -> fleet_pb2.Rollout:
        return await self._rollout_action("pause", request)

    async def ResumeRollout(self, request, context) -> fleet_pb2.Rollout:
        return await self._rollout_action("resume", request)

    async def AbortRollout(self, request, context) -> fleet_pb2.Rollout:
        return await self._rollout_action("abort", request)

    async def _rollout_action(self, verb: str, request: fleet_pb2.RolloutRef) -> fleet_pb2.Rollout:
        rollouts = self._deployments().rollouts
        if not request.rollout_id:
            raise InvalidArgument("rollout_id is empty")
        return rollout_to_pb(await getattr(rollouts, verb)(request.rollout_id, request.reason))


def _check_manifest(manifest: types_pb2.ArtifactManifest) -> None:
    if not manifest.name.strip():
        raise InvalidArgument("manifest.name is empty")
    if manifest.format not in ARTIFACT_FORMATS:
        raise InvalidArgument(f"manifest.format must be one of {', '.join(ARTIFACT_FORMATS)}, got {manifest.format!r}")
    if manifest.sha256 and not SHA256.fullmatch(manifest.sha256):
        raise InvalidArgument(f"manifest.sha256 must be 64 lowercase hex digits (or empty), got {manifest.sha256!r}")
    if manifest.format == "tensorrt-engine" and not (manifest.tensorrt_version and manifest.gpu_compute_capability):
        raise InvalidArgument("a tensorrt-engine manifest names its tensorrt_version and gpu_compute_capability")
    if manifest.input_width < 0 or manifest.input_height < 0:
        raise InvalidArgument(f"manifest input size must be >= 0, got {manifest.input_width}x{manifest.input_height}")


def _plan_override(request: fleet_pb2.SetPlanOverrideRequest) -> dict:
    """The override to store, as a dict; empty when the request clears it."""
    plan: types_pb2.SetPlan = request.plan
    if not request.HasField("plan") or plan == types_pb2.SetPlan():
        raise InvalidArgument("plan is empty: set a bound, a pinned plan, or clear=true")
    if plan.clear:
        if plan != types_pb2.SetPlan(clear=True):
            raise InvalidArgument("plan.clear=true removes the override; it takes no other fields")
        return {}
    for name in ("max_input_size", "min_detect_interval", "max_detect_interval"):
        if getattr(plan, name) < 0:
            raise InvalidArgument(f"plan.{name} must be >= 0, got {getattr(plan, name)}")
    if 0 < plan.max_detect_interval < plan.min_detect_interval:
        raise InvalidArgument(
            f"plan.min_detect_interval ({plan.min_detect_interval}) > plan.max_detect_interval "
            f"({plan.max_detect_interval})"
        )
    return to_dict(plan)
