"""Property-based fuzzing of every RPC's input against one real controller.

Requests are built field by field from the message descriptors (`messages()`): strings
(empty, unicode, huge-ish), integers at their bounds, float32 NaN/inf, unknown enum
values, out-of-range timestamps, repeated fields, maps, oneofs, nested messages. A few
fields get hints (the enrolled device's id, the test enrollment key, small sequences) so
that requests also get past the first validation. Raw bytes are sent too, to check
malformed protobuf. The property: the controller answers every call with a status the
contract documents for that RPC (table below), never UNKNOWN or INTERNAL, and still
serves afterwards.

| RPC                         | documented status codes (OK aside)                                  |
| --------------------------- | ------------------------------------------------------------------- |
| Enroll                      | INVALID_ARGUMENT (empty key or hardware id), UNAUTHENTICATED (key)  |
| Session                     | INVALID_ARGUMENT (first message not hello), NOT_FOUND, AUTH         |
| PublishDetections           | INVALID_ARGUMENT (sequence), NOT_FOUND, AUTH (another device's id)  |
| ListDevices                 | INVALID_ARGUMENT (a selector that cannot be read), AUTH             |
| WatchFleet                  | AUTH                                                                |
| GetDevice, SetPlanOverride  | INVALID_ARGUMENT, NOT_FOUND, AUTH                                   |
| ListDetections              | INVALID_ARGUMENT (device id, limit), NOT_FOUND, AUTH                |
| WatchDetections             | INVALID_ARGUMENT (min_score), AUTH                                  |
| ListObjects, CountObjects   | INVALID_ARGUMENT (selector, page token, limit, bucket), NOT_FOUND, AUTH |
| GetSnapshot                 | INVALID_ARGUMENT (kind, ambiguous id), NOT_FOUND, AUTH              |
| GetFrame                    | INVALID_ARGUMENT, NOT_FOUND, UNAVAILABLE (not connected),           |
|                             | FAILED_PRECONDITION (refused), DEADLINE_EXCEEDED, AUTH              |
| UploadArtifact              | INVALID_ARGUMENT (manifest, size/sha256 mismatch), FAILED_PRECONDITION, AUTH |
| FetchArtifact               | INVALID_ARGUMENT (sha256), NOT_FOUND, OUT_OF_RANGE (offset), AUTH   |
| ListArtifacts, ListRollouts | AUTH                                                                |
| CreateRollout, GetRollout,  | INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION (no target, wrong  |
| Pause/Resume/AbortRollout,  | state, device not connected), AUTH                                  |
| SendCommand                 |                                                                     |
| any, as undecodable bytes   | INVALID_ARGUMENT                                                    |

AUTH is UNAUTHENTICATED (no, unknown or revoked token) and PERMISSION_DENIED (a token of
the other role). The watches never end on their own: the client reads at most a couple of
messages under a short deadline, so DEADLINE_EXCEEDED and CANCELLED are theirs. Any other
stream that runs into its (long) deadline after the client half-closed is a hang.
"""
from __future__ import annotations

import functools
import logging
import uuid

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgefleet.v1 import agent_pb2, fleet_pb2, types_pb2

from ..conftest import ControllerThread
from .test_gateway import auth, batch

pytestmark = pytest.mark.slow  # hundreds of generated requests per RPC

logger = logging.getLogger(__name__)
CODE = grpc.StatusCode
GATEWAY = agent_pb2.DESCRIPTOR.services_by_name["AgentGateway"]
CONTROL = fleet_pb2.DESCRIPTOR.services_by_name["FleetControl"]
METHODS = {m.name: (service, m) for service in (GATEWAY, CONTROL) for m in service.methods}

