"""One server interceptor for every servicer: who may call what, and error mapping.

- `policy` maps each service to the role whose bearer token may call it (None: anyone,
  e.g. health checking). A service missing from it is refused: new services are closed
  until someone decides who may call them. Methods in `public_methods` (Enroll) need no token.
- Operator tokens carry an `Access` (viewer, operator, admin); `method_access` gives each
  method of an operator service the least access that may call it. A method of that service
  missing from the table is refused to everyone, for the same reason.
- The decision is made before the handler runs, so it holds for unimplemented methods too.
  No token, an unknown one or a revoked one is UNAUTHENTICATED; a valid token of the
  other role, or with too little access, is PERMISSION_DENIED, naming the role needed.
- Mutating calls (`CallAccess.mutating`) are recorded in the audit log after they finish,
  refused ones (PERMISSION_DENIED, INVALID_ARGUMENT, ...) included (`fleet.audit`).
- A device's id is put in `current_device` for the gateway: a device only ever acts as itself.
- A `FleetError` raised by a servicer becomes its status code here, once, so servicers
  raise domain errors and never build statuses themselves.
"""
from __future__ import annotations

import contextvars
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
from google.protobuf.message import DecodeError

from edgefleet.common import auth

from .auth import CallAccess, Principal, Role
from .errors import (
    FailedPrecondition,
    FleetError,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)

if TYPE_CHECKING:
    from .audit import AuditedCall, AuditLog

logger = logging.getLogger(__name__)

current_device: contextvars.ContextVar[str] = contextvars.ContextVar("current_device", default="")

STATUS = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    OutOfRange: grpc.StatusCode.OUT_OF_RANGE,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
}


def as_refusal(err: BaseException) -> FleetError | None:
    """What the caller is told for `err`: a FleetError as it is; a database that cannot be reached as
    Unavailable (UNAVAILABLE: clients retry, agents keep their outbox); anything else None (a bug: UNKNOWN)."""
    if isinstance(err, FleetError):
        return err
    if type(err).__module__.startswith("psycopg"):  # psycopg, psycopg_pool: installed when it raised
        import psycopg
        import psycopg_pool

        if isinstance(err, (psycopg.OperationalError, psycopg_pool.PoolTimeout)):
            return Unavailable(f"the fleet database cannot be reached now: {err}")
    return None


def status_for(err: FleetError) -> grpc.StatusCode:
    for cls in type(err).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return grpc.StatusCode.INTERNAL


