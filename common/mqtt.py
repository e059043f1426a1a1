"""Logging in to an MQTT broker: credentials, TLS, and saying why a connection failed.

The agent's publisher (`agent.mqtt`) and the controller's bridge (`fleet.mqtt_bridge`) log in the
same way, with the same settings (`--mqtt-username`, the password from `--mqtt-password-file` or
`$EDGEFLEET_MQTT_PASSWORD`, `--mqtt-tls-ca [--mqtt-tls-cert --mqtt-tls-key]`), so the rules and the
messages live here once.

The password is never a flag (it would show in `ps` and shell history) and never logged: `MqttLogin`
keeps it out of its repr, and `describe()` says only whether there is one.

paho retries a failed connection on its own network thread and keeps the reason to itself
(`on_connect_fail` gets no exception), so `ConnectReport` finds it by repeating the failed step once:
a TCP connection and, with TLS, the handshake with the same `ssl.SSLContext`. A refusal by the broker
(a CONNACK reason code) needs no probe: paho hands it to `on_connect`.
"""
from __future__ import annotations

import logging
import os
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PASSWORD_ENV = "EDGEFLEET_MQTT_PASSWORD"
"""The environment variable the password may come from (a `--mqtt-password-file` wins over it)."""

CREDENTIAL_REFUSALS = frozenset({"not authorized", "bad user name or password"})
"""CONNACK reasons that mean the username or password is wrong (MQTT 3.1.1 codes 4 and 5, 5.0's 134, 135)."""

PROBE_TIMEOUT_S = 5.0


class MqttSettingsError(ValueError):
    """An MQTT login setting that cannot work (a file that cannot be read, a key without its certificate)."""


@dataclass(frozen=True)
class MqttLogin:
    """How to log in to the broker: username and password, and TLS (on when `tls_ca` is set)."""

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @classmethod
    def from_settings(cls, username: str | None = None, password_file: Path | None = None,
                      tls_ca: Path | None = None, tls_cert: Path | None = None, tls_key: Path | None = None,
                      env: Mapping[str, str] | None = None) -> MqttLogin:
        """The login from the settings as given; reads the password file (or `$EDGEFLEET_MQTT_PASSWORD`).
        Raises MqttSettingsError naming the flag when they cannot work together."""
        env = os.environ if env is None else env
        password = _read_password(password_file) if password_file is not None else env.get(PASSWORD_ENV) or None
        if password is not None and not username:
            origin = f"--mqtt-password-file {password_file}" if password_file else f"${PASSWORD_ENV}"
            raise MqttSettingsError(f"{origin} gives a password but no --mqtt-username: give the username too")
        if (tls_cert is None) != (tls_key is None):
            raise MqttSettingsError("--mqtt-tls-cert and --mqtt-tls-key go together (a client certificate and its key)")
        if tls_cert is not None and tls_ca is None:
            raise MqttSettingsError("--mqtt-tls-cert needs --mqtt-tls-ca: the CA that signed the broker's certificate")
        login = cls(username or None, password, tls_ca, tls_cert, tls_key)
        login.tls_context()  # unreadable or mismatched files are refused now, not at the first connection
        return login

    @property
    def tls(self) -> bool:
        return self.tls_ca is not None

    def describe(self) -> str:
        """For logs: who logs in and how, never the password."""
        who = f"as {self.username}" + (" with a password" if self.password else " without a password") \
            if self.username else "anonymously"
        if not self.tls:
            return f"{who}, without TLS"
        client = ", with a client certificate" if self.tls_cert else ""
        return f"{who}, TLS trusting {self.tls_ca}{client}"

    def tls_context(self) -> ssl.SSLContext | None:
        """The TLS context (the broker's certificate must chain to `tls_ca` and name the host), or None."""
        if self.tls_ca is None:
            return None
        try:
            context = ssl.create_default_context(cafile=str(self.tls_ca))
        except (OSError, ssl.SSLError) as err:
            raise MqttSettingsError(f"--mqtt-tls-ca {self.tls_ca}: {_why(err)}") from err
        if self.tls_cert is not None and self.tls_key is not None:
            try:
                context.load_cert_chain(str(self.tls_cert), str(self.tls_key))
            except (OSError, ssl.SSLError) as err:
                raise MqttSettingsError(
                    f"--mqtt-tls-cert {self.tls_cert} / --mqtt-tls-key {self.tls_key}: {_why(err)}") from err
        return context

    def configure(self, client: Any, context: ssl.SSLContext | None) -> None:
        """Set the credentials and TLS (`context`, from `tls_context()`) on a paho client before it connects."""
        if self.username:
            client.username_pw_set(self.username, self.password)
        if context is not None:
            client.tls_set_context(context)


def _read_password(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise MqttSettingsError(f"--mqtt-password-file {path}: {_why(err)}") from err
    password = text.rstrip("\r\n")
    if not password:
        raise MqttSettingsError(f"--mqtt-password-file {path} is empty: write the password on its first line")
    return password


def _why(err: Exception) -> str:
    if isinstance(err, ssl.SSLError):
        return str(err.reason or err)
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err)