AUTH = {CODE.UNAUTHENTICATED, CODE.PERMISSION_DENIED}
ANSWERS = {
    "Enroll": {CODE.OK, CODE.INVALID_ARGUMENT, CODE.UNAUTHENTICATED},
    "Session": {CODE.OK, CODE.INVALID_ARGUMENT, CODE.NOT_FOUND, *AUTH},
    "PublishDetections": {CODE.OK, CODE.INVALID_ARGUMENT, CODE.NOT_FOUND, *AUTH},
    "ListDevices": {CODE.OK, CODE.INVALID_ARGUMENT, *AUTH},
    "WatchFleet": {CODE.OK, *AUTH},
    "GetDevice": {CODE.OK, CODE.INVALID_ARGUMENT, CODE.NOT_FOUND, *AUTH},
    "SetPlanOverride": {CODE.OK, CODE.INVALID_ARGUMENT, CODE.NOT_FOUND, *AUTH},
    "ListDetections": {CODE.OK, CODE.INVALID_ARGUMENT, CODE.NOT_FOUND, *AUTH},
    "WatchDetections": {CODE.OK, CODE.INVALID_ARGUMENT, *AUTH},
    "UploadArtifact": {CODE.OK, CODE.INVALID_ARGUMENT, CODE.FAILED_PRECONDITION, *AUTH},
    "FetchArtifact": {CODE.OK, CODE.INVALID_ARGUMENT, CODE.NOT_FOUND, CODE.OUT_OF_RANGE, *AUTH},
    "ListArtifacts": {CODE.OK, *AUTH},
    "ListRollouts": {CODE.OK, *AUTH},
    **{name: {CODE.OK, CODE.INVALID_ARGUMENT, CODE.NOT_FOUND, CODE.FAILED_PRECONDITION, *AUTH}
       for name in ("CreateRollout", "GetRollout", "PauseRollout", "ResumeRollout", "AbortRollout", "SendCommand",
                    "SetDesiredConfig", "RevokeDevice", "RemoveDevice")},
    "SetDeviceLabels": {CODE.OK, CODE.INVALID_ARGUMENT, CODE.NOT_FOUND, *AUTH},
    "GetDeviceConfig": {CODE.OK, CODE.INVALID_ARGUMENT, CODE.NOT_FOUND, *AUTH},
    "ListAudit": {CODE.OK, CODE.INVALID_ARGUMENT, *AUTH},
    "ListObjects": {CODE.OK, CODE.INVALID_ARGUMENT, CODE.NOT_FOUND, *AUTH},
    "CountObjects": {CODE.OK, CODE.INVALID_ARGUMENT, CODE.NOT_FOUND, *AUTH},
    "GetSnapshot": {CODE.OK, CODE.INVALID_ARGUMENT, CODE.NOT_FOUND, *AUTH},
    "GetFrame": {CODE.OK, CODE.INVALID_ARGUMENT, CODE.NOT_FOUND, CODE.UNAVAILABLE, CODE.FAILED_PRECONDITION,
                 CODE.DEADLINE_EXCEEDED, *AUTH},
}
assert set(ANSWERS) == set(METHODS), "every RPC needs its row in the table"
WATCHES = frozenset({"WatchFleet", "WatchDetections"})
WATCH_DEADLINE_S = 0.02  # a valid watch just runs into it
CALL_DEADLINE_S = 10  # anything else that hits it has hung
FUZZ_HARDWARE_ID = "fuzz-device-hw"  # the fixture's device; Enroll must not rotate its token


def allowed(rpc: str) -> set[grpc.StatusCode]:
    return ANSWERS[rpc] | ({CODE.DEADLINE_EXCEEDED, CODE.CANCELLED} if rpc in WATCHES else set())