class FleetInterceptor(grpc.aio.ServerInterceptor):
    def __init__(
        self,
        principal_for_token: Callable[[str], Awaitable[Principal | None]],
        policy: Mapping[str, Role | None],
        public_methods: frozenset[str] = frozenset(),
        method_access: Mapping[str, CallAccess] | None = None,
        audit: AuditLog | None = None,
    ):
        """`method_access` is keyed by full method path ("/edgefleet.v1.FleetControl/ListDevices")."""
        self._principal_for_token = principal_for_token
        self._policy = policy
        self._public_methods = public_methods
        self._method_access = method_access or {}
        self._audit = audit

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        principal, refusal = await self._authorize(method, handler_call_details.invocation_metadata)
        audited = self._audited(method, principal)
        if refusal is not None:
            return self._wrap(handler, method, None, refusal, audited)
        behavior = handler.unary_unary or handler.stream_unary or handler.unary_stream or handler.stream_stream
        if not (inspect.iscoroutinefunction(behavior) or inspect.isasyncgenfunction(behavior)):
            return handler  # the generated base class: UNIMPLEMENTED, and the caller may know that
        return self._wrap(handler, method, principal, None, audited)

    async def _authorize(self, method: str, metadata) -> tuple[Principal | None, FleetError | None]:
        """The caller (None when it has no valid token) and why it is refused (None: let through)."""
        principal = None
        try:
            principal = await self._principal(method, metadata)
            self._check_access(method, principal)
        except Exception as err:  # noqa: BLE001 - refused when it says why, raised when it is a bug
            refusal = as_refusal(err)
            if refusal is None:
                raise
            return principal, refusal
        return principal, None

    async def _principal(self, method: str, metadata) -> Principal | None:
        service = method.split("/")[1]
        if service not in self._policy:
            raise PermissionDenied(f"{service} has no access policy")
        role = self._policy[service]
        if role is None or method in self._public_methods:
            return None
        token = auth.bearer_token(metadata)
        if token is None:
            raise Unauthenticated(f"missing 'authorization: Bearer <{role.value} token>' metadata")
        principal = await self._principal_for_token(token)
        if principal is None:
            raise Unauthenticated("unknown or revoked token")
        if principal.role != role:
            raise PermissionDenied(f"a {principal.role.value} token cannot call {service}")
        return principal

    def _check_access(self, method: str, principal: Principal | None) -> None:
        if principal is None or principal.access is None:
            return  # a device, or an open method
        needed = self._method_access.get(method)
        if needed is None:
            raise PermissionDenied(f"{method} has no entry in the role table; no token may call it")
        if principal.access < needed.minimum:
            call, label = method.rsplit("/", 1)[-1], needed.minimum.label
            needs = "the admin role" if label == "admin" else f"the {label} role or higher"
            raise PermissionDenied(f"{call} needs {needs}; token {principal.name or principal.subject!r} "
                                   f"has the {principal.access.label} role")

    def _audited(self, method: str, principal: Principal | None) -> AuditedCall | None:
        """The audit record to fill for this call, when it changes something and names its caller."""
        access = self._method_access.get(method)
        if self._audit is None or access is None or not access.mutating or principal is None:
            return None
        return self._audit.call(method, principal)

    def _wrap(self, handler, method: str, principal: Principal | None, refusal: FleetError | None,
              audited: AuditedCall | None):
        device_id = principal.subject if principal and principal.role == Role.DEVICE else ""
        args = (method, device_id, refusal, handler.request_streaming, audited)
        handler = handler._replace(request_deserializer=_tolerant(handler.request_deserializer))
        if handler.unary_unary:
            return handler._replace(unary_unary=self._unary(handler.unary_unary, *args))
        if handler.stream_unary:
            return handler._replace(stream_unary=self._unary(handler.stream_unary, *args))
        if handler.unary_stream:
            return handler._replace(unary_stream=self._stream(handler.unary_stream, *args))
        return handler._replace(stream_stream=self._stream(handler.stream_stream, *args))

    @staticmethod
    async def _abort(context, err: FleetError, method: str):
        code = status_for(err)
        logger.info("%s -> %s: %.300s", method, code.name, err)
        await context.abort(code, _capped(str(err)))

    def _unary(self, behavior, method: str, device_id: str, refusal: FleetError | None, streaming: bool,
               audited: AuditedCall | None):
        async def wrapped(request, context):
            response = None
            failure = None
            try:
                if audited is not None and not streaming:
                    audited.seen(request)
                if refusal is not None:
                    raise refusal
                current_device.set(device_id)
                response = await behavior(_decoded(request, streaming, audited), context)
                return response
            except BaseException as err:
                failure, refused = err, as_refusal(err)
                if refused is None:
                    raise
                if audited is not None:  # recorded before the caller hears the refusal, as a success is
                    await audited.finish(response, refused)
                    failure = _RECORDED
                await self._abort(context, refused, method)
            finally:
                if audited is not None and failure is not _RECORDED:
                    await audited.finish(response, failure)

        return wrapped

    def _stream(self, behavior, method: str, device_id: str, refusal: FleetError | None, streaming: bool,
                audited: AuditedCall | None):
        async def wrapped(request, context):
            failure = None
            try:
                if audited is not None and not streaming:
                    audited.seen(request)
                if refusal is not None:
                    raise refusal
                current_device.set(device_id)
                async for response in behavior(_decoded(request, streaming, audited), context):
                    yield response
            except BaseException as err:
                failure, refused = err, as_refusal(err)
                if refused is None:
                    raise
                if audited is not None:
                    await audited.finish(None, refused)
                    failure = _RECORDED
                await self._abort(context, refused, method)
            finally:
                if audited is not None and failure is not _RECORDED:
                    await audited.finish(None, failure)

        return wrapped


_RECORDED = RuntimeError("recorded in the audit log already")
"""Marks a refusal whose audit row was written before the refusal was sent."""

MAX_DETAILS_BYTES = 1024
"""Error details echo the caller's input; gRPC refuses trailers above 8-16 KiB and would turn the
real status into RESOURCE_EXHAUSTED, so they are cut here."""


def _capped(details: str) -> str:
    raw = details.encode()
    if len(raw) <= MAX_DETAILS_BYTES:
        return details
    return raw[:MAX_DETAILS_BYTES].decode(errors="ignore") + "… (truncated)"


@dataclass(frozen=True)
class _Undecodable:
    """What a request that is not a valid protobuf message deserializes to (instead of raising)."""
    error: DecodeError


def _tolerant(deserializer):
    """gRPC answers UNKNOWN for a request its deserializer cannot read; this one hands a marker to
    the servicer wrapper, which answers INVALID_ARGUMENT instead."""
    if deserializer is None:
        return None

    def deserialize(data: bytes):
        try:
            return deserializer(data)
        except DecodeError as err:
            return _Undecodable(err)

    return deserialize


def _refuse(marker: _Undecodable):
    raise InvalidArgument(f"the request does not decode: {marker.error}")


def _decoded(request, streaming: bool, audited: AuditedCall | None = None):
    """The request, or for a client stream an iterator over it, raising InvalidArgument at an undecodable one.

    A client stream's messages are shown to `audited` as they are read (it keeps the first)."""
    if not streaming:
        return _refuse(request) if isinstance(request, _Undecodable) else request

    async def messages():
        async for message in request:
            message = _refuse(message) if isinstance(message, _Undecodable) else message
            if audited is not None:
                audited.seen(message)
            yield message

    return messages()
