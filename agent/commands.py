"""The controller's commands, carried out between ticks on the loop thread, each answered with a
CommandResult (the link queues it; the controller's caller waits for it).

The link's thread only queues them (`Agent.commands`); `apply_commands` takes what arrived since the
last tick and hands each to its part: a deployment, its cancel and a rollback to the engine manager
(agent.engines, which answers when its worker is done), a desired-configuration document to
agent.desired, a plan override to the supervisor, a restart to agent.restart; a ping is answered at
once, and a command this agent does not know is refused, naming it.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from edgefleet.adaptive.errors import LadderError

from .desired import ApplyConfig, ConfigStatus, apply_document
from .engines import CancelDeployment, DeployRequest
from .link import AGENT_VERSION
from .messages import Ping, Restart, Rollback, SetPlan, Unsupported
from .restart import restart

if TYPE_CHECKING:
    from .supervisor import Agent

logger = logging.getLogger(__name__)


def apply_commands(agent: Agent, now: float) -> None:
    """Apply what the controller sent since the last tick (on the loop thread)."""
    while not agent.commands.empty():
        command = agent.commands.get_nowait()
        if isinstance(command, DeployRequest):
            agent.engines.deploy(command)
        elif isinstance(command, CancelDeployment):
            agent.link.send_result(command.command_id, True,
                                   detail=agent.engines.cancel(command.rollout_id, command.reason))
        elif isinstance(command, Rollback):
            agent.engines.rollback(command.command_id, command.reason)
        elif isinstance(command, ApplyConfig):
            apply_config(agent, command)
        else:
            _answer(agent, command, now)


def _answer(agent: Agent, command: Ping | SetPlan | Restart | Unsupported, now: float) -> None:
    """The commands answered here at once: ping, a plan override (or why it was refused), restart
    (agent.restart), and those this agent does not know."""
    if isinstance(command, Ping):
        agent.link.send_result(command.command_id, True, detail="pong")
    elif isinstance(command, SetPlan):
        try:
            agent.apply_plan_override(command.override, now)
        except LadderError as err:
            logger.error("plan override %s refused: %s", command.command_id, err)
            agent.link.send_result(command.command_id, False, error=str(err))
            return
        agent.link.send_result(command.command_id, True, detail=agent.plan.reason)
    elif isinstance(command, Restart):
        restart(agent, command)
    else:
        logger.info("command %s (%s) is not supported by this agent", command.command_id, command.action)
        agent.link.send_result(command.command_id, False,
                               error=f"this agent ({AGENT_VERSION}) does not carry out {command.action!r}")


def apply_config(agent: Agent, command: ApplyConfig) -> ConfigStatus:
    """The controller's document, on the loop thread (agent.desired.apply_document): its status goes up
    (what the controller stores), then the command's answer like every command's (what a caller waits for)."""
    status = apply_document(agent, command)
    applied = status.applied_version == command.version
    if applied:
        agent.replan(f"desired config v{command.version} ({status.how})")
    agent.link.send_config(status)
    agent.link.send_result(command.command_id, applied, error="; ".join(status.errors) if not applied else "",
                           detail=status.how if applied else "")
    return status
