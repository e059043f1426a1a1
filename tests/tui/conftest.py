"""Pilot tests drive `FleetApp` against a real controller on 127.0.0.1:0 and simulated agents."""
from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from .agents import SimAgent


@pytest.fixture
def agents(controller):
    """`agents("cam-a", platform="rpi5")` enrolls a device and opens its Session; all closed at the end."""
    made: list[SimAgent] = []

    def make(hostname: str, **kwargs) -> SimAgent:
        agent = SimAgent(controller.address, hostname, **kwargs).connect()
        made.append(agent)
        return agent

    yield make
    for agent in made:
        agent.close()


async def until(pilot, predicate: Callable[[], object], what: str, timeout: float = 20.0):
    """Let the app run until `predicate()` is truthy; fail naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        await pilot.pause(0.05)


def notifications(messages: list) -> Callable[[object], None]:
    """A run_test message hook that keeps the text of every notification the app raises."""
    from textual.notifications import Notify

    def hook(message) -> None:
        if isinstance(message, Notify):
            messages.append(message.notification.message)

    return hook
