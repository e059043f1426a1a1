"""The controller's restart command, carried out between ticks on the loop thread.

Two ways, chosen by `--restart-mode` (`RunOptions.restart_mode`):

- in-process: the frame loop stops and a new one starts with the sources re-opened, new trackers
  and schedulers, and the detector loaded again from its file; the outbox, recorder, link and
  enrollment stay up, so no record is lost and the outbox sequence continues. The agent answers
  "loop restarted in process" once the new loop runs, or refuses with the reason (the old loop
  runs on) when a source or the model cannot be opened.
- exit: the agent answers "exiting for systemd to restart" first, then stops like at SIGTERM
  (drains the outbox, sends its last messages) and exits with `RestartRequested.exit_code` (75),
  which the shipped systemd unit restarts on.

`auto` (the default) exits under systemd (NOTIFY_SOCKET or INVOCATION_ID in the environment) and
restarts in process elsewhere: a bare process that exited would not come back.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import AgentError, RestartRequested

if TYPE_CHECKING:
    from edgefleet.models.base import Detector

    from .messages import Restart
    from .supervisor import Agent

logger = logging.getLogger(__name__)

IN_PROCESS_DETAIL = "loop restarted in process"
EXIT_DETAIL = "exiting for systemd to restart"
MODES = ("auto", "exit", "in-process")


def resolve_mode(mode: str, environ: Mapping[str, str] = os.environ) -> str:
    """"exit" or "in-process": `mode`, or for "auto" whether a service manager runs the agent."""
    if mode not in MODES:
        raise ValueError(f"restart mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode != "auto":
        return mode
    return "exit" if environ.get("NOTIFY_SOCKET") or environ.get("INVOCATION_ID") else "in-process"


def restart(agent: Agent, command: Restart, environ: Mapping[str, str] = os.environ) -> None:
    """Carry out `command` on `agent` and answer it (on the loop thread, between ticks)."""
    reason = command.reason or "requested by the controller"
    if resolve_mode(agent.options.restart_mode, environ) == "exit":
        logger.warning("restart (%s): %s", reason, EXIT_DETAIL)
        agent.link.send_result(command.command_id, True, detail=EXIT_DETAIL)
        agent.restart_requested = RestartRequested(f"restart requested by the controller ({reason}); "
                                                   f"exiting with code {RestartRequested.exit_code} for systemd "
                                                   "to start the agent again")
        agent.stop_event.set()  # run() ends like at SIGTERM: drained, last messages sent
        return
    try:
        detector = _reopen_detector(agent)
        agent.restart_loop()
    except AgentError as err:
        logger.error("restart (%s) refused, the old loop runs on: %s", reason, err)
        agent.link.send_result(command.command_id, False, error=f"the loop could not restart: {err}; "
                                                                "the old loop runs on")
        return
    if detector is not None:
        agent.slot.swap(detector)
    elif agent.adapter is not None:
        agent.adapter.request_detector()  # the rung's detector, loaded again and swapped in by control()
    logger.info("restart (%s): %s", reason, IN_PROCESS_DETAIL)
    agent.link.send_result(command.command_id, True, detail=IN_PROCESS_DETAIL)


def _reopen_detector(agent: Agent) -> Detector | None:
    """The running detector's model loaded again (before the loop restarts: a model that no longer
    loads refuses the restart). None with the runtime controller (its rung loader reloads it) or
    for a detector without a model file."""
    if agent.adapter is not None:
        return None
    path = getattr(agent.slot.detector, "model_path", None)
    if not path or not Path(path).is_file():
        return None
    try:
        return agent.load_model(Path(path))
    except Exception as err:  # noqa: BLE001 - any backend's failure: the old detector runs on
        raise AgentError(f"reloading the model {path} failed: {err}") from err