def fuzz_settings(max_examples: int) -> settings:
    return settings(max_examples=max_examples, deadline=None, database=None, derandomize=False,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# ---- the controller under fuzz ----

class Fleet:
    """The controller under fuzz, a channel to it, and a token of each role."""

    def __init__(self, ctl: ControllerThread, channel: grpc.Channel, operator_token: str):
        self.ctl, self.channel, self.operator_token = ctl, channel, operator_token
        self.device_id = self.device_token = ""

    def __repr__(self) -> str:  # hypothesis prints it with a failing case: no tokens there
        return f"Fleet({self.ctl.address}, device {self.device_id})"

    def token_for(self, rpc: str) -> str | None:
        service, _ = METHODS[rpc]
        if rpc == "Enroll":
            return None
        return self.device_token if service is GATEWAY else self.operator_token


KNOWN: dict[str, str] = {}  # filled by the fixture; hints read it when they draw


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """The controller, its enrolled device, and (where the controller stores artifacts) one
    artifact with a rollout of it, so that requests can name things that exist."""
    ctl = ControllerThread(tmp_path_factory.mktemp("fuzz") / "fleet.db")
    channel = grpc.insecure_channel(ctl.address)
    fleet = Fleet(ctl, channel, ctl.operator_token)
    enrolled = unary(fleet, "Enroll", agent_pb2.EnrollRequest(
        enroll_key="efk_test", hardware_id=FUZZ_HARDWARE_ID, hostname="fuzz",
        profile=types_pb2.HardwareProfile(onnxruntime_providers=["CPUExecutionProvider"])))
    fleet.device_id, fleet.device_token = enrolled.device_id, enrolled.device_token
    KNOWN.update(device_id=enrolled.device_id)
    try:
        artifact = unary(fleet, "UploadArtifact", iter([
            fleet_pb2.UploadArtifactRequest(manifest=types_pb2.ArtifactManifest(name="fuzz", format="onnx")),
            fleet_pb2.UploadArtifactRequest(chunk=b"not really onnx"),
        ]))
        KNOWN.update(artifact_sha256=artifact.manifest.sha256)
        rollout = unary(fleet, "CreateRollout", fleet_pb2.CreateRolloutRequest(
            artifact_sha256=artifact.manifest.sha256, canary=1, waves_percent=[100]))
        KNOWN.update(rollout_id=rollout.rollout_id)
    except grpc.RpcError as err:  # no artifacts or rollouts (yet): the hints fall back to made-up ids
        assert err.code() in ANSWERS["CreateRollout"], err
        logger.info("fuzzing without a stored artifact or rollout: %s %s", err.code(), err.details())
    yield fleet
    KNOWN.clear()
    channel.close()
    ctl.stop()


def unary(fleet: Fleet, rpc: str, request):
    """A call whose answer the fixture needs (stream-unary when `request` is an iterator)."""
    service, method = METHODS[rpc]
    shape = "stream_unary" if method.client_streaming else "unary_unary"
    multicallable = getattr(fleet.channel, shape)(
        f"/{service.full_name}/{rpc}", request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=message_factory.GetMessageClass(method.output_type).FromString)
    token = fleet.token_for(rpc)
    return multicallable(request, metadata=auth(token) if token else (), timeout=10)


# ---- values and messages from descriptors ----

CHARS = st.characters(exclude_categories=("Cs",))  # lone surrogates cannot be encoded at all
TEXT = st.one_of(
    st.just(""),
    st.text(CHARS, max_size=24),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=24),
    st.sampled_from(["cam0", "person", " ", "\x00", "a\x00b", "../../etc/passwd", "' or 1=1 --", "%s%n",
                     "é漢字🙂", "\u202e\u200b", "efk_test", "null"]),
    st.builds(lambda c, n: c * n, CHARS, st.sampled_from([1000, 4096])),  # huge-ish
)
INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-2**31, 2**31 - 1), FieldDescriptor.TYPE_SINT32: (-2**31, 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-2**31, 2**31 - 1), FieldDescriptor.TYPE_INT64: (-2**63, 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-2**63, 2**63 - 1), FieldDescriptor.TYPE_SFIXED64: (-2**63, 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1), FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1), FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
EDGE_INTS = (0, 1, -1, 2**31 - 1, 2**31, 2**32 - 1, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1)
FLOATS = {
    FieldDescriptor.TYPE_FLOAT: st.one_of(st.floats(width=32), st.sampled_from([0.0, -0.0, 0.5, 1.0, 1.0000001])),
    FieldDescriptor.TYPE_DOUBLE: st.floats(),
}
MAX_DEPTH = 5


@functools.cache
def ints(lo: int, hi: int) -> st.SearchStrategy[int]:
    edges = sorted({v for e in EDGE_INTS for v in (e, -e, lo, hi) if lo <= v <= hi})
    return st.one_of(st.sampled_from(edges), st.integers(max(lo, -1000), min(hi, 1000)), st.integers(lo, hi))


def hex_digests() -> st.SearchStrategy[str]:
    return st.text("0123456789abcdef", min_size=64, max_size=64)


