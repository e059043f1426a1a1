"""FleetControl for the TUI: blocking calls that return `tui.views` and raise `tui.errors`.

Every method may be called from any thread (a gRPC channel is thread-safe); the app calls
them from worker threads, never from the event loop. Streams are iterators with `cancel()`.

    client = FleetClient("127.0.0.1:50051", token)
    for item in client.watch_fleet():   # DeviceView | EventEntry | RolloutView | Removed | Dropped
        ...
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, Protocol, TypeVar

import grpc

from edgefleet.fleet.channel import open_channel
from edgefleet.fleet.connect_errors import explain_unavailable
from edgefleet.fleet.tls import ClientTLS
from edgefleet.v1 import fleet_pb2, fleet_pb2_grpc, types_pb2

from .convert import (
    artifact_from_pb,
    counts_from_pb,
    device_from_pb,
    fleet_event_from_pb,
    frame_from_pb,
    picture_from_pb,
    plan_to_pb,
    rollout_from_pb,
    rollout_request_to_pb,
    tracked_object_from_pb,
)
from .errors import ControllerError, Refused, Unavailable, Unimplemented
from .views import (
    ArtifactView,
    CountsView,
    DeviceView,
    FleetItem,
    FrameView,
    PictureView,
    Plan,
    RolloutRequest,
    RolloutView,
    TrackedObjectView,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

# The channel's own reconnect backoff is capped low: the feed has its own backoff, and an
# action right after the controller came back must not wait out a two-minute channel backoff.
CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 4000),
)


class Stream(Protocol[T_co]):
    """A server stream: iterate for items (raises `ControllerError` when it fails); `cancel()` ends it."""

    def __iter__(self) -> Iterator[T_co]: ...

    def cancel(self) -> None: ...


def controller_error(method: str, err: grpc.RpcError, address: str = "", tls: ClientTLS | None = None
                     ) -> ControllerError:
    """The TUI's error for a failed call; a connection failure says why when it can (a TLS mismatch)."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = (err.details() if hasattr(err, "details") else "") or ""
    if code == grpc.StatusCode.UNAVAILABLE and address:
        details = explain_unavailable(address, details, tls)
    cls: type[ControllerError]
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
        cls = Unavailable
    elif code == grpc.StatusCode.UNIMPLEMENTED:
        cls = Unimplemented
    elif code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        cls = Refused
    else:
        cls = ControllerError
    return cls(method, code.name, details)


class GrpcStream(Generic[T]):
    """A server-streaming call whose messages become zero or more items each."""

    def __init__(self, method: str, call, convert: Callable[[Any], Iterable[T]]):
        """`convert` takes each message of `call` (a generated reply type: the stubs are untyped)."""
        self._method = method
        self._call = call
        self._convert = convert
        self._cancelled = False

    def __iter__(self) -> Iterator[T]:
        try:
            for message in self._call:
                yield from self._convert(message)
        except grpc.RpcError as err:
            if self._cancelled:
                return
            raise controller_error(self._method, err) from err
        if not self._cancelled:  # the controller ended the stream: it is going away
            raise Unavailable(self._method, "UNAVAILABLE", "the controller ended the stream")

    def cancel(self) -> None:
        self._cancelled = True
        self._call.cancel()


