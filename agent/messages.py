"""What the agent and its controller tell each other over the Session, as plain data.

Up: `Hello` (with the HardwareProfile of adaptive.probe and the DevicePlan of adaptive.plan),
heartbeats with a HealthSample (agent.health) and the plan when it changed, DeploymentStatus
(agent.engines). Down: the commands below, and DeployRequest (agent.engines). agent.convert
turns them into protobuf and back; nothing else in the agent touches the wire types.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from edgefleet.adaptive.plan import DevicePlan
from edgefleet.adaptive.probe import HardwareProfile

from .desired import ApplyConfig, ConfigStatus
from .engines import CancelDeployment, DeployRequest


@dataclass(frozen=True)
class Hello:
    """The first message of each Session (edgefleet.v1.Hello, less the agent's version, which the link adds)."""
    profile: HardwareProfile
    plan: DevicePlan
    streams: list[str]
    started: float
    """When this run started (Unix seconds)."""
    config: ConfigStatus = ConfigStatus()
    """The controller's document it runs, or refused (agent.desired)."""
    labels: dict[str, str] = field(default_factory=dict)
    """The device's own labels (--label, agent.yaml labels:); also sent at enrollment."""


@dataclass(frozen=True)
class PlanOverride:
    """An operator's pin or bounds on the plan (edgefleet.v1.SetPlan). A pin's unset fields ("" and 0)
    keep the device's own; a bound of 0 is none; `clear` returns to the device's own plan."""
    pinned: DevicePlan | None = None
    max_input_size: int = 0
    min_detect_interval: int = 0
    max_detect_interval: int = 0
    clear: bool = False


@dataclass(frozen=True)
class SetPlan:
    command_id: str
    override: PlanOverride


@dataclass(frozen=True)
class Rollback:
    command_id: str
    reason: str = ""


@dataclass(frozen=True)
class Ping:
    command_id: str


@dataclass(frozen=True)
class Restart:
    command_id: str
    reason: str = ""


@dataclass(frozen=True)
class CaptureFrame:
    """Answer with a stream's latest frame drawn (agent.commands): `stream_id` "" is the first local
    stream, `max_width` 0 the agent's default."""
    command_id: str
    stream_id: str = ""
    max_width: int = 0


@dataclass(frozen=True)
class Unsupported:
    """A command this agent does not carry out (yet): its action's name, for the log."""
    command_id: str
    action: str


Command = (DeployRequest | CancelDeployment | SetPlan | Rollback | Ping | Restart | ApplyConfig | CaptureFrame
           | Unsupported)
"""A command from the controller, as the link hands it to the supervisor's queue."""
