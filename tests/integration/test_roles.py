"""Operator roles against a real controller: every FleetControl call with a viewer, operator and admin token."""
from __future__ import annotations

import grpc
import pytest

from edgefleet.fleet import auth
from edgefleet.fleet.auth import FLEET_CONTROL_ACCESS, Access
from edgefleet.v1 import fleet_pb2

from ..conftest import ControllerThread, run_cli
from .test_security import CONTROL, call_raw

ACCESSES = list(Access)
METHODS = [m for m in CONTROL.methods]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    ctl = ControllerThread(tmp_path_factory.mktemp("roles") / "fleet.db")
    ctl.tokens = {access: ctl.controller.store.create_operator_token(f"{access.label}-1", access)
                  for access in Access}
    yield ctl
    ctl.stop()


def test_every_fleet_control_method_has_a_role():
    assert set(FLEET_CONTROL_ACCESS) == {m.name for m in CONTROL.methods}


def test_the_table_reads_as_documented():
    """Reads are for viewers, changes for operators, decommissioning and the audit log for admins."""
    by_access = {a: sorted(n for n, c in FLEET_CONTROL_ACCESS.items() if c.minimum == a) for a in Access}
    assert all(n.startswith(("List", "Get", "Watch", "Count")) for n in by_access[Access.VIEWER])
    assert by_access[Access.ADMIN] == ["ListAudit", "RemoveDevice", "RevokeDevice"]
    assert all(FLEET_CONTROL_ACCESS[n].mutating for n in by_access[Access.OPERATOR])


@pytest.mark.parametrize("access", ACCESSES, ids=[a.label for a in ACCESSES])
@pytest.mark.parametrize("method", METHODS, ids=[m.name for m in METHODS])
def test_call_role_matrix(fleet, method, access):
    needed = FLEET_CONTROL_ACCESS[method.name].minimum
    with grpc.insecure_channel(fleet.address) as channel:
        try:
            # Allowed live streams (WatchFleet, WatchDetections) just run into the deadline.
            call_raw(channel, CONTROL, method, fleet.tokens[access], timeout=5 if access < needed else 0.5)
            code, details = grpc.StatusCode.OK, ""
        except grpc.RpcError as err:
            code, details = err.code(), err.details() or ""
    if access >= needed:
        assert code != grpc.StatusCode.PERMISSION_DENIED, details
        assert code != grpc.StatusCode.UNAUTHENTICATED, details
    else:
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert f"{method.name} needs the {needed.label} role" in details
        assert f"has the {access.label} role" in details


def test_a_method_missing_from_the_table_is_refused_to_admins(tmp_path, monkeypatch):
    monkeypatch.delitem(auth.FLEET_CONTROL_ACCESS, "ListDevices")
    ctl = ControllerThread(tmp_path / "fleet.db")
    try:
        from edgefleet.fleet.channel import open_channel
        from edgefleet.v1 import fleet_pb2_grpc

        with open_channel(ctl.address, token=ctl.operator_token) as channel:
            stub = fleet_pb2_grpc.FleetControlStub(channel)
            with pytest.raises(grpc.RpcError) as err:
                stub.ListDevices(fleet_pb2.ListDevicesRequest(), timeout=5)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "no entry in the role table" in err.value.details()
            stub.ListArtifacts(fleet_pb2.ListArtifactsRequest(), timeout=5)  # the others still work
    finally:
        ctl.stop()


def test_tokens_made_before_roles_are_admin(tmp_path):
    """Schema step 4 gives existing tokens the admin role: they could call everything before."""
    from edgefleet.fleet.store import FleetStore

    store = FleetStore(tmp_path / "fleet.db")
    try:
        store.db.execute("insert into operator_tokens (key_hash, name, created, revoked) values (?, ?, 0, 0)",
                         [auth.hash_secret("efo_old"), "old"])
        principal = store.principal_for_token("efo_old")
        assert principal is not None and principal.access == Access.ADMIN and principal.name == "old"
    finally:
        store.close()


@pytest.mark.slow
def test_operator_token_create_takes_a_role_and_list_shows_it(tmp_path):
    db = tmp_path / "fleet.db"
    assert run_cli("edgefleet.fleet.cli", "enroll-key", "create", "--db", str(db), "--create").returncode == 0
    made = {}
    for role in ("viewer", None, "admin"):
        args = ["operator-token", "create", "--db", str(db), "--name", role or "default"]
        proc = run_cli("edgefleet.fleet.cli", *args, *(["--role", role] if role else []))
        assert proc.returncode == 0, proc.stderr
        made[role or "default"] = proc.stdout.strip()
    listed = run_cli("edgefleet.fleet.cli", "operator-token", "list", "--db", str(db))
    assert listed.returncode == 0, listed.stderr
    roles = {line.split()[1]: line.split()[2] for line in listed.stdout.splitlines()[1:]}
    assert roles == {"viewer": "viewer", "default": "operator", "admin": "admin"}
    bad = run_cli("edgefleet.fleet.cli", "operator-token", "create", "--db", str(db), "--role", "root")
    assert bad.returncode == 2 and "invalid choice: 'root'" in bad.stderr