# Hints, by field name (or full name): drawn half of the time instead of the generic value, so requests name
# things that exist and get past the first check. `KNOWN` is read at draw time.
HINTS = {
    "device_id": st.builds(lambda: KNOWN["device_id"]),
    # a device may name itself or no one; anyone else is PERMISSION_DENIED for the whole batch
    "edgefleet.v1.FrameDetections.device_id": st.one_of(st.just(""), st.just(""),
                                                        st.builds(lambda: KNOWN["device_id"])),
    "enroll_key": st.just("efk_test"),
    "hardware_id": st.sampled_from([f"fuzz-hw-{i}" for i in range(8)]),
    "stream_id": st.just("cam0"),
    "sequence": st.integers(1, 64),
    "limit": st.integers(0, 20_000),
    "min_score": st.floats(0, 1),
    "sha256": st.one_of(st.builds(lambda: KNOWN.get("artifact_sha256", "")), hex_digests()),
    "artifact_sha256": st.one_of(st.builds(lambda: KNOWN.get("artifact_sha256", "")), hex_digests()),
    "rollout_id": st.one_of(st.builds(lambda: KNOWN.get("rollout_id", "")), st.builds(lambda: uuid.uuid4().hex[:12])),
}

ALWAYS_SET = frozenset({"edgefleet.v1.FrameDetections.sequence"})  # else most batches stop at "sequence 0"


def scalars(field: FieldDescriptor) -> st.SearchStrategy:
    if field.type == FieldDescriptor.TYPE_STRING:
        generic = TEXT
    elif field.type == FieldDescriptor.TYPE_BYTES:
        generic = st.binary(max_size=64)
    elif field.type == FieldDescriptor.TYPE_BOOL:
        generic = st.booleans()
    elif field.type in FLOATS:
        generic = FLOATS[field.type]
    elif field.type == FieldDescriptor.TYPE_ENUM:  # proto3 enums are open: unknown numbers are valid
        generic = st.one_of(st.sampled_from([v.number for v in field.enum_type.values]), ints(-2**31, 2**31 - 1))
    else:
        generic = ints(*INT_RANGES[field.type])
    hint = HINTS.get(field.full_name, HINTS.get(field.name))
    return st.one_of(hint, generic) if hint is not None else generic


def single_values(field: FieldDescriptor, depth: int) -> st.SearchStrategy | None:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return messages(field.message_type, depth + 1) if depth < MAX_DEPTH else None
    return scalars(field)


def field_values(field: FieldDescriptor, depth: int) -> st.SearchStrategy | None:
    if field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
        key = single_values(field.message_type.fields_by_name["key"], depth)
        value = single_values(field.message_type.fields_by_name["value"], depth)
        return st.dictionaries(key, value, max_size=4) if value is not None else None
    single = single_values(field, depth)
    if single is None or not field.is_repeated:
        return single
    return st.lists(single, max_size=4)


def _assemble(cls, fields: dict, chosen: tuple):
    msg = cls()
    for name, value in [*fields.items(), *(c for c in chosen if c is not None)]:
        field = cls.DESCRIPTOR.fields_by_name[name]
        target = getattr(msg, name) if field.type == FieldDescriptor.TYPE_MESSAGE or field.is_repeated else None
        if field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
            for k, v in value.items():
                if isinstance(v, Message):
                    target[k].CopyFrom(v)
                else:
                    target[k] = v
        elif field.is_repeated:
            target.extend(value)
        elif target is not None:
            target.SetInParent()  # present even when empty: `hello {}` is a hello
            target.MergeFrom(value)
        else:
            setattr(msg, name, value)
    return msg


@functools.cache
def messages(descriptor, depth: int = 0) -> st.SearchStrategy:
    """Any message of this type: each field set or not, one member (or none) of each oneof."""
    cls = message_factory.GetMessageClass(descriptor)
    plain = {f.name: field_values(f, depth) for f in descriptor.fields if f.containing_oneof is None}
    always = {f.name for f in descriptor.fields if f.full_name in ALWAYS_SET and plain.get(f.name) is not None}
    oneofs = [
        st.one_of(st.none(), *[values.map(functools.partial(lambda name, v: (name, v), f.name))
                               for f in oneof.fields if (values := field_values(f, depth)) is not None])
        for oneof in descriptor.oneofs
    ]
    return st.builds(_assemble, st.just(cls),
                     st.fixed_dictionaries({k: plain[k] for k in always},
                                           optional={k: v for k, v in plain.items()
                                                     if v is not None and k not in always}),
                     st.tuples(*oneofs))