def refusal_text(reason: object, login: MqttLogin) -> str:
    """The broker's CONNACK refusal said for a person: `MQTT broker refused: not authorized (...)`."""
    said = str(reason).lower()
    text = f"MQTT broker refused: {said}"
    if said in CREDENTIAL_REFUSALS:
        user = f"user {login.username!r}" if login.username else "no username (anonymous)"
        text += (f" ({user}; check --mqtt-username and the password in --mqtt-password-file or "
                 f"${PASSWORD_ENV})")
    return text


def failure_text(host: str, port: int, login: MqttLogin, context: ssl.SSLContext | None,
                 timeout: float = PROBE_TIMEOUT_S) -> str:
    """Why connecting to host:port fails: repeats the TCP connection and the TLS handshake once."""
    where = f"{host}:{port}"
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            if context is not None:
                with context.wrap_socket(sock, server_hostname=host) as tls:
                    _await_alert(tls)
    except ssl.SSLCertVerificationError as err:
        if err.verify_code == 62:  # X509_V_ERR_HOSTNAME_MISMATCH
            return f"the MQTT broker's certificate at {where} does not name {host!r}: {err.verify_message}"
        return (f"the MQTT broker's certificate at {where} is not trusted by the CA in {login.tls_ca} "
                f"({err.verify_message}): give --mqtt-tls-ca the CA that signed it")
    except ConnectionRefusedError:
        return f"nothing accepts connections at {where}: is the MQTT broker running, and is this its port?"
    except (ssl.SSLError, ConnectionResetError) as err:
        if "certificate required" in str(err).lower() or "CERTIFICATE_REQUIRED" in str(err):
            return (f"the MQTT broker at {where} requires a client certificate signed by a CA it trusts: "
                    "give --mqtt-tls-cert and --mqtt-tls-key")
        if context is None:
            return f"cannot reach the MQTT broker at {where}: {_why(err)}"
        return _handshake_failure(host, port, err, timeout)
    except OSError as err:
        return f"cannot reach the MQTT broker at {where}: {_why(err)}"
    return f"connecting to the MQTT broker at {where} failed (it answered a new connection just now); retrying"


def _await_alert(tls: ssl.SSLSocket, wait_s: float = 1.0) -> None:
    """With TLS 1.3 a broker refuses a missing client certificate after the handshake, in an alert: read
    briefly for it (a broker that accepted the handshake says nothing until the client's CONNECT)."""
    tls.settimeout(wait_s)
    try:
        tls.recv(1)
    except TimeoutError:
        pass


def _handshake_failure(host: str, port: int, err: Exception, timeout: float) -> str:
    """A TLS handshake that ended early: a plaintext MQTT port does that, so ask the port in plaintext."""
    where = f"{host}:{port}"
    if _speaks_plain_mqtt(host, port, timeout):
        return f"the MQTT broker at {where} does not speak TLS on this port (drop --mqtt-tls-ca, or give its TLS port)"
    return (f"TLS with the MQTT broker at {where} failed: {_why(err)} (does it require a client certificate, "
            "--mqtt-tls-cert and --mqtt-tls-key?)")


PLAIN_CONNECT = b"\x10\x11\x00\x04MQTT\x04\x02\x00\x0a\x00\x05probe"
"""An MQTT 3.1.1 CONNECT (client id `probe`, no credentials): any plaintext broker answers with a CONNACK."""


def _speaks_plain_mqtt(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(PLAIN_CONNECT)
            answer = sock.recv(4)
    except OSError:
        return False
    return answer[:1] == b"\x20"  # CONNACK, whatever its verdict


class ConnectReport:
    """Logs why the broker connection fails, once per distinct reason (then at debug), and when it works.

    `last` is the latest failure's text (None while connected), for tests and status lines."""

    def __init__(self, logger: logging.Logger, who: str, host: str, port: int, login: MqttLogin,
                 context: ssl.SSLContext | None):
        self.logger, self.who = logger, who
        self.host, self.port, self.login, self.context = host, port, login, context
        self.last: str | None = None
        self._up = False
        self._refused = False

    def refused(self, reason: object) -> str:
        """A CONNACK refusal (from paho's `on_connect`)."""
        self._refused = True
        return self._report(refusal_text(reason, self.login))

    def failed(self) -> str:
        """A connection that failed before the broker answered (paho's `on_connect_fail`)."""
        self._refused = False
        return self._report(failure_text(self.host, self.port, self.login, self.context))

    def dropped(self, reason: object) -> None:
        """paho's `on_disconnect`: a connection that was up went down, or one went down before the broker
        accepted it (a TLS alert after the handshake, e.g. a client certificate the broker requires)."""
        if self._up:
            self._up = False
            self.logger.warning("%s: disconnected from %s:%d (%s); reconnecting", self.who, self.host, self.port,
                                reason)
        elif not self._refused:  # a refusal was said already; this is its connection closing
            self.failed()

    def on_connect_fail(self, client: Any, userdata: Any) -> None:
        """paho's `on_connect_fail` callback (on its network thread)."""
        self.failed()

    def connected(self) -> None:
        self._up, self._refused = True, False
        if self.last is not None:
            self.logger.info("%s: connected to %s:%d after: %s", self.who, self.host, self.port, self.last)
        self.last = None

    def _report(self, text: str) -> str:
        level = logging.DEBUG if text == self.last else logging.ERROR
        self.logger.log(level, "%s: %s; retrying", self.who, text)
        self.last = text
        return text
