"""The audit log: who changed what in the fleet, refused attempts included.

The interceptor (`fleet.interceptors`) records every FleetControl call that `auth.FLEET_CONTROL_ACCESS`
marks mutating, after it finished or was refused: the token's id, name and role, the call, its
target (device id, rollout id, artifact sha256 or selector, read from the request), its parameters
as JSON and the result. Parameters never carry secrets (fields and config keys named like
password/secret/token/key are replaced by "<redacted>") nor bulk bytes (an upload keeps its
manifest and the count of chunks, never their bytes). A call whose token is unknown is not
recorded (it names nobody, and would let anyone fill the table); the controller log has it.

The table is `fleet.audit_store.AuditTables`; `AuditLog` is what the interceptor holds.
"""
from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any

import yaml
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from edgefleet.v1 import fleet_pb2

from .audit_store import DEFAULT_LIMIT, AuditRecord
from .auth import Principal
from .convert import fit_answer, time_field, timestamp, to_json_dict
from .errors import FleetError, InvalidArgument
from .interceptors import status_for

logger = logging.getLogger(__name__)

REDACTED = "<redacted>"
SECRET_NAME = re.compile(r"pass|secret|token|credential|(^|_)key$", re.IGNORECASE)
"""Field and config key names whose values never reach the audit log (mqtt password, api_key, ...)."""
TARGET_FIELDS = ("device_id", "rollout_id", "artifact_sha256", "select")
MAX_PARAMETERS_CHARS = 16_384
MAX_LIMIT = 10_000


# ---- what a request says, without secrets or bytes ----

def scrub(value: Any) -> Any:
    """`value` (from JSON or YAML) with every secret-named key's value replaced by REDACTED."""
    if isinstance(value, dict):
        return {k: REDACTED if SECRET_NAME.search(str(k)) else scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    return value


def _without_bytes(message: Message) -> Message:
    """A copy of `message` with every bytes field cleared, nested ones too (artifact chunks, signatures)."""
    copy = type(message)()
    copy.CopyFrom(message)
    _clear_bytes(copy)
    return copy


def _clear_bytes(message: Message) -> None:
    for field, value in message.ListFields():
        if field.type == FieldDescriptor.TYPE_BYTES:
            message.ClearField(field.name)
        elif field.message_type is not None and not field.message_type.GetOptions().map_entry:
            for item in (value if field.is_repeated else [value]):
                _clear_bytes(item)


def parameters_of(message: Message | None) -> dict:
    """The request as the audit log keeps it: JSON fields, secrets redacted, bytes dropped; a YAML
    `document` (desired configuration) is parsed so its secret keys can be redacted too."""
    if message is None:
        return {}
    data = scrub(to_json_dict(_without_bytes(message)))
    document = data.get("document")
    if isinstance(document, str) and document:
        try:
            data["document"] = scrub(yaml.safe_load(document))
        except yaml.YAMLError:
            data["document"] = f"<{len(document)} characters that are not YAML>"
    return data


def target_of(request: Message | None, response: Message | None = None) -> str:
    """What the call acted on: the first of device id, rollout id, artifact sha256, selector it names;
    an upload's sha256 from its manifest, or from the stored artifact when the manifest had none."""
    for message in (request, getattr(request, "manifest", None), response, getattr(response, "manifest", None)):
        for name in (*TARGET_FIELDS, "sha256"):
            value = getattr(message, name, None) if message is not None else None
            if isinstance(value, str) and value:
                return value
    selector = getattr(request, "selector", None)
    return ",".join(f"{k}={v}" for k, v in sorted(selector.items())) if selector else ""


# ---- recording ----

class AuditLog:
    """Writes audit rows through the controller's store and tells the fleet's watchers in words.

    `db` is the controller's `AsyncStore`; `announce(message)` publishes a fleet event (the TUI's
    events screen shows it)."""

    def __init__(self, db, announce: Callable[[str], None] | None = None):
        self.db = db
        self.announce = announce

    def call(self, method: str, principal: Principal | None) -> AuditedCall:
        return AuditedCall(self, method.rsplit("/", 1)[-1], principal)

    async def write(self, record: AuditRecord) -> None:
        """Never fails the call it records: a failed write is logged as an error instead."""
        try:
            await self.db.add_audit(record)
        except Exception:
            logger.exception("could not record %s by %s in the audit log", record.call, record.token_name)
            return
        if self.announce is not None:
            self.announce(describe(record))


def describe(record: AuditRecord) -> str:
    """One line for the fleet's event stream: `alice (operator) SendCommand cam-07: ok`."""
    who = f"{record.token_name or record.token_id} ({record.role})" if record.role else "unknown token"
    result = "ok" if record.ok else f"refused: {record.error}" if record.error else "failed"
    return f"audit: {who} {record.call}{' ' + record.target if record.target else ''}: {result}"[:300]


class AuditedCall:
    """One call being audited: the interceptor hands it the request (`seen`), then `finish`es it."""

    def __init__(self, log: AuditLog, call: str, principal: Principal | None):
        self.log = log
        self.call = call
        self.principal = principal
        self.request: Message | None = None
        self.messages = 0

    def seen(self, request: Message) -> None:
        """The unary request, or a client stream's message: the first is kept, the rest counted."""
        if self.request is None and isinstance(request, Message):  # not an undecodable one
            self.request = request
        self.messages += 1

    async def finish(self, response: Message | None = None, error: BaseException | None = None) -> None:
        """Record the call; a request that cannot be rendered is recorded with its rendering error."""
        try:
            parameters = parameters_of(self.request)
        except Exception as err:  # noqa: BLE001 - the call still gets its row
            logger.exception("could not render the parameters of %s for the audit log", self.call)
            parameters = {"unrenderable": f"{type(err).__name__}: {err}"}
        if self.messages > 1:
            parameters["messages"] = self.messages
        text = json.dumps(parameters, sort_keys=True)
        if len(text) > MAX_PARAMETERS_CHARS:
            text = json.dumps({"truncated": text[:MAX_PARAMETERS_CHARS]})
        principal = self.principal
        access = principal.access.label if principal and principal.access else ""
        await self.log.write(AuditRecord(
            time=time.time(), token_id=principal.subject if principal else "",
            token_name=principal.name if principal else "", role=access, call=self.call,
            target=target_of(self.request, response), parameters=text, ok=error is None,
            error=_error_text(error),
        ))


def _error_text(error: BaseException | None) -> str:
    if error is None:
        return ""
    if isinstance(error, FleetError):
        return f"{status_for(error).name}: {error}"[:1000]
    return f"{type(error).__name__}: {error}"[:1000] if str(error) else type(error).__name__


# ---- ListAudit ----

async def list_audit(db, request: fleet_pb2.ListAuditRequest) -> fleet_pb2.ListAuditResponse:
    limit = request.limit or DEFAULT_LIMIT
    if limit > MAX_LIMIT:
        raise InvalidArgument(f"limit must be <= {MAX_LIMIT}, got {limit}")
    since = time_field(request, "since") or 0.0
    records = await db.list_audit(since, limit)
    entries, omitted = fit_answer([audit_to_pb(r) for r in records], keep_newest=True)
    return fleet_pb2.ListAuditResponse(entries=entries, omitted=omitted)


def audit_to_pb(record: AuditRecord) -> fleet_pb2.AuditEntry:
    return fleet_pb2.AuditEntry(
        id=record.id, time=timestamp(record.time), token_id=record.token_id, token_name=record.token_name,
        role=record.role, call=record.call, target=record.target, parameters=record.parameters,
        ok=record.ok, error=record.error,
    )