def requests_for(rpc: str) -> st.SearchStrategy[list]:
    """What one call sends: one request, or a short stream of them."""
    _, method = METHODS[rpc]
    one = messages(method.input_type)
    if rpc == "Session":  # mostly a hello first, so heartbeats get read too
        hello = messages(agent_pb2.Hello.DESCRIPTOR).map(lambda h: agent_pb2.AgentMessage(hello=h))
        return st.tuples(st.one_of(st.none(), hello, hello), st.lists(one, max_size=3)).map(
            lambda t: [t[0], *t[1]] if t[0] is not None else t[1])
    if method.client_streaming:
        return st.lists(one, max_size=3)
    return one.map(lambda m: [m])


# ---- calling any RPC ----

def call(fleet: Fleet, rpc: str, requests: list, metadata=None, raw: bool = False,
         timeout: float | None = None) -> tuple[grpc.StatusCode, str]:
    """Send `requests` (messages, or bytes when `raw`) to `rpc`; the status it ended with."""
    service, method = METHODS[rpc]
    shape = f"{'stream' if method.client_streaming else 'unary'}_{'stream' if method.server_streaming else 'unary'}"
    response_type = message_factory.GetMessageClass(method.output_type)
    multicallable = getattr(fleet.channel, shape)(
        f"/{service.full_name}/{rpc}",
        request_serializer=None if raw else (lambda m: m.SerializeToString()),
        response_deserializer=None if raw else response_type.FromString,  # what comes back must parse
    )
    if metadata is None:
        token = fleet.token_for(rpc)
        metadata = auth(token) if token else ()
    if timeout is None:
        timeout = WATCH_DEADLINE_S if rpc in WATCHES else CALL_DEADLINE_S
    try:
        result = multicallable(iter(requests) if method.client_streaming else requests[0],
                               metadata=metadata, timeout=timeout)
        if method.server_streaming:
            for read, _ in enumerate(result, 1):
                if rpc in WATCHES and read >= 2:
                    result.cancel()
                    return CODE.CANCELLED, "cancelled by the test"
        return CODE.OK, ""
    except grpc.RpcError as err:
        return err.code(), err.details()


def short(requests: list) -> str:
    text = repr(requests)
    return text if len(text) <= 2000 else f"{text[:2000]}... ({len(text)} characters)"


def check(fleet: Fleet, rpc: str, requests: list, **kwargs) -> None:
    code, details = call(fleet, rpc, requests, **kwargs)
    assert code in allowed(rpc), f"{rpc} answered {code.name}: {details[:500]}\nrequest: {short(requests)}"


# ---- the properties ----

EXAMPLES = {  # per RPC; the sum with the raw-bytes and wrong-token tests is the case count
    "GetDevice": 1200, "ListDevices": 300, "SetPlanOverride": 1200, "ListDetections": 1200,
    "WatchFleet": 5, "ListArtifacts": 5, "ListRollouts": 5,  # empty requests: one case is all there is
    "WatchDetections": 150, "Session": 800, "PublishDetections": 1000,
    "SendCommand": 200, "FetchArtifact": 200, "UploadArtifact": 200, "SetDeviceLabels": 300,
    "SetDesiredConfig": 300, "GetDeviceConfig": 300,
    "CreateRollout": 300, "GetRollout": 200, "PauseRollout": 150, "ResumeRollout": 150, "AbortRollout": 150,
    "RevokeDevice": 150, "RemoveDevice": 150, "ListAudit": 150,
    "ListObjects": 300, "CountObjects": 300, "GetSnapshot": 200, "GetFrame": 150,
    "Enroll": 1200,  # last: every new hardware id is one more device for the listing RPCs to walk
}
RAW_EXAMPLES = 1200
WRONG_TOKEN_EXAMPLES = 600
assert set(EXAMPLES) == set(METHODS)


@pytest.mark.parametrize("rpc", list(EXAMPLES))
def test_generated_requests_get_only_documented_codes(fleet, rpc):
    @fuzz_settings(EXAMPLES[rpc])
    @given(requests=requests_for(rpc))
    def answers(requests):
        if rpc == "Enroll" and requests[0].hardware_id == FUZZ_HARDWARE_ID:
            requests[0].hardware_id += "-not"
        if rpc in ("RevokeDevice", "RemoveDevice") and requests[0].device_id == fleet.device_id:
            requests[0].device_id += "-not"  # the fixture's device serves the other RPCs' cases
        check(fleet, rpc, requests)

    answers()


