"""One device: live health sparklines, its plan and engine history, each stream's latest annotated
frame, today's zone and line counts, its objects (the selected one's crop), recent tracks and labels,
and operator actions (pin, clear, restart, roll back)."""
from __future__ import annotations

import collections
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.widgets import Button, DataTable, Footer, Sparkline, Static

from ..errors import Unimplemented
from ..feed import DetectionFeed
from ..format import (
    DASH,
    age,
    clock_time,
    engine_text,
    labels_text,
    number,
    override_text,
    plan_text,
    status_style,
)
from ..live import LivePoller
from ..state import Changes
from ..views import DeviceView, EngineChange, FrameView, ObjectView
from ..widgets.bars import ConnectionBanner
from ..widgets.live_panel import LivePanel
from .base import LiveScreen
from .modals import ConfirmScreen, if_confirmed

RECENT_FRAMES = 50
"""Frames the label summary counts over."""

TRACK_ROWS = 8
"""Most recently seen tracks listed."""

ENGINE_ROWS = 3
"""Engine changes shown, newest first (the app keeps a few more)."""

ROLLBACK = "Roll back engine (b)"
NEEDS_ROLLOUTS = "Roll back: needs rollouts"


class DeviceScreen(LiveScreen):
    HELP_TITLE = "device"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "app.pop_screen", "Back"),
        # the buttons show these keys; the footer keeps to navigation
        Binding("p", "pin", "Pin plan", show=False),
        Binding("c", "unpin", "Clear pin", show=False),
        Binding("r", "restart", "Restart", show=False),
        Binding("b", "rollback", "Roll back", show=False),
    ]

    def __init__(self, device_id: str):
        super().__init__()
        self.device_id = device_id
        self.recent: collections.deque[FrameView] = collections.deque(maxlen=RECENT_FRAMES)
        self.tracks: dict[tuple[str, int], tuple[ObjectView, FrameView]] = {}
        self.frames_seen = 0
        self.feed: DetectionFeed | None = None
        self.live: LivePoller | None = None

    def compose(self) -> ComposeResult:
        yield ConnectionBanner()
        yield Static(id="device-title")
        yield Static(id="device-plan")
        yield Static(id="device-engines")
        for key, label in (("fps", "FPS"), ("latency", "p95 ms"), ("temp", "Temp °C")):
            with Horizontal(classes="spark-row"):
                yield Static(label, id=f"{key}-value", classes="spark-label")
                yield Sparkline([], id=f"{key}-spark")
        yield Static(id="device-labels")
        yield LivePanel(self.device_id, id="device-live")
        with Horizontal(id="actions"):
            yield Button("Pin plan (p)", id="pin", compact=True)
            yield Button("Clear pin (c)", id="unpin", compact=True)
            yield Button("Restart (r)", id="restart", compact=True, variant="warning")
            yield Button(ROLLBACK, id="rollback", compact=True, variant="error")
        yield Footer()

    def on_mount(self) -> None:
        tracks = self.query_one("#tracks", DataTable)
        for label, width in (("Track", 6), ("Label", 14), ("Score", 5), ("Stream", 10), ("Frame", 7), ("Seq", 8)):
            tracks.add_column(label, width=width, key=label.lower())
        self.feed = DetectionFeed(self.fleet.client, self.device_id)
        self.feed.start()
        self.live = LivePoller(self.fleet.client, self.device_id, self._streams, clock=self.fleet.clock)
        self.live.start()
        self.set_interval(1 / self.fleet.apply_hz, self.drain_detections)
        self.set_interval(1 / self.fleet.apply_hz, self.drain_live)
        self.show_rollback()
        self.fleet.probe_rollouts()
        self.ready()

    def on_unmount(self) -> None:
        if self.feed is not None:
            self.feed.stop(timeout=0.5)
        if self.live is not None:
            self.live.stop(timeout=0.5)

    def _streams(self) -> tuple[str, ...]:
        device = self.device
        return device.streams if device is not None else ()

    def drain_live(self) -> None:
        """Draw the poller's newest round (frames, counts, objects), if one finished since the last."""
        if self.live is None or not self.app.is_running:
            return
        results = self.live.take()
        if results is not None:
            self.query_one(LivePanel).apply(results)

    @property
    def device(self) -> DeviceView | None:
        return self.fleet.state.devices.get(self.device_id)

    # ---- drawing ----

    def sync(self, changes: Changes | None, now: float, tick: bool = False) -> None:
        super().sync(changes, now, tick)
        if changes is None or changes.touches(self.device_id) or tick:
            self._show_device(now)

    def _show_device(self, now: float) -> None:
        device = self.device
        title = self.query_one("#device-title", Static)
        if device is None:
            title.update(Text(f"{self.device_id}: not in the fleet (removed, or not listed yet)", style="bold red"))
            return
        seen = f"{age(now - device.last_seen)} ago" if device.last_seen is not None else "never seen"
        title.update(Text.assemble(
            (device.device_id, "bold"), f"  {device.hostname}  ",
            ("● " + device.status, status_style(device.status)), f" {seen}",
            f" · {'session open' if device.connected else 'no session'}",
        ))
        plan = device.plan
        budget = f" · budget {plan.latency_budget_ms:.0f} ms" if plan and plan.latency_budget_ms else ""
        streams = ", ".join(device.streams) or DASH
        self.query_one("#device-plan", Static).update(Text.assemble(
            ("Device    ", "bold"), f"{device.platform or DASH} · agent {device.agent_version or DASH}"
            f" · streams {streams}", "\n",
            ("Plan      ", "bold"), plan_text(plan), "\n",
            ("Engine    ", "bold"), engine_text(plan), budget, "\n",
            ("Override  ", "bold"), override_text(device.override), "\n",
            *((("Config    ", "bold"), (device.config_drift, "" if "in sync" in device.config_drift else "yellow"),
               "\n") if device.config_drift else ()),
            ("Labels    ", "bold"), labels_text(device),
        ))
        history = self.fleet.state.history.get(self.device_id)
        health = device.health
        rows = (
            ("fps", "FPS", health.fps if health else None, history.fps if history else ()),
            ("latency", "p95 ms", health.latency_ms_p95 if health else None, history.latency_ms if history else ()),
            ("temp", "Temp °C", health.temperature_c if health else None, history.temperature_c if history else ()),
        )
        for key, label, value, series in rows:
            self.query_one(f"#{key}-value", Static).update(f"{label:<8}{number(value):>7}")
            spark = self.query_one(f"#{key}-spark", Sparkline)
            data = list(series)
            if spark.data != data:
                spark.data = data
            spark.display = bool(data)
        self._show_engines()
        self.query_one("#unpin", Button).disabled = device.override is None
        self.query_one("#pin", Button).disabled = device.plan is None

    def engine_history(self) -> list[EngineChange]:
        """The engines this device ran while the TUI watched, newest first."""
        return list(reversed(self.fleet.state.engines.get(self.device_id, ())))

    def _show_engines(self) -> None:
        history = self.engine_history()
        lines: list[Text] = []
        for i, change in enumerate(history[:ENGINE_ROWS]):
            now = i == 0
            reason = "  ← " + change.reason if change.reason else ""
            lines.append(Text.assemble(
                ("Engines   " if now else "          ", "bold"), (clock_time(change.time), "dim"), " ",
                (change.label, "" if now else "dim"), (reason, "cyan" if now else "dim"),
                (" (now)" if now else "", "green"), no_wrap=True, overflow="ellipsis"))
        if len(history) > ENGINE_ROWS:
            lines[-1].append(f"  +{len(history) - ENGINE_ROWS} earlier", style="dim")
        widget = self.query_one("#device-engines", Static)
        widget.update(Text("\n").join(lines))
        widget.display = len(history) > 1  # one engine all along: the Engine line above says it

    def drain_detections(self) -> None:
        if self.feed is None or not self.app.is_running:
            return
        frames = self.feed.drain()
        for frame in frames:
            self.frames_seen += 1
            self.recent.append(frame)
            for obj in frame.objects:
                if obj.track_id:
                    self.tracks[(frame.stream_id, obj.track_id)] = (obj, frame)
        if len(self.tracks) > 4 * TRACK_ROWS:
            newest = sorted(self.tracks.items(), key=lambda kv: kv[1][1].sequence, reverse=True)[:TRACK_ROWS]
            self.tracks = dict(newest)
        if frames or not self.frames_seen:
            self._show_detections()

    def _show_detections(self) -> None:
        labels = collections.Counter(o.label for f in self.recent for o in f.objects)
        summary = " · ".join(f"{label} {n}" for label, n in labels.most_common(6)) or "nothing yet"
        dropped = self.recent[-1].dropped if self.recent else 0
        note = f"  ({dropped} dropped by the controller)" if dropped else ""
        error = f"  [{self.feed.error}]" if self.feed is not None and self.feed.error else ""
        self.query_one("#device-labels", Static).update(Text.assemble(
            ("Objects ", "bold"), f"(last {len(self.recent)} frames of {self.frames_seen} seen): ", summary, note,
            (error, "red"),
        ))
        table = self.query_one("#tracks", DataTable)
        table.clear()
        newest = sorted(self.tracks.values(), key=lambda of: (of[1].sequence, of[0].track_id), reverse=True)
        for obj, frame in newest[:TRACK_ROWS]:
            table.add_row(
                Text(f"#{obj.track_id}", justify="right"), Text(obj.label + (" ~" if obj.predicted else "")),
                Text(f"{obj.score:.2f}", justify="right"), Text(frame.stream_id),
                Text(str(frame.frame_index), justify="right"), Text(str(frame.sequence), justify="right"),
            )

    def show_rollback(self) -> None:
        button = self.query_one("#rollback", Button)
        if self.fleet.rollouts_supported is False:
            button.label = NEEDS_ROLLOUTS
            button.disabled = True
            button.tooltip = "This controller does not implement rollouts yet (UNIMPLEMENTED)."
        else:
            button.label = ROLLBACK
            button.disabled = False

    # ---- actions ----

    async def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id:
            await self.run_action(event.button.id)

    def action_pin(self) -> None:
        device = self.device
        if device is None or device.plan is None:
            self.notify("This device has not reported a plan yet: nothing to pin.", severity="warning")
            return
        plan = device.plan
        body = (f"Pin {device.device_id} to the plan it runs now?\n\n  {plan_text(plan)} on {engine_text(plan)}\n\n"
                "The agent keeps it (no adaptive changes) until you clear the pin.")
        self.app.push_screen(ConfirmScreen("Pin plan", body, "Pin"), if_confirmed(lambda: self.fleet.act(
            f"Pinned {device.device_id}'s plan", lambda client: client.pin_plan(device.device_id, plan))))

    def action_unpin(self) -> None:
        device = self.device
        if device is None or device.override is None:
            self.notify("This device has no plan override to clear.", severity="warning")
            return
        body = f"Clear the plan override of {device.device_id}?\n\nThe agent picks its own plan again."
        self.app.push_screen(ConfirmScreen("Clear pin", body, "Clear"), if_confirmed(lambda: self.fleet.act(
            f"Cleared {device.device_id}'s plan override", lambda client: client.clear_plan(device.device_id))))

    def action_restart(self) -> None:
        device_id = self.device_id
        body = (f"Restart the agent on {device_id}?\n\nIts frame loop starts again with its sources and model "
                "re-opened (under systemd the agent process restarts); nothing acknowledged is lost.")
        self.app.push_screen(ConfirmScreen("Restart agent", body, "Restart", danger=True), if_confirmed(lambda: (
            self.fleet.act(f"Restarted {device_id}",
                           lambda client: client.restart(device_id, "operator restart from the TUI")))))

    def action_rollback(self) -> None:
        if self.fleet.rollouts_supported is False:
            self.notify("Rolling back an engine needs rollouts, which this controller does not implement yet.",
                        severity="warning")
            return
        device_id = self.device_id
        device, history = self.device, self.engine_history()
        paragraphs = [f"Roll {device_id} back to its previous engine?"]
        if device is not None and device.plan is not None:
            before = history[1] if len(history) > 1 else None
            paragraphs.append(f"It runs {engine_text(device.plan)} now"
                              + (f"; before that it ran {before.label}" if before else "") + ".")
        paragraphs.append("It keeps the current one if no previous one is cached.")
        body = "\n\n".join(paragraphs)
        self.app.push_screen(ConfirmScreen("Roll back engine", body, "Roll back", danger=True), if_confirmed(lambda: (
            self.fleet.act(f"Rollback sent to {device_id}",
                           lambda client: client.rollback(device_id, "operator rollback from the TUI"),
                           on_unimplemented=self._rollback_unimplemented))))

    def _rollback_unimplemented(self, err: Unimplemented) -> None:
        self.fleet.rollouts_supported = False
        self.show_rollback()

