"""One server interceptor for every servicer: device authentication and error mapping.

- Calls to AgentGateway (except Enroll) must carry a device token; the device id it
  belongs to is put in `current_device` for the servicer.
- A `FleetError` raised by a servicer becomes its status code here, once, so servicers
  raise domain errors and never build statuses themselves.
"""
from __future__ import annotations

import contextvars
import inspect
import logging
from collections.abc import Awaitable, Callable

import grpc

from . import auth
from .errors import (
    FailedPrecondition,
    FleetError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)

logger = logging.getLogger(__name__)

current_device: contextvars.ContextVar[str] = contextvars.ContextVar("current_device", default="")

STATUS = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
}

DEVICE_SERVICE = "/edgefleet.v1.AgentGateway/"
PUBLIC_METHODS = {DEVICE_SERVICE + "Enroll"}


def status_for(err: FleetError) -> grpc.StatusCode:
    for cls in type(err).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return grpc.StatusCode.INTERNAL


class FleetInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, device_for_token: Callable[[str], Awaitable[str | None]]):
        self._device_for_token = device_for_token

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        needs_device = method.startswith(DEVICE_SERVICE) and method not in PUBLIC_METHODS
        authenticate = self._authenticate if needs_device else None
        behavior = handler.unary_unary or handler.stream_unary or handler.unary_stream or handler.stream_stream
        if not (inspect.iscoroutinefunction(behavior) or inspect.isasyncgenfunction(behavior)):
            return handler  # the generated base class: UNIMPLEMENTED, nothing to guard
        if handler.unary_unary:
            return handler._replace(unary_unary=self._wrap_unary(handler.unary_unary, authenticate))
        if handler.stream_unary:
            return handler._replace(stream_unary=self._wrap_unary(handler.stream_unary, authenticate))
        if handler.unary_stream:
            return handler._replace(unary_stream=self._wrap_stream(handler.unary_stream, authenticate))
        return handler._replace(stream_stream=self._wrap_stream(handler.stream_stream, authenticate))

    async def _authenticate(self, context: grpc.aio.ServicerContext) -> None:
        token = auth.bearer_token(context.invocation_metadata())
        if token is None:
            raise Unauthenticated("missing 'authorization: Bearer <device token>' metadata")
        device_id = await self._device_for_token(token)
        if device_id is None:
            raise Unauthenticated("unknown device token; enroll again")
        current_device.set(device_id)

    @staticmethod
    async def _abort(context, err: FleetError, method: str):
        code = status_for(err)
        logger.info("%s -> %s: %s", method, code.name, err)
        await context.abort(code, str(err))

    def _wrap_unary(self, behavior, authenticate):
        async def wrapped(request, context):
            try:
                if authenticate:
                    await authenticate(context)
                return await behavior(request, context)
            except FleetError as err:
                await self._abort(context, err, behavior.__name__)

        return wrapped

    def _wrap_stream(self, behavior, authenticate):
        async def wrapped(request, context):
            try:
                if authenticate:
                    await authenticate(context)
                async for response in behavior(request, context):
                    yield response
            except FleetError as err:
                await self._abort(context, err, behavior.__name__)

        return wrapped