@st.composite
def undecodable(draw, rpc: str) -> list[bytes]:
    """Bytes on the wire: random, or a real request cut short, flipped or with junk after it."""
    _, method = METHODS[rpc]

    def one() -> bytes:
        valid = draw(messages(method.input_type)).SerializeToString()
        how = draw(st.sampled_from(["random", "truncated", "flipped", "suffixed"]))
        if how == "random" or not valid:
            return draw(st.binary(max_size=128))
        if how == "truncated":
            return valid[:draw(st.integers(0, len(valid) - 1))]
        if how == "flipped":
            at = draw(st.integers(0, len(valid) - 1))
            return valid[:at] + bytes([valid[at] ^ draw(st.integers(1, 255))]) + valid[at + 1:]
        return valid + draw(st.binary(min_size=1, max_size=16))

    return [one() for _ in range(draw(st.integers(1, 3) if method.client_streaming else st.just(1)))]


@fuzz_settings(RAW_EXAMPLES)
@given(data=st.data())
def test_malformed_protobuf_is_invalid_argument(fleet, data):
    rpc = data.draw(st.sampled_from(sorted(METHODS)), label="rpc")
    if rpc == "Enroll":
        return  # bytes that happen to decode could rotate the fixture device's token
    wire = data.draw(undecodable(rpc), label="wire")
    code, details = call(fleet, rpc, wire, raw=True)
    assert code in allowed(rpc) | {CODE.INVALID_ARGUMENT}, (
        f"{rpc} answered {code.name}: {details[:500]}\nwire: {short(wire)}")


TOKEN_CHARS = st.characters(min_codepoint=0x21, max_codepoint=0x7E)


@fuzz_settings(WRONG_TOKEN_EXAMPLES)
@given(data=st.data())
def test_wrong_or_missing_credentials_are_refused_whatever_the_request(fleet, data):
    rpc = data.draw(st.sampled_from(sorted(set(METHODS) - {"Enroll"})), label="rpc")
    service, _ = METHODS[rpc]
    credential = data.draw(st.sampled_from(["none", "garbage", "malformed", "other role"]), label="credential")
    if credential == "none":
        metadata = data.draw(st.sampled_from([(), (("x-token", fleet.token_for(rpc)),)]))
    elif credential == "garbage":
        metadata = auth(data.draw(st.text(TOKEN_CHARS, min_size=1, max_size=64), label="token"))
    elif credential == "malformed":
        token = fleet.token_for(rpc)
        metadata = (("authorization", data.draw(st.sampled_from(
            ["Bearer", "Bearer ", f"Basic {token}", token, f"Bearer{token}", f"Bearer {token}x"]))),)
    else:
        metadata = auth(fleet.operator_token if service is GATEWAY else fleet.device_token)
    want = CODE.PERMISSION_DENIED if credential == "other role" else CODE.UNAUTHENTICATED
    requests = data.draw(requests_for(rpc), label="requests")
    code, details = call(fleet, rpc, requests, metadata=metadata, timeout=CALL_DEADLINE_S)  # refused at once
    assert code == want, f"{rpc} with {credential} credentials answered {code.name}: {details[:500]}"


def test_the_controller_still_serves_after_the_fuzz(fleet):
    health = health_pb2_grpc.HealthStub(fleet.channel)
    for service in ("", GATEWAY.full_name, CONTROL.full_name):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert call(fleet, "ListDevices", [fleet_pb2.ListDevicesRequest()]) == (CODE.OK, "")
    listed = call(fleet, "GetDevice", [fleet_pb2.GetDeviceRequest(device_id=fleet.device_id)])
    assert listed == (CODE.OK, "")
    assert call(fleet, "SetPlanOverride", [fleet_pb2.SetPlanOverrideRequest(
        device_id=fleet.device_id, plan=types_pb2.SetPlan(clear=True))]) == (CODE.OK, "")
    hello = agent_pb2.AgentMessage(hello=agent_pb2.Hello(agent_version="after-fuzz", streams=["cam0"]))
    assert call(fleet, "Session", [hello]) == (CODE.OK, "")
    assert call(fleet, "PublishDetections", [batch(1)]) == (CODE.OK, "")
    # what the fuzz stored can still be read back: accepted input must not poison later reads
    assert call(fleet, "ListDetections", [fleet_pb2.ListDetectionsRequest(
        device_id=fleet.device_id, limit=10_000)]) == (CODE.OK, "")
