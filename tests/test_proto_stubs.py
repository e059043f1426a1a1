"""The committed stubs must be exactly what scripts/gen_proto.py generates from the sources."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STUBS = ROOT / "proto"


def test_committed_stubs_match_a_fresh_generation(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--out", str(tmp_path)],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*_pb2*.py*"))
    committed = sorted(p.relative_to(STUBS) for p in STUBS.rglob("*_pb2*.py*"))
    assert fresh == committed, "stub files differ: run `make proto` and commit"
    stale = [str(rel) for rel in fresh if (tmp_path / rel).read_bytes() != (STUBS / rel).read_bytes()]
    assert not stale, f"committed stubs are stale: {stale}; run `make proto` and commit"


def test_contract_imports_from_the_edgefleet_package():
    from edgefleet.v1 import agent_pb2, agent_pb2_grpc, fleet_pb2, fleet_pb2_grpc  # noqa: F401

    services = set(agent_pb2.DESCRIPTOR.services_by_name) | set(fleet_pb2.DESCRIPTOR.services_by_name)
    assert services == {"AgentGateway", "FleetControl"}
    gateway = agent_pb2.DESCRIPTOR.services_by_name["AgentGateway"].methods_by_name
    assert set(gateway) == {"Enroll", "Session", "PublishDetections", "FetchArtifact"}
    assert gateway["Session"].client_streaming and gateway["Session"].server_streaming
    assert gateway["PublishDetections"].client_streaming and gateway["PublishDetections"].server_streaming
    assert gateway["FetchArtifact"].server_streaming and not gateway["FetchArtifact"].client_streaming
