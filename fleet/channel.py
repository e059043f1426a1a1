"""How operators, integrations and tests dial the controller: plaintext or TLS, with a bearer token.

    with open_channel("ctl:50051", token=os.environ["EDGEFLEET_TOKEN"], tls=ClientTLS(ca="ca.pem")) as ch:
        FleetControlStub(ch).ListDevices(ListDevicesRequest())
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import grpc

from .tls import ClientTLS

DEFAULT_CONTROLLER = "127.0.0.1:50051"


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """--controller, --token and the TLS flags that every FleetControl client command takes."""
    parser.add_argument("--controller", default=os.environ.get("EDGEFLEET_CONTROLLER") or DEFAULT_CONTROLLER,
                        metavar="HOST:PORT",
                        help=f"the controller (default $EDGEFLEET_CONTROLLER, else {DEFAULT_CONTROLLER})")
    parser.add_argument("--token", default=os.environ.get("EDGEFLEET_TOKEN"),
                        help="operator token (default $EDGEFLEET_TOKEN)")
    parser.add_argument("--tls-ca", type=Path, metavar="PEM", help="dial with TLS, trusting this CA")
    parser.add_argument("--tls-cert", type=Path, metavar="PEM", help="client certificate, for mutual TLS")
    parser.add_argument("--tls-key", type=Path, metavar="PEM", help="client private key, for mutual TLS")


class _BearerToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds `authorization: Bearer <token>` to every call, plaintext or TLS alike.

    gRPC's own call credentials refuse plaintext channels, and a controller on a trusted
    network may well run without TLS, so the token rides as plain metadata.
    """

    def __init__(self, token: str):
        self._header = ("authorization", f"Bearer {token}")

    def _call(self, continuation, details, request):
        return continuation(details._replace(metadata=(*(details.metadata or ()), self._header)), request)

    intercept_unary_unary = intercept_unary_stream = _call
    intercept_stream_unary = intercept_stream_stream = _call


def open_channel(address: str, token: str | None = None, tls: ClientTLS | None = None,
                 options: tuple = ()) -> grpc.Channel:
    """A channel to the controller: TLS when `tls` is given, and `token` on every call when given.
    `options` are gRPC channel arguments (reconnect backoff, keepalive, ...)."""
    channel = (grpc.secure_channel(address, tls.credentials(), options=options) if tls
               else grpc.insecure_channel(address, options=options))
    return grpc.intercept_channel(channel, _BearerToken(token)) if token else channel