class FleetClient:
    """One channel to the controller, plaintext or TLS, with the operator token on every call."""

    def __init__(self, address: str, token: str, tls: ClientTLS | None = None, timeout: float = 10.0):
        self.address = address
        self.timeout = timeout
        self.tls = tls
        self._channel = open_channel(address, token=token, tls=tls, options=CHANNEL_OPTIONS)
        self._stub = fleet_pb2_grpc.FleetControlStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def refusal(self) -> Refused | None:
        """Why the controller refuses this client's token (asked once, with ListDevices); None when it
        takes it, or cannot be reached now (the app shows that outage and keeps retrying)."""
        try:
            self.list_devices()
        except Refused as err:
            return err
        except ControllerError:
            return None
        return None

    def _unary(self, method: str, request):
        try:
            return getattr(self._stub, method)(request, timeout=self.timeout)
        except grpc.RpcError as err:
            raise controller_error(method, err, self.address, self.tls) from err

    # ---- devices ----

    def list_devices(self) -> list[DeviceView]:
        reply = self._unary("ListDevices", fleet_pb2.ListDevicesRequest())
        return [device_from_pb(d) for d in reply.devices]

    def get_device(self, device_id: str) -> DeviceView:
        return device_from_pb(self._unary("GetDevice", fleet_pb2.GetDeviceRequest(device_id=device_id)))

    def watch_fleet(self) -> Stream[FleetItem]:
        call = self._stub.WatchFleet(fleet_pb2.WatchFleetRequest())
        return GrpcStream("WatchFleet", call, fleet_event_from_pb)

    def pin_plan(self, device_id: str, plan: Plan) -> DeviceView:
        request = fleet_pb2.SetPlanOverrideRequest(device_id=device_id, plan=types_pb2.SetPlan(pinned=plan_to_pb(plan)))
        return device_from_pb(self._unary("SetPlanOverride", request))

    def clear_plan(self, device_id: str) -> DeviceView:
        request = fleet_pb2.SetPlanOverrideRequest(device_id=device_id, plan=types_pb2.SetPlan(clear=True))
        return device_from_pb(self._unary("SetPlanOverride", request))

    def restart(self, device_id: str, reason: str) -> str:
        return self._answered(fleet_pb2.SendCommandRequest(device_id=device_id, restart_reason=reason))

    def rollback(self, device_id: str, reason: str) -> str:
        return self._answered(fleet_pb2.SendCommandRequest(device_id=device_id, rollback_reason=reason))

    def _answered(self, request: fleet_pb2.SendCommandRequest) -> str:
        """SendCommand, waiting for the device's answer: what it did, or ControllerError with why not."""
        outcome = self._unary("SendCommand", request).outcomes[0]
        if outcome.state != fleet_pb2.DONE:
            raise ControllerError("SendCommand", fleet_pb2.CommandState.Name(outcome.state),
                                  outcome.error or "the device has no open Session")
        return outcome.detail

    # ---- detections ----

    def watch_detections(self, device_id: str) -> Stream[FrameView]:
        call = self._stub.WatchDetections(fleet_pb2.WatchDetectionsRequest(device_id=device_id))
        return GrpcStream("WatchDetections", call, lambda reply: [frame_from_pb(reply.frame, reply.dropped)])

    # ---- objects, counts, pictures ----

    def get_frame(self, device_id: str, stream_id: str = "", max_width: int = 0, wait_s: float = 3.0) -> PictureView:
        """The stream's latest annotated frame, asked of the device now (GetFrame)."""
        request = fleet_pb2.GetFrameRequest(device_id=device_id, stream_id=stream_id, max_width=max_width,
                                            timeout_ms=int(wait_s * 1000))
        try:
            reply = self._stub.GetFrame(request, timeout=wait_s + self.timeout)
        except grpc.RpcError as err:
            if err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) \
                    and (err.details() or "").startswith("device "):  # the device's side, not the controller's
                raise ControllerError("GetFrame", err.code().name, err.details() or "") from err
            raise controller_error("GetFrame", err, self.address, self.tls) from err
        return picture_from_pb(reply)

    def get_snapshot(self, object_id: str, device_id: str = "", kind: str = "crop") -> PictureView:
        request = fleet_pb2.GetSnapshotRequest(object_id=object_id, device_id=device_id, kind=kind)
        return picture_from_pb(self._unary("GetSnapshot", request))

    def list_objects(self, device_id: str = "", limit: int = 20) -> list[TrackedObjectView]:
        """The newest objects (of one device, or every device), newest first."""
        reply = self._unary("ListObjects", fleet_pb2.ListObjectsRequest(device_id=device_id, limit=limit))
        return [tracked_object_from_pb(o) for o in reply.objects]

    def count_objects(self, since: float, device_id: str = "", group_by: tuple[str, ...] = ()) -> CountsView:
        """Zone entries and line crossings since `since` (unix seconds), one bucket, grouped by `group_by`."""
        request = fleet_pb2.CountObjectsRequest(device_id=device_id, group_by=list(group_by))
        request.since.FromNanoseconds(int(since * 1e9))
        return counts_from_pb(self._unary("CountObjects", request))

    # ---- artifacts and rollouts ----

    def list_artifacts(self) -> list[ArtifactView]:
        reply = self._unary("ListArtifacts", fleet_pb2.ListArtifactsRequest())
        return [artifact_from_pb(a) for a in reply.artifacts]

    def create_rollout(self, request: RolloutRequest) -> RolloutView:
        return rollout_from_pb(self._unary("CreateRollout", rollout_request_to_pb(request)))

    def get_rollout(self, rollout_id: str) -> RolloutView:
        return rollout_from_pb(self._unary("GetRollout", fleet_pb2.GetRolloutRequest(rollout_id=rollout_id)))

    def list_rollouts(self) -> list[RolloutView]:
        return [rollout_from_pb(r) for r in self._unary("ListRollouts", fleet_pb2.ListRolloutsRequest()).rollouts]

    def pause_rollout(self, rollout_id: str, reason: str = "") -> RolloutView:
        return self._rollout_action("PauseRollout", rollout_id, reason)

    def resume_rollout(self, rollout_id: str, reason: str = "") -> RolloutView:
        return self._rollout_action("ResumeRollout", rollout_id, reason)

    def abort_rollout(self, rollout_id: str, reason: str = "") -> RolloutView:
        return self._rollout_action("AbortRollout", rollout_id, reason)

    def _rollout_action(self, method: str, rollout_id: str, reason: str) -> RolloutView:
        return rollout_from_pb(self._unary(method, fleet_pb2.RolloutRef(rollout_id=rollout_id, reason=reason)))
