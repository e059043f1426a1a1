"""The fleet TUI: `FleetApp(address, token, tls)`; `edgefleet tui` runs it (see `tui.cli`).

The app talks to the controller only over FleetControl. A thread follows WatchFleet into a
`Coalescer`; the UI drains it `apply_hz` times a second into `FleetState` and redraws what
changed, so a burst from a thousand devices costs one table update per tick, not one per event.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

from textual.app import App
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.worker import Worker

from edgefleet.fleet.tls import ClientTLS

from .cli import add_subcommand, main  # noqa: F401 - re-exported; tui.cli itself imports no Textual
from .client import FleetClient
from .coalesce import Coalescer
from .errors import ControllerError, Unimplemented
from .feed import FleetFeed
from .screens.base import LiveScreen
from .screens.counts import CountsScreen
from .screens.device import DeviceScreen
from .screens.events import EventsScreen
from .screens.fleet import FleetScreen
from .screens.modals import HelpScreen
from .screens.rollouts import RolloutsScreen
from .state import Changes, FleetState
from .views import DeviceView, EventEntry, RolloutView

logger = logging.getLogger(__name__)

APPLY_HZ = 4.0
"""Coalesced applies per second. Higher feels snappier and costs more CPU under load."""


class FleetApp(App[None]):
    CSS_PATH = Path(__file__).with_name("fleet.tcss")  # absolute: subclasses elsewhere find it too
    TITLE = "edgefleet"
    MODES: ClassVar[dict[str, str | Callable[[], Screen]]] = {
        "fleet": FleetScreen, "rollouts": RolloutsScreen, "events": EventsScreen, "counts": CountsScreen,
    }
    DEFAULT_MODE = "fleet"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("f", "show_fleet", "Fleet"),
        Binding("o", "switch_mode('rollouts')", "Rollouts"),
        Binding("e", "switch_mode('events')", "Events"),
        Binding("t", "switch_mode('counts')", "Counts"),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, address: str, token: str, tls: ClientTLS | None = None, *,
                 client: FleetClient | None = None, clock: Callable[[], float] = time.time,
                 apply_hz: float = APPLY_HZ, exit_after_s: float | None = None):
        """`client` replaces the gRPC client (snapshot tests render from fixed data); `clock` gives
        the time ages are measured against; `exit_after_s` ends the app by itself (the demo's --duration)."""
        super().__init__()
        self.client = client if client is not None else FleetClient(address, token, tls)
        self.clock = clock
        self.apply_hz = apply_hz
        self.coalescer = Coalescer()
        self.state = FleetState(self.client.address)
        self.feed = FleetFeed(self.client, self.coalescer, clock=clock)
        self.rollouts_supported: bool | None = None  # None: not asked yet
        self._probing = False
        self._last_tick = float("-inf")
        self.exit_after_s = exit_after_s
        self.exit_reason = ""  # why the app ended by itself (the controller refused the token)

    def on_mount(self) -> None:
        self.feed.start()
        self.set_interval(1 / self.apply_hz, self.apply_pending)
        self.probe_rollouts()
        if self.exit_after_s:
            self.set_timer(self.exit_after_s, self.exit)

    def on_unmount(self) -> None:
        self.feed.stop(timeout=1.0)
        self.client.close()

    # ---- the coalesced apply ----

    def apply_pending(self) -> Changes | None:
        """Take everything the feed gathered, fold it into the state, redraw the visible screens.

        Once a second it also redraws what moves with the clock (heartbeat ages, the banner's
        countdown) even when nothing arrived. Returns the changes, None when there was nothing to do.
        """
        if not self.is_running:  # shutting down: the screens' widgets may be gone already
            return None
        batch = self.coalescer.drain()
        if batch and batch.connection is not None and batch.connection.state == "refused":
            self.exit_reason = batch.connection.error
            self.exit(return_code=2, message=f"edgefleet tui: error: {self.exit_reason}")
            return None
        now = self.clock()
        tick = not now - 1.0 < self._last_tick <= now
        if not batch and not tick:
            return None
        changes = self.state.apply(batch) if batch else Changes()
        if tick:
            self._last_tick = now
        for screen in self.screen_stack:
            if isinstance(screen, LiveScreen) and screen.is_ready and screen.is_current:
                screen.sync(changes, now, tick)
        return changes

    # ---- navigation ----

    def open_device(self, device_id: str) -> None:
        self.push_screen(DeviceScreen(device_id))

    async def action_show_fleet(self) -> None:
        if self.current_mode != "fleet":
            await self.switch_mode("fleet")
        while len(self.screen_stack) > 1 and not isinstance(self.screen, FleetScreen):
            await self.pop_screen()

    def action_help(self) -> None:
        if isinstance(self.screen, HelpScreen):
            return
        self.push_screen(HelpScreen(self.screen, list(self.BINDINGS)))

    # ---- calls that change something ----

    def act(self, done: str, call: Callable[[FleetClient], object],
            on_unimplemented: Callable[[Unimplemented], None] | None = None) -> Worker:
        """Run `call(client)` on a worker thread; say `done` when it worked, or why not.

        A device or rollout it returns goes through the coalescer like any update, so the
        screens show the controller's answer at the next apply.
        """
        def work() -> None:
            try:
                result = call(self.client)
            except Unimplemented as err:
                logger.info("%s: %s", done, err)
                self.call_from_thread(self._unimplemented, err, on_unimplemented)
                return
            except ControllerError as err:
                logger.warning("%s failed: %s", done, err)
                self.call_from_thread(self.notify, str(err), title="Failed", severity="error", timeout=8,
                                      markup=False)
                return
            if isinstance(result, (DeviceView, RolloutView)):
                self.coalescer.put(result)
            logger.info("%s", done)
            self.coalescer.put(EventEntry(self.clock(), "operator", done))
            self.call_from_thread(self.notify, done, markup=False)

        return self.run_worker(work, thread=True, group="actions", exit_on_error=False)

    def _unimplemented(self, err: Unimplemented, then: Callable[[Unimplemented], None] | None) -> None:
        self.notify(f"This controller does not implement {err.method} yet (UNIMPLEMENTED).",
                    title="Not available", severity="warning", timeout=8, markup=False)
        if then is not None:
            then(err)

    def probe_rollouts(self) -> None:
        """Ask once whether the controller does rollouts (the rollback action depends on it)."""
        if self.rollouts_supported is not None or self._probing:
            return
        self._probing = True

        def work() -> None:
            try:
                rollouts = self.client.list_rollouts()
            except Unimplemented:
                self.call_from_thread(self._rollouts_probed, False, [])
            except ControllerError:
                self.call_from_thread(self._rollouts_probed, None, [])
            else:
                self.call_from_thread(self._rollouts_probed, True, rollouts)

        self.run_worker(work, thread=True, group="probe", exit_on_error=False)

    def _rollouts_probed(self, supported: bool | None, rollouts: list[RolloutView]) -> None:
        self._probing = False
        if supported is None:
            return
        self.rollouts_supported = supported
        if supported:
            self.state.replace_rollouts(rollouts)
        for screen in self.screen_stack:
            if isinstance(screen, DeviceScreen):
                screen.show_rollback()
